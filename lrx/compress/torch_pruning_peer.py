"""The Torch-Pruning peer: uniform structured channel pruning by another library, a baseline for
lrx's own pruning (:mod:`lrx.compress.prune`) and for the low-rank methods
(``decomp=prune decomp.engine=torch_pruning``).

Torch-Pruning (the ``prune`` extra) removes from every conv the same fraction ``ratio`` of its N
output channels, those whose filters ``W[n]`` (each ``C x kh x kw``) have the smallest L1 norm
``Σ|W[n]|`` (Li et al., *Pruning Filters for Efficient ConvNets*, 2017), and the same channels from
the layers that read them (BatchNorm, the next conv's input channels, the classifier's inputs). A
conv keeps ``floor(floor(N (1 - ratio)) / round_to) * round_to`` filters (:func:`kept_channels`).

The pruned convs keep their names and type but not their shapes: :func:`lrx.measure.latency.compare`
counts each as replaced and times it on the pruned network's own input.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from lrx.compress.prune import LABEL, LETTER, METHOD
from lrx.modes import eval_mode

IMPORTANCE = "L1 norm of each conv's filters (Torch-Pruning MagnitudeImportance(p=1, group_reduction='first'))"


def kept_channels(channels: int, ratio: float, round_to: int) -> int:
    """The filters a conv of ``channels`` filters keeps: Torch-Pruning's rule, ``int(N (1 - ratio))``
    rounded down to a multiple of ``round_to``."""
    return int(channels * (1 - ratio)) // round_to * round_to


def convs(net: nn.Module) -> dict[str, nn.Conv2d]:
    """Every conv of ``net`` by name, in the network's order."""
    return {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}


def check(net: nn.Module, ratio: float, round_to: int) -> None:
    """A ValueError naming the first conv that ``ratio``, rounded down to multiples of ``round_to``,
    leaves no filter."""
    for name, m in convs(net).items():
        if kept_channels(m.out_channels, ratio, round_to) == 0:
            raise ValueError(
                f"decomp.ratio={ratio:g} rounded down to multiples of decomp.rank_multiple={round_to} leaves "
                f"{name} ({m.out_channels} filters) no filter; valid: a smaller ratio or multiple"
            )


def prune_channels(net: nn.Module, ratio: float, round_to: int, input_size: int) -> list[dict]:
    """Prune the output channels of every conv of ``net`` in place, as the module docstring says
    (Torch-Pruning traces ``net`` on one ``(1, 3, input_size, input_size)`` input, in eval mode).
    Returns one record per conv, as a run keeps its replaced layers': ``bases`` the filters kept,
    ``macs_speedup`` the conv's MAC ratio ``N·C`` before over after (kernel and output size do not
    change) and ``solve_time_s`` the whole pruning's seconds shared equally, so that they sum to it.

    A ratio that leaves some conv no filter is a ValueError naming it, before anything is pruned."""
    import torch_pruning as tp

    check(net, ratio, round_to)
    before = {name: (m.out_channels, m.in_channels, *m.kernel_size) for name, m in convs(net).items()}
    start = time.perf_counter()
    x = torch.randn(1, 3, input_size, input_size, device=next(net.parameters()).device)
    importance = tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    with eval_mode(net):  # tracing runs the network: BatchNorm's running statistics must not move
        pruner = tp.pruner.BasePruner(
            net, x, importance, pruning_ratio=ratio, round_to=round_to, root_module_types=[nn.Conv2d]
        )
        pruner.step()
    seconds = (time.perf_counter() - start) / len(before)
    return [
        {
            "name": name,
            "shape": list(before[name]),
            "method": METHOD,
            "label": LABEL,
            "letter": LETTER,
            "bases": m.out_channels,
            "macs_speedup": before[name][0] * before[name][1] / (m.out_channels * m.in_channels),
            "solve_time_s": seconds,
            "kept": True,
        }
        for name, m in convs(net).items()
    ]
