"""Tucker-2 (a peer baseline; Kim et al., ICLR 2016): the kernel compressed along its two channel
modes,

    W[n, c, y, x] ~= sum_{r, s} U_out[n, r] G[r, s, y, x] U_in[c, s],

U_in (C, R_in) and U_out (N, R_out) with orthonormal columns, core G (R_out, R_in, kh, kw);
executed as a 1x1 conv C -> R_in (U_in^T), the kh x kw core conv R_in -> R_out (the original
stride/padding/dilation) and a 1x1 conv R_out -> N (U_out, the bias).

Filter reconstruction. For fixed U_in, U_out the best core is the projection
G = W x_0 U_out^T x_1 U_in^T, with error ||W||^2 - ||G||^2. HOSVD starts U_out (U_in) as the top
left singular vectors of the mode-0 unfolding (N, C*kh*kw) (mode-1 unfolding (C, N*kh*kw)); HOOI
then alternates U_in = top R_in left singular vectors of (W x_0 U_out^T)_(1) and U_out = top R_out
of (W x_1 U_in^T)_(0), each the exact maximiser of ||G||^2 given the other, so the error is
non-increasing. Ranks (C, N) reproduce W exactly.
"""

import math

import torch
from torch import nn

from lrx.lowrank.base import PointwiseOutConv
from lrx.lowrank.checks import DecompositionError, is_int, round_rank
from lrx.lowrank.geometry import ConvGeometry
from lrx.lowrank.linalg import converged, single_thread, solve_dtype, top_left_singular_vectors
from lrx.lowrank.vbmf import tucker2_ranks

VBMF = "vbmf"  # bases that VBMF chooses per layer from its weight (Kim et al.)

# HOOI rounds at most after the HOSVD, and the stop: a round that lowers ||W - W_hat||^2 by less
# than TOL (relative); how they were chosen: docs/SOLVERS.md.
HOOI_ITERS = 10
TOL = 1e-4


