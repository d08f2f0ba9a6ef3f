"""Scheme 1 (filter redundancy): every 2-D filter slice is a combination of M shared rank-1 bases,
W[n, c] ~= sum_m A[n, c, m] v_m h_m^T, with v_m of length kh and h_m of length kw.

Filter reconstruction (no closed form). With X = W as an (N*C, P) matrix of slices (P = kh*kw)
and the bases as the rows of S (M, P), the paper's objective is

    min_{A, S}  ||X - A S||_F^2 + lam_abs * sum_m ||S_m||_*          (S_m reshaped to kh x kw)

It is invariant to A[:, m] * t, S_m / t, so as stated the penalty can be scaled away; we fix the
scale by keeping every ||S_m||_F = 1 (A carries the magnitudes). Then ||S_m||_* >= 1 with equality
iff S_m has rank 1: the penalty measures only how far each basis is from rank 1, and

    lam_abs = lam * ||W||_F^2,

so lam is the share of the layer's energy that one unit of excess nuclear norm is worth, the same
for every layer. A basis' i-th singular value is zeroed once 2 sigma_i(R_m^T a_m) <= lam_abs, and
sigma_i(R_m^T a_m) ~ ||a_m||^2 sigma_i(S_m): a direction goes once it carries less than about lam/2
of the layer's energy, so lam ~ 1 leaves every basis (nearly) rank 1.

Solver (everything goes through the (P, P) Gram matrix Q = X^T X, so its cost does not grow with
N*C; float64 on the weight's device):
  1. init: S = the top-M right singular vectors of X ('svd'), or those truncated to rank 1 and
     refined by the rank-1 ALS of step 4 ('als');
  2. for each lam of the schedule ('fixed': lam_start; 'ascending': geometric from lam_start to
     lam_end over lam_steps stages, warm-started), ``iters`` rounds of
       A-step: A = X S^T (S S^T + ridge I)^-1 (closed-form least squares, tiny ridge);
       S-step: exact block coordinate descent over the bases: with G_m = R_m^T a_m (R_m the
               residual without basis m), S_m = U diag(t / ||t||) V^T with U diag(g) V^T = G_m and
               t = (2g - lam_abs)_+ (singular value thresholding on the unit sphere; t = e_1 if
               all are thresholded away).
     Each step minimises the objective (plus ridge ||A||^2) exactly in its block, so the objective
     is non-increasing at fixed lam (``report['history']``);
  3. truncate each basis to rank 1 by SVD (``rank1_energy`` = sigma_1^2 / sum sigma^2 before);
  4. rank-1 alternating least squares for ``refine_iters`` rounds: A, then all v (one M x M
     linear system), then all h; then the final A.

Why these defaults: docs/SOLVERS.md.

Execution strategies. All strategies compute the same function, y = sum_{c,m} a[n,c,m] (x_c * v_m h_m^T) + bias, with
v (M, kh), h (M, kw), a (N, C, M), from standard conv ops only (so ONNX export works), but they
move memory differently, which is what decides speed for the memory-bound depthwise passes:

- ``textbook``: grouped vertical pass C -> C*M, depthwise horizontal pass, 1x1 C*M -> N;
- ``textbook_cl``: the same in channels_last memory format (oneDNN's fast depthwise path);
- ``shared_bases``: channels folded into the batch, so ONE conv with the M shared vertical bases
  serves every channel (a dense conv with a single input channel instead of C groups), then a
  grouped horizontal pass, then the 1x1 combination;
- ``combine_first``: the 1x1 combination first, C -> N*M (one dense GEMM), then depthwise
  vertical passes on the N*M maps, and a grouped horizontal pass (groups=N) that also sums over
  the M bases. Cheaper than ``textbook`` when N < C, and its big op is a GEMM.
- ``combine_first_cl``: the same in channels_last.

:mod:`lrx.compress.execution` times them on the layer's real input and keeps the fastest.
"""

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lrx.lowrank.base import LowRankConv
from lrx.lowrank.checks import DecompositionError, check_bases
from lrx.lowrank.geometry import ConvGeometry
from lrx.lowrank.linalg import converged, single_thread, solve_dtype, solve_psd

