"""Rank selection by empirical variational Bayesian matrix factorisation (EVBMF; the analytic
global solution of Nakajima, Sugiyama, Babacan and Tomioka, JMLR 2013), as the peers
pytorch-tensor-decompositions and MUSCO use it to choose Tucker-2 ranks: R_out is the EVBMF rank
of the mode-0 unfolding (N, C*kh*kw) of the weight, R_in that of the mode-1 unfolding (C, N*kh*kw).

For Y (L, M), L <= M, with singular values s_h, alpha = L/M and tau_bar = 2.5129 sqrt(alpha), the
noise variance sigma^2 minimises the free energy (eq. 13 of the paper with the full rank H = L)

    sum_{x_h <= x_bar} (x_h - log x_h)
      + sum_{x_h > x_bar} (x_h - tau_h + log((tau_h + 1) / x_h) + alpha log(tau_h / alpha + 1)),
    x_h = s_h^2 / (M sigma^2),  tau_h = (x_h - 1 - alpha + sqrt((x_h - 1 - alpha)^2 - 4 alpha)) / 2,
    x_bar = (1 + tau_bar)(1 + alpha / tau_bar),

over the bounds of the reference code, and the rank is the number of s_h above the threshold
sqrt(M sigma^2 x_bar). The peers minimise with scipy's bounded Brent search, this module with a
golden-section search (torch only); the ranks agree with the peers' reference code on both
unfoldings of every trained AlexNetCIFAR conv and on rank-5-plus-noise matrices. At least rank 1
is returned (EVBMF gives 0 for pure noise).
"""

import math

import torch

from lrx.lowrank.linalg import single_thread

SEARCH_STEPS = 80  # golden-section steps: the bracket shrinks by 0.618^80 ~ 2e-17, float64 precision


def _free_energy(sigma2: float, s2: torch.Tensor, m: int, alpha: float, x_bar: float) -> float:
    x = s2 / (m * sigma2)
    small, big = x[x <= x_bar], x[x > x_bar]
    tau = 0.5 * (big - (1 + alpha) + ((big - (1 + alpha)) ** 2 - 4 * alpha).sqrt())
    return float(
        (small - small.log()).sum()
        + (big - tau).sum()
        + ((tau + 1) / big).log().sum()
        + alpha * (tau / alpha + 1).log().sum()
    )


def _argmin(f, low: float, high: float) -> float:
    """Golden-section search for a minimum of ``f`` on [low, high]."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low + (1 - ratio) * (high - low), low + ratio * (high - low)
    fa, fb = f(a), f(b)
    for _ in range(SEARCH_STEPS):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = low + (1 - ratio) * (high - low)
            fa = f(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = f(b)
    return (low + high) / 2


def evbmf_rank(mat: torch.Tensor) -> int:
    """The EVBMF rank (>= 1) of a matrix, its noise variance estimated from the matrix itself."""
    y = mat.detach().double().cpu()
    with single_thread(y.device):
        return _evbmf_rank(y)


def _evbmf_rank(y: torch.Tensor) -> int:
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, m = y.shape
    s2 = torch.linalg.svdvals(y) ** 2
    alpha = rows / m
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    # the search bounds of the reference implementation
    tail = min(math.ceil(rows / (1 + alpha)) - 1, rows)  # first index of the presumed noise tail
    upper = float(s2.sum()) / (rows * m)
    lower = max(float(s2[tail]) / (m * x_bar), float(s2[tail:].mean()) / m)
    sigma2 = _argmin(lambda v: _free_energy(v, s2, m, alpha, x_bar), lower, upper)
    return max(1, int((s2 > m * sigma2 * x_bar).sum()))


def tucker2_ranks(weight: torch.Tensor) -> tuple[int, int]:
    """(R_in, R_out) for a Tucker-2 layer of ``weight`` (N, C, kh, kw): the EVBMF ranks of its
    mode-1 (C, N*kh*kw) and mode-0 (N, C*kh*kw) unfoldings."""
    n, c = weight.shape[:2]
    return evbmf_rank(weight.transpose(0, 1).reshape(c, -1)), evbmf_rank(weight.reshape(n, -1))
