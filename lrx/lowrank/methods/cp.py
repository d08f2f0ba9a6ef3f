"""CP (a peer baseline; Lebedev et al., ICLR 2015): the kernel as a sum of R rank-1 terms,

    W[n, c, y, x] ~= sum_r U[n, r] S[c, r] V[y, r] H[x, r],

executed as a 1x1 conv C -> R (S), a depthwise kh x 1 conv (V, row stride/padding/dilation), a
depthwise 1 x kw conv (H, column stride/padding/dilation) and a 1x1 conv R -> N (U, the bias).
The two depthwise passes can also run as ONE depthwise kh x kw conv whose kernels are the rank-1
v_r h_r^T (the same function: more MACs, one pass over the R maps instead of two, and these
passes are memory-bound); the layer times both on its real input and keeps the faster
(``executions``, as Scheme 1 does; :mod:`lrx.compress.execution`).

Filter reconstruction by CP-ALS (no closed form; a local optimum). Each factor in turn is the exact
ridge-regularised least-squares fit with the other three fixed,

    F_k = X_(k) KR_k (G_k + mu_k I)^-1,   G_k = Hadamard product over j != k of F_j^T F_j,

X_(k) the mode-k unfolding, KR_k the Khatri-Rao product of the other factors and mu_k = RIDGE *
mean(diag G_k); with RIDGE = 0 this is plain ALS, whose error is non-increasing over the rounds.
The ridge keeps CP away from degenerate solutions: rank-1 terms far larger than W that cancel
each other, which fit the kernel but make the layer unstable to train (docs/SOLVERS.md).

The products X_(k) KR_k come from two contractions per round (X with V and H for U and S, X with
U and S for V and H) instead of four. Started from the top-R left singular vectors of each
unfolding (random columns beyond a mode's size, as tensorly's init='svd').

Checked against tensorly's parafac: docs/SOLVERS.md.
"""

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lrx.lowrank.base import PointwiseOutConv
from lrx.lowrank.checks import check_bases
from lrx.lowrank.geometry import ConvGeometry
from lrx.lowrank.linalg import converged, single_thread, solve_dtype, solve_psd, top_left_singular_vectors

# ALS rounds at most, and the stop: a round that lowers ||W - W_hat||^2 by less than TOL
# (relative); how they were chosen: docs/SOLVERS.md.
MAX_ITERS = 200
TOL = 1e-4
RIDGE = 1e-2  # mu_k relative to the mean diagonal of G_k (see the module docstring)
SEED = 0  # of the random initial columns of modes smaller than R
STRATEGIES = ("separable", "fused")  # the depthwise passes: kh x 1 then 1 x kw | one kh x kw
# The planner tries CP from 2x theoretical only, on a coarse grid: below 2x, R runs into the
# hundreds, where CP-ALS takes minutes per candidate and CP's depthwise passes make it slow to run.
CP_PLANNER_TARGETS = (2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 11.0, 16.0)


def full_rank(shape) -> int:
    """An upper bound of the CP rank of any tensor of this shape: the smallest product of all sizes
    but one (e.g. R = C*kh*kw terms e_c (x) e_y (x) e_x (x) W[:, c, y, x] reproduce W exactly)."""
    total = math.prod(shape)
    return min(total // size for size in shape)


def _init(x: torch.Tensor, rank: int) -> list[torch.Tensor]:
    """Per mode: the top-``rank`` left singular vectors of the unfolding, random columns beyond."""
    gen = torch.Generator(x.device).manual_seed(SEED)
    factors = []
    for k, size in enumerate(x.shape):
        u = top_left_singular_vectors(x.movedim(k, 0).reshape(size, -1), rank)
        extra = torch.rand(size, rank - u.shape[1], generator=gen, dtype=x.dtype, device=x.device)
        factors.append(torch.cat([u, extra], dim=1))
    return factors


def _update(mttkrp: torch.Tensor, ridge: float, *others: torch.Tensor) -> torch.Tensor:
    """The ridge least-squares factor F = X_(k) KR_k (G_k + mu_k I)^-1, G_k the Hadamard product of
    the others' Gram matrices and mu_k = ridge * mean(diag G_k)."""
    gram = torch.stack([f.T @ f for f in others]).prod(0)
    mu = ridge * gram.diagonal().mean()
    return solve_psd(gram + mu * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), mttkrp.T).T