DEFAULTS = dict(
    lam_schedule="ascending",
    lam_start=1e-3,
    lam_end=1.0,
    lam_steps=10,
    iters=20,
    init="svd",
    refine_iters=50,
    tol=1e-6,
    progress=False,
)
RIDGE = 1e-9  # on ||A||^2; scale-free because the bases have unit norm
MAX_PLANNER_BASES = 12  # the planner tries M up to this


def check_options(o: dict, name=str) -> None:
    """Range and type checks of Scheme 1's solver options ``o`` (all of DEFAULTS' keys);
    ``name(keyword)`` is how an option is called in the messages (its config key)."""
    if o["lam_schedule"] not in ("fixed", "ascending"):
        raise DecompositionError(f"{name('lam_schedule')}={o['lam_schedule']!r}; valid: 'fixed' or 'ascending'")
    if o["init"] not in ("svd", "als"):
        raise DecompositionError(f"{name('init')}={o['init']!r}; valid: 'svd' or 'als'")
    for key in ("lam_start", "lam_end", "tol"):
        if not isinstance(o[key], (int, float)) or isinstance(o[key], bool) or not o[key] >= 0:
            raise DecompositionError(f"{name(key)}={o[key]!r}: must be a number >= 0")
    for key, low in (("lam_steps", 1), ("iters", 1), ("refine_iters", 0)):
        if not isinstance(o[key], int) or isinstance(o[key], bool) or o[key] < low:
            raise DecompositionError(f"{name(key)}={o[key]!r}: must be an integer >= {low}")
    if o["lam_schedule"] == "ascending" and not 0 < o["lam_start"] <= o["lam_end"]:
        raise DecompositionError(
            f"ascending schedule from {name('lam_start')}={o['lam_start']} to {name('lam_end')}={o['lam_end']}: "
            f"need 0 < lam_start <= lam_end (use {name('lam_schedule')}=fixed for lam_start=0)"
        )


def lambda_schedule(lam_schedule: str, lam_start: float, lam_end: float, lam_steps: int) -> list[float]:
    """'fixed': [lam_start]; 'ascending': lam_steps values, geometric from lam_start to lam_end."""
    if lam_schedule == "fixed":
        return [float(lam_start)]
    if lam_steps == 1:
        return [float(lam_start)]
    ratio = math.log(lam_end / lam_start) / (lam_steps - 1)
    return [lam_start * math.exp(ratio * i) for i in range(lam_steps)]


