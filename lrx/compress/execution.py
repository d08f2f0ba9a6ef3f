"""Layers whose forward pass can run in more than one way choose theirs by measurement.

Such a layer (Scheme 1, CP) names its ``default_strategy`` (the one fitting uses: the executions
agree only to float rounding, so a measured, run-dependent choice would make fitting
irreproducible), runs ``strategy``, and lists every execution on an input in ``executions(x)``
(:class:`lrx.lowrank.base.LowRankConv`). :func:`select` times them on the real input, side by
side, and applies the fastest; the choice is cached per layer type, shape, bases, input, device
and thread count.
"""

from __future__ import annotations

import torch

from lrx.measure.estimator import DEFAULT_ESTIMATOR, Estimator, measure
from lrx.measure.latency import layer_inputs, memory_format_of
from lrx.modes import memory_format as in_format

_chosen: dict[tuple, str] = {}


def has_choice(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` can run in more than one way."""
    return getattr(layer, "default_strategy", None) is not None


def _cache_key(layer: torch.nn.Module, x: torch.Tensor) -> tuple:
    layout = x.is_contiguous(memory_format=torch.channels_last)
    shape = (type(layer).__name__, layer.geometry, str(layer.bases))
    return (*shape, str(x.device), tuple(x.shape), x.dtype, layout, torch.get_num_threads())


@torch.inference_mode()
def select(layer: torch.nn.Module, x: torch.Tensor, estimator: Estimator = DEFAULT_ESTIMATOR) -> dict:
    """Time every execution of ``layer`` on its real input ``x``, keep the fastest; returns
    ``{"strategy": ..., "times_ms": {...}}`` (no times where the choice was cached)."""
    key, times = _cache_key(layer, x), {}
    if key not in _chosen:
        times = measure(layer.executions(x), estimator=estimator).ms
        _chosen[key] = min(times, key=times.get)
    layer.strategy = _chosen[key]
    return {"strategy": layer.strategy, "times_ms": times}


def _choosers(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in net.named_modules() if has_choice(m)}


def tune(
    net: torch.nn.Module,
    x: torch.Tensor,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    memory_format: str = "contiguous",
) -> dict[str, dict]:
    """Choose the execution of every such layer of ``net`` on its real input for the network
    input ``x``, with ``net`` and ``x`` in ``memory_format`` as :func:`lrx.measure.latency.compare`
    times them (``net`` is contiguous again after); returns ``{name: select(...)}``."""
    fmt = memory_format_of(memory_format)
    layers = _choosers(net)
    with in_format(fmt, net):
        inputs = layer_inputs(net, list(layers), x.contiguous(memory_format=fmt))
        return {name: select(m, inputs[name], estimator) for name, m in layers.items()}


def reset_strategies(net: torch.nn.Module) -> None:
    """Every such layer of ``net`` back to its default execution (before fitting)."""
    for m in _choosers(net).values():
        m.strategy = m.default_strategy