def solve_tucker2(
    weight: torch.Tensor, ranks: tuple[int, int], iters: int = HOOI_ITERS, tol: float = TOL
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """HOSVD + HOOI of ``weight`` (N, C, kh, kw) at ranks (R_in, R_out).

    Returns U_in (C, R_in), G (R_out, R_in, kh, kw), U_out (N, R_out) (float64 on weight's device)
    and info: hooi_iters (rounds run) and history (||W - W_hat||^2 / ||W||^2 after the HOSVD and
    after each round).
    """
    n, c, kh, kw = weight.shape
    r_in, r_out = Tucker2Conv.valid_bases(ConvGeometry(c, n, (kh, kw)), ranks, "weight")
    with single_thread(weight.device):
        return _solve_tucker2(weight, r_in, r_out, iters, tol)


def _solve_tucker2(weight: torch.Tensor, r_in: int, r_out: int, iters: int, tol: float):
    x = weight.detach().to(solve_dtype(weight.device))
    n, c, kh, kw = x.shape
    energy = x.pow(2).sum()
    u_in = top_left_singular_vectors(x.transpose(0, 1).reshape(c, -1), r_in)
    u_out = top_left_singular_vectors(x.reshape(n, -1), r_out)
    core = torch.einsum("ncyx,nr,cs->rsyx", x, u_out, u_in)
    history = [float((energy - core.pow(2).sum()).clamp_min(0) / energy)]
    for _ in range(iters):
        u_in = top_left_singular_vectors(torch.einsum("ncyx,nr->cryx", x, u_out).reshape(c, -1), r_in)
        z = torch.einsum("ncyx,cs->nsyx", x, u_in)  # W x_1 U_in^T
        u_out = top_left_singular_vectors(z.reshape(n, -1), r_out)
        core = torch.einsum("nsyx,nr->rsyx", z, u_out)
        history.append(float((energy - core.pow(2).sum()).clamp_min(0) / energy))
        if converged(history, tol):
            break
    return u_in, core, u_out, {"hooi_iters": len(history) - 1, "history": history}


class Tucker2Conv(PointwiseOutConv, method="tucker2", order=3):
    """Tucker-2 with ``bases`` = (R_in, R_out) (one int: both): ``pointwise_in`` nn.Conv2d C -> R_in
    (1x1, no bias), ``core`` nn.Conv2d R_in -> R_out (kh x kw, the original stride/padding/dilation,
    no bias), ``pointwise_out`` nn.Conv2d R_out -> N (1x1, the bias).

    MACs per output pixel: C*R_in + R_in*R_out*kh*kw + R_out*N (every map counted at output
    resolution) against N*C*kh*kw dense.
    """

    def build(self, g: ConvGeometry, bases, bias: bool, factory: dict) -> None:
        if bases == VBMF:
            raise DecompositionError(
                "bases='vbmf' is chosen from a weight by VBMF: use Tucker2Conv.from_conv(conv, 'vbmf')"
            )
        r_in, r_out = bases
        self.pointwise_in = nn.Conv2d(g.in_channels, r_in, 1, bias=False, **factory)
        self.core = nn.Conv2d(r_in, r_out, g.kernel_size, bias=False, **g.spatial(), **factory)
        self.pointwise_out = nn.Conv2d(r_out, g.out_channels, 1, bias=bias, **factory)

    @staticmethod
    def full_rank(geometry: ConvGeometry) -> tuple[int, int]:
        return geometry.in_channels, geometry.out_channels

    @classmethod
    def valid_bases(cls, geometry: ConvGeometry, bases, name: str = "conv") -> tuple[int, int] | str:
        """One int for both ranks, a pair (R_in, R_out), or 'vbmf' (chosen from the weight by
        VBMF when the layer is fitted); returns the pair, or 'vbmf'."""
        if bases == VBMF:
            return bases
        c, n = cls.full_rank(geometry)
        pair = (bases, bases) if is_int(bases) else tuple(bases) if isinstance(bases, (list, tuple)) else ()
        if len(pair) != 2 or not all(is_int(r) for r in pair) or not (1 <= pair[0] <= c and 1 <= pair[1] <= n):
            raise DecompositionError(
                f"{name!r}: bases={bases!r} is invalid for method 'tucker2'; valid: an integer in [1, {min(c, n)}] "
                f"(both ranks), a pair (R_in, R_out) with R_in in [1, {c}] and R_out in [1, {n}], or {VBMF!r}"
            )
        return pair

    @classmethod
    def round_bases(cls, geometry: ConvGeometry, bases, multiple: int, name: str = "conv"):
        """Each rank of the pair rounded on its own ('vbmf' ranks are VBMF's, not rounded)."""
        if bases == VBMF:
            return bases
        return tuple(round_rank(r, multiple, full, name) for r, full in zip(bases, cls.full_rank(geometry)))

    @classmethod
    def bases_for_weight(cls, weight: torch.Tensor, bases) -> tuple[int, int]:
        return tucker2_ranks(weight) if bases == VBMF else bases

    @classmethod
    def macs(cls, geometry: ConvGeometry, bases: tuple[int, int]) -> float:
        c, n, (kh, kw) = geometry.in_channels, geometry.out_channels, geometry.kernel_size
        r_in, r_out = bases
        return c * r_in + r_in * r_out * kh * kw + r_out * n

    @classmethod
    def bases_for_speedup(cls, geometry: ConvGeometry, target: float) -> tuple[int, int]:
        """The largest (R_in, R_out) = (t*C, t*N), rounded down, whose theoretical speed-up is >=
        target: t solves C*N*kh*kw t^2 + (C^2 + N^2) t = N*C*kh*kw / target."""
        c, n, (kh, kw) = geometry.in_channels, geometry.out_channels, geometry.kernel_size
        a, b = c * n * kh * kw, c * c + n * n
        t = (math.sqrt(b * b + 4 * a * a / target) - b) / (2 * a)
        return max(1, int(t * c)), max(1, int(t * n))

    def fit_filters(self, weight: torch.Tensor) -> dict:
        u_in, core, u_out, info = solve_tucker2(weight, self.bases)
        with torch.no_grad():
            self.pointwise_in.weight.copy_(u_in.T[:, :, None, None])  # (R_in, C, 1, 1)
            self.core.weight.copy_(core)  # (R_out, R_in, kh, kw)
            self.pointwise_out.weight.copy_(u_out[:, :, None, None])  # (N, R_out, 1, 1)
        return info

    def dense_weight(self) -> torch.Tensor:
        # W[n, c, y, x] = sum_{r, s} U_out[n, r] G[r, s, y, x] U_in[c, s]
        return torch.einsum(
            "nr,rsyx,sc->ncyx",
            self.pointwise_out.weight[:, :, 0, 0],
            self.core.weight,
            self.pointwise_in.weight[:, :, 0, 0],
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(self.pointwise_in(x))
