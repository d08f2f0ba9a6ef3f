"""Execution strategies of a Scheme 1 layer, and the measured choice among them.

All strategies compute the same function, y = sum_{c,m} a[n,c,m] (x_c * v_m h_m^T) + bias, with
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

:func:`choose` times them on the layer's real input, interleaved, and caches the fastest per
(device, layer shape, input shape).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lrx.estimator import DEFAULT_ESTIMATOR, Estimator, measure

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

_chosen: dict[tuple, str] = {}


def cache_key(x: torch.Tensor, a: torch.Tensor, v: torch.Tensor, h: torch.Tensor, g) -> tuple:
    return (str(x.device), tuple(x.shape), x.dtype, tuple(a.shape), v.shape[1], h.shape[1], g)


@torch.inference_mode()
def choose(layer, x: torch.Tensor, estimator: Estimator = DEFAULT_ESTIMATOR) -> tuple[str, dict[str, float]]:
    """The fastest strategy for ``layer`` on input ``x`` (measured, interleaved; cached per
    device, layer shape and input shape) and the median milliseconds of each strategy timed."""
    key = cache_key(x, layer.a, layer.v, layer.h, layer.geometry)
    if key in _chosen:
        return _chosen[key], {}
    args = (layer.v, layer.h, layer.a, layer.bias, layer.geometry)
    runs = {name: (lambda f=f: f(x, *args)) for name, f in STRATEGIES.items()}
    times = measure(runs, estimator=estimator).ms
    best = min(times, key=times.get)
    _chosen[key] = best
    return best, times
