"""Layers whose forward pass can run in more than one way choose theirs by measurement.

Such a layer (Scheme 1, CP) has ``strategy`` (the execution its forward uses),
``default_strategy`` (the one fitting uses: the executions agree only to float rounding, so a
measured, run-dependent choice would make fitting irreproducible) and
``select_strategy(x, estimator)``, which times every execution on the real input ``x``,
keeps the fastest and returns ``{"strategy": ..., "times_ms": {...}}``.
"""

from __future__ import annotations

import torch

from lrx.estimator import DEFAULT_ESTIMATOR, Estimator
from lrx.latency import layer_inputs, memory_format_of
from lrx.modes import memory_format as in_format


def _choosers(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in net.named_modules() if hasattr(m, "select_strategy")}


def tune(
    net: torch.nn.Module,
    x: torch.Tensor,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    memory_format: str = "contiguous",
) -> dict[str, dict]:
    """Choose the execution of every such layer of ``net`` on its real input for the network
    input ``x``, with ``net`` and ``x`` in ``memory_format`` as :func:`lrx.latency.compare` times
    them (``net`` is contiguous again after); returns ``{name: {"strategy": ..., "times_ms": {...}}}``."""
    fmt = memory_format_of(memory_format)
    layers = _choosers(net)
    with in_format(fmt, net):
        inputs = layer_inputs(net, list(layers), x.contiguous(memory_format=fmt))
        return {name: m.select_strategy(inputs[name], estimator) for name, m in layers.items()}


def reset_strategies(net: torch.nn.Module) -> None:
    """Every such layer of ``net`` back to its default execution (before fitting)."""
    for m in _choosers(net).values():
        m.strategy = m.default_strategy