def _a_step(q: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A = X S^T B^-1 with B = S S^T + ridge I, returned through Z = X^T A = Q S^T B^-1 (P, M)
    and C = A^T A = B^-1 S Z (M, M); A itself is never formed."""
    b = s @ s.T + RIDGE * torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    z = torch.linalg.solve(b, s @ q).T
    return z, torch.linalg.solve(b, s @ z)


def _fit(energy, z, c, s) -> torch.Tensor:
    """||X - A S||^2 + ridge ||A||^2 = ||X||^2 - 2 <X^T A, S^T> + <A^T A, S S^T> + ridge tr(A^T A)."""
    return energy - 2 * (z * s.T).sum() + (c * (s @ s.T)).sum() + RIDGE * c.trace()


def _s_step(z, c, s, shape, lam_abs) -> tuple[torch.Tensor, torch.Tensor]:
    """Block coordinate descent over the bases (rows of s, unit norm); returns (s, sum ||S_m||_*)."""
    s = s.clone()
    nuclear = s.new_zeros(())
    for m in range(s.shape[0]):
        g = z[:, m] - s.T @ c[:, m] + s[m] * c[m, m]  # R_m^T a_m, (P,)
        u, sig, vh = torch.linalg.svd(g.reshape(shape), full_matrices=False)
        t = (2 * sig - lam_abs).clamp_min(0)
        t[0] += t[0] == 0  # everything thresholded: keep the top direction
        t = t / torch.linalg.norm(t)
        s[m] = ((u * t) @ vh).reshape(-1)
        nuclear = nuclear + t.sum()
    return s, nuclear


def _rank1(v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return (v[:, :, None] * h[:, None, :]).flatten(1)  # S_m = v_m h_m^T as rows (M, P)


def _als(q, energy, v, h, iters, tol) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Rank-1 ALS: A-step, then all v, then all h (each exact least squares); v, h kept unit.

    With Z = X^T A and C = A^T A fixed, ||X - A S||^2 is quadratic in v:
    (C * (h h^T)) v = [Z_m h_m]_m, and likewise in h."""
    m, kh, kw = v.shape[0], v.shape[1], h.shape[1]
    history = []
    for _ in range(iters):
        z, c = _a_step(q, _rank1(v, h))
        zm = z.T.reshape(m, kh, kw)
        v = solve_psd(c * (h @ h.T), torch.einsum("myx,mx->my", zm, h))
        h = solve_psd(c * (v @ v.T), torch.einsum("myx,my->mx", zm, v))
        history.append(float(_fit(energy, z, c, _rank1(v, h)) / energy))
        v = v / torch.linalg.norm(v, dim=1, keepdim=True)
        h = h / torch.linalg.norm(h, dim=1, keepdim=True)
        if converged(history, tol):
            break
    return v, h, history


def _truncate(s: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each basis to rank 1: (v (M, kh), h (M, kw), sigma_1^2 / sum sigma^2 (M,))."""
    u, sig, vh = torch.linalg.svd(s.reshape(-1, *shape), full_matrices=False)
    return u[:, :, 0], vh[:, 0, :], sig[:, 0] ** 2 / (sig**2).sum(1)


def solve_scheme1(weight: torch.Tensor, bases: int, **solver_options):
    """Scheme 1 filter reconstruction of ``weight`` (N, C, kh, kw) with M = ``bases`` rank-1 bases.

    Returns v (M, kh), h (M, kw), A (N, C, M) (float64 on weight's device, v and h unit-norm) and
    an info dict: lambda (schedule, start, end, steps, values, scale = ||W||_F^2), init,
    refine_iters, rank1_energy (M floats) and history (per stage: lam, objective / ||W||^2 per
    round; the ALS refinement has lam None and the fit alone).
    """
    o = Scheme1Conv.check_options(solver_options)
    check_bases(bases, weight.shape[2] * weight.shape[3], "scheme1", "weight")
    with single_thread(weight.device):
        return _solve_scheme1(weight, bases, o)


def _solve_scheme1(weight: torch.Tensor, bases: int, o: dict):
    n, c, kh, kw = weight.shape
    x = weight.detach().to(solve_dtype(weight.device)).reshape(n * c, kh * kw)
    q = x.T @ x
    energy = q.trace()
    s = torch.linalg.eigh(q)[1][:, -bases:].flip(1).T.contiguous()  # top-M right singular vectors
    history = []
    if o["init"] == "als":
        v, h, _ = _truncate(s, (kh, kw))
        v, h, fits = _als(q, energy, v, h, o["iters"], o["tol"])
        history.append({"lam": None, "objective": fits})
        s = _rank1(v, h)
    lams = lambda_schedule(o["lam_schedule"], o["lam_start"], o["lam_end"], o["lam_steps"])
    for lam in tqdm(lams, desc=f"scheme 1, M={bases}", disable=not o["progress"]):
        objective = []
        for _ in range(o["iters"]):
            z, cc = _a_step(q, s)
            s, nuclear = _s_step(z, cc, s, (kh, kw), lam * energy)
            objective.append(float((_fit(energy, z, cc, s) + lam * energy * nuclear) / energy))
            if converged(objective, o["tol"]):
                break
        history.append({"lam": lam, "objective": objective})
    v, h, rank1_energy = _truncate(s, (kh, kw))
    v, h, fits = _als(q, energy, v, h, o["refine_iters"], o["tol"])
    if fits:
        history.append({"lam": None, "objective": fits})
    s = _rank1(v, h)
    b = s @ s.T + RIDGE * torch.eye(bases, dtype=s.dtype, device=s.device)
    a = torch.linalg.solve(b, s @ x.T).T  # final A = X S^T B^-1, (N*C, M)
    info = {
        "lambda": {
            "schedule": o["lam_schedule"],
            "start": o["lam_start"],
            "end": o["lam_end"],
            "steps": o["lam_steps"],
            "values": lams,
            "scale": float(energy),
        },
        "init": o["init"],
        "refine_iters": o["refine_iters"],
        "rank1_energy": rank1_energy.tolist(),
        "history": history,
    }
    return v, h, a.reshape(n, c, bases), info


CL = torch.channels_last


def separable_maps(x, v, h, g):
    """The C*M maps x_c * v_m h_m^T (channel c*M + m), by a grouped vertical and a depthwise
    horizontal pass: (B, C*M, H', W')."""
    c, m = x.shape[1], v.shape[0]
    y = F.conv2d(x, v.repeat(c, 1)[:, None, :, None], groups=c, **g.vertical())  # (B, C*M, H', W)
    return F.conv2d(y, h.repeat(c, 1)[:, None, None, :], groups=c * m, **g.horizontal())


def textbook(x, v, h, a, bias, g):
    n, c, m = a.shape
    return F.conv2d(separable_maps(x, v, h, g), a.reshape(n, c * m, 1, 1), bias)  # (B, N, H', W')


def textbook_cl(x, v, h, a, bias, g):
    return textbook(x.contiguous(memory_format=CL), v, h, a, bias, g)


def shared_bases(x, v, h, a, bias, g):
    n, c, m = a.shape
    b, _, height, width = x.shape
    y = F.conv2d(x.reshape(b * c, 1, height, width), v[:, None, :, None], **g.vertical())  # (B*C, M, H', W)
    y = F.conv2d(y, h[:, None, None, :], groups=m, **g.horizontal())  # (B*C, M, H', W')
    y = y.reshape(b, c * m, *y.shape[-2:])  # channel c*M + m
    return F.conv2d(y, a.reshape(n, c * m, 1, 1), bias)


def combine_first(x, v, h, a, bias, g):
    n, c, m = a.shape
    kw = h.shape[1]
    y = F.conv2d(x, a.permute(0, 2, 1).reshape(n * m, c, 1, 1))  # (B, N*M, H, W), channel n*M + m
    y = F.conv2d(y, v.repeat(n, 1)[:, None, :, None], groups=n * m, **g.vertical())  # (B, N*M, H', W)
    w_h = h[None].expand(n, m, kw)[:, :, None, :]  # (N, M, 1, kw): group n sums its M maps
    return F.conv2d(y, w_h, bias, groups=n, **g.horizontal())  # (B, N, H', W')


def combine_first_cl(x, v, h, a, bias, g):
    return combine_first(x.contiguous(memory_format=CL), v, h, a, bias, g)


STRATEGIES: dict[str, Callable] = {
    f.__name__: f for f in (textbook, textbook_cl, shared_bases, combine_first, combine_first_cl)
}
DEFAULT = "textbook"


class Scheme1Conv(LowRankConv, method="scheme1", label="s1", letter="M", aliases=(1, "1"), order=1):
    """Scheme 1 with parameters v (M, kh), h (M, kw), a (N, C, M) and optional bias (N).

    Forward (textbook execution, three standard convs):
      vertical:   grouped conv, groups=C, C -> C*M maps (channel c*M + m = x_c * v_m), kernel kh x 1;
      horizontal: depthwise conv, groups=C*M, kernel 1 x kw with h_m;
      combine:    1x1 conv C*M -> N with a, plus the bias.
    MACs per output pixel: C*M*kh + C*M*kw + C*M*N (the intermediate maps counted at output
    resolution) against N*C*kh*kw dense, so macs_speedup = N*kh*kw / (M*(kh + kw + N)).
    """

    options = DEFAULTS
    default_strategy = DEFAULT

    def build(self, g: ConvGeometry, bases: int, bias: bool, factory: dict) -> None:
        kh, kw = g.kernel_size
        self.v = nn.Parameter(torch.empty(bases, kh, **factory))
        self.h = nn.Parameter(torch.empty(bases, kw, **factory))
        self.a = nn.Parameter(torch.empty(g.out_channels, g.in_channels, bases, **factory))
        self.bias = nn.Parameter(torch.empty(g.out_channels, **factory)) if bias else None
        self.strategy = self.default_strategy  # the execution forward uses (see executions)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random unit-norm bases; a and bias initialised like nn.Conv2d with fan-in C*M."""
        with torch.no_grad():
            for p in (self.v, self.h):
                nn.init.normal_(p)
                p.div_(torch.linalg.norm(p, dim=1, keepdim=True))
            bound = 1 / math.sqrt(self.a.shape[1] * self.a.shape[2])
            nn.init.uniform_(self.a, -bound, bound)
            if self.bias is not None:
                nn.init.uniform_(self.bias, -bound, bound)

    @staticmethod
    def full_rank(geometry: ConvGeometry) -> int:
        kh, kw = geometry.kernel_size
        return kh * kw

    @classmethod
    def macs(cls, geometry: ConvGeometry, bases: int) -> float:
        c, n, (kh, kw) = geometry.in_channels, geometry.out_channels, geometry.kernel_size
        return c * bases * (kh + kw + n)

    @classmethod
    def planner_ranks(cls, geometry: ConvGeometry, speedups=None) -> list[int]:
        """M = 1 .. min(kh*kw - 1, MAX_PLANNER_BASES): every M, the grid being small; with
        ``speedups``, the M of each."""
        if speedups:
            return super().planner_ranks(geometry, speedups)
        kh, kw = geometry.kernel_size
        return list(range(1, min(kh * kw - 1, MAX_PLANNER_BASES) + 1))

    @classmethod
    def _check_options(cls, options: dict, name) -> None:
        check_options(options, name)

    @classmethod
    def unused_options(cls, options: dict) -> dict[str, str]:
        if options["lam_schedule"] != "fixed":
            return {}
        return {
            k: "a fixed lambda schedule uses lam_start only"
            for k in ("lam_end", "lam_steps")
            if options[k] != DEFAULTS[k]
        }

    def fit_filters(self, weight: torch.Tensor, **solver_options) -> dict:
        v, h, a, info = solve_scheme1(weight, self.bases, **solver_options)
        with torch.no_grad():
            self.v.copy_(v)
            self.h.copy_(h)
            self.a.copy_(a)
        return info

    def dense_weight(self) -> torch.Tensor:
        # W[n, c, y, x] = sum_m a[n, c, m] v[m, y] h[m, x]
        return torch.einsum("ncm,my,mx->ncyx", self.a, self.v, self.h)

    def executions(self, x: torch.Tensor) -> dict:
        args = (self.v, self.h, self.a, self.bias, self.geometry)
        return {name: partial(f, x, *args) for name, f in STRATEGIES.items()}

    def final_features(self, x: torch.Tensor) -> torch.Tensor:
        # the C*M separable maps x_c * v_m h_m^T, channel c*M + m: (B, C*M, L)
        return separable_maps(x, self.v, self.h, self.geometry).flatten(2)

    def set_final(self, final: torch.Tensor, bias: torch.Tensor | None) -> None:
        with torch.no_grad():
            self.a.copy_(final.reshape(self.a.shape))  # (N, C*M) -> (N, C, M)
            if bias is not None:
                self.bias.copy_(bias)

    @torch.no_grad()
    def fold_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (N,)
        bias = self.bias if self.bias is not None else torch.zeros_like(s)
        self.a.mul_(s[:, None, None])  # a (N, C, M): the last pass's weights
        self.bias = nn.Parameter(s * (bias - bn.running_mean) + bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return STRATEGIES[self.strategy](x, self.v, self.h, self.a, self.bias, self.geometry)