def _balance(factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Spread each rank-1 term's norm evenly over its vectors (the same CP tensor, well scaled)."""
    norms = torch.stack([torch.linalg.norm(f, dim=0) for f in factors])  # (modes, R)
    target = norms.prod(0).pow(1 / len(factors))
    return [f * (target / norm.clamp_min(torch.finfo(f.dtype).tiny)) for f, norm in zip(factors, norms)]


def solve_cp(
    weight: torch.Tensor,
    rank: int,
    iters: int = MAX_ITERS,
    tol: float = TOL,
    ridge: float | None = None,
    progress: bool = False,
) -> tuple[list[torch.Tensor], dict]:
    """CP-ALS of ``weight`` (N, C, kh, kw) at rank R.

    Returns the factors [U (N, R), S (C, R), V (kh, R), H (kw, R)] (float64 on weight's device,
    every rank-1 term's norm spread evenly over its four vectors) and info: iters (rounds run) and
    history (||W - W_hat||^2 / ||W||^2 after each round). Stops after ``iters`` rounds, or once a
    round lowers that by less than ``tol`` (relative). ``ridge``: see the module docstring (None: RIDGE; 0: plain ALS).
    """
    check_bases(rank, full_rank(weight.shape), "cp", "weight")
    ridge = RIDGE if ridge is None else ridge
    if not ridge >= 0:
        raise ValueError(f"ridge={ridge!r} is invalid; valid: a number >= 0 (0: plain ALS)")
    with single_thread(weight.device):
        return _solve_cp(weight, rank, iters, tol, ridge, progress)


def _solve_cp(weight: torch.Tensor, rank: int, iters: int, tol: float, ridge: float, progress: bool):
    x = weight.detach().to(solve_dtype(weight.device))
    n, c, kh, kw = x.shape
    energy = x.pow(2).sum()
    factors = _init(x, rank)
    history = []
    for _ in tqdm(range(iters), desc=f"CP-ALS, R={rank}", disable=not progress):
        u, s, v, h = factors
        p = x.reshape(n * c, kh * kw) @ (v[:, None] * h[None]).reshape(kh * kw, rank)  # (N*C, R)
        p = p.reshape(n, c, rank)  # X contracted with V and H
        u = _update((p * s).sum(1), ridge, s, v, h)
        s = _update((p * u[:, None]).sum(0), ridge, u, v, h)
        q = ((u.T @ x.reshape(n, -1)).reshape(rank, c, kh, kw) * s.T[:, :, None, None]).sum(1)  # with U, S
        v = _update(torch.einsum("ryx,xr->yr", q, h), ridge, u, s, h)
        m = torch.einsum("ryx,yr->xr", q, v)
        h = _update(m, ridge, u, s, v)
        factors = _balance([u, s, v, h])
        # ||X - X_hat||^2 = ||X||^2 - 2 <X, X_hat> + ||X_hat||^2, with <X, X_hat> = <H, X_(3) KR_3>
        fit = energy - 2 * (h * m).sum() + torch.stack([f.T @ f for f in (u, s, v, h)]).prod(0).sum()
        history.append(float(fit.clamp_min(0) / energy))
        if converged(history, tol):
            break
    return factors, {"iters": len(history), "history": history}


class CPConv(PointwiseOutConv, method="cp", order=4):
    """CP with R = ``bases`` terms: ``pointwise_in`` nn.Conv2d C -> R (1x1, no bias), ``vertical``
    depthwise R -> R (kh x 1, row stride/padding/dilation), ``horizontal`` depthwise R -> R (1 x kw,
    column stride/padding/dilation), ``pointwise_out`` nn.Conv2d R -> N (1x1, the bias).

    MACs per output pixel: R*(C + kh + kw + N) (every map counted at output resolution) against
    N*C*kh*kw dense, so macs_speedup = N*C*kh*kw / (R*(C + kh + kw + N)).
    ``strategy="fused"`` runs the two depthwise passes as one kh x kw depthwise conv (R*kh*kw MACs
    per pixel instead of R*(kh + kw)); see the module docstring.
    """

    options = {"progress": False}  # a tqdm bar over the ALS rounds
    planner_targets = CP_PLANNER_TARGETS
    default_strategy = "separable"

    def build(self, g: ConvGeometry, bases: int, bias: bool, factory: dict) -> None:
        kh, kw = g.kernel_size
        self.pointwise_in = nn.Conv2d(g.in_channels, bases, 1, bias=False, **factory)
        self.vertical = nn.Conv2d(bases, bases, (kh, 1), groups=bases, bias=False, **g.vertical(), **factory)
        self.horizontal = nn.Conv2d(bases, bases, (1, kw), groups=bases, bias=False, **g.horizontal(), **factory)
        self.pointwise_out = nn.Conv2d(bases, g.out_channels, 1, bias=bias, **factory)
        self.strategy = self.default_strategy

    @staticmethod
    def full_rank(geometry: ConvGeometry) -> int:
        return full_rank((geometry.out_channels, geometry.in_channels, *geometry.kernel_size))

    @classmethod
    def macs(cls, geometry: ConvGeometry, bases: int) -> float:
        c, n, (kh, kw) = geometry.in_channels, geometry.out_channels, geometry.kernel_size
        return bases * (c + kh + kw + n)

    def fit_filters(self, weight: torch.Tensor, progress: bool = False) -> dict:
        (u, s, v, h), info = solve_cp(weight, self.bases, progress=progress)
        with torch.no_grad():
            self.pointwise_in.weight.copy_(s.T[:, :, None, None])  # (R, C, 1, 1)
            self.vertical.weight.copy_(v.T[:, None, :, None])  # (R, 1, kh, 1)
            self.horizontal.weight.copy_(h.T[:, None, None, :])  # (R, 1, 1, kw)
            self.pointwise_out.weight.copy_(u[:, :, None, None])  # (N, R, 1, 1)
        return info

    def dense_weight(self) -> torch.Tensor:
        # W[n, c, y, x] = sum_r U[n, r] S[c, r] V[y, r] H[x, r]
        return torch.einsum(
            "nr,rc,ry,rx->ncyx",
            self.pointwise_out.weight[:, :, 0, 0],
            self.pointwise_in.weight[:, :, 0, 0],
            self.vertical.weight[:, 0, :, 0],
            self.horizontal.weight[:, 0, 0, :],
        )

    def _depthwise(self, y: torch.Tensor, strategy: str) -> torch.Tensor:
        """Both depthwise passes on ``y`` (B, R, H, W) -> (B, R, H', W'), as ``strategy`` runs them."""
        if strategy == "separable":
            return self.horizontal(self.vertical(y))
        g = self.geometry
        kernel = self.vertical.weight * self.horizontal.weight  # (R, 1, kh, 1) * (R, 1, 1, kw) -> (R, 1, kh, kw)
        return F.conv2d(y, kernel, stride=g.stride, padding=g.padding, dilation=g.dilation, groups=self.bases)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._depthwise(self.pointwise_in(x), self.strategy)

    def executions(self, x: torch.Tensor) -> dict:
        """Both executions of the depthwise passes (the rest of the layer is the same in both)."""
        y = self.pointwise_in(x)
        return {s: partial(self._depthwise, y, s) for s in STRATEGIES}
