"""BatchNorm folded into the conv or low-rank layer before it: what a deployment runs.

In eval mode a BatchNorm2d is a per-channel affine map, bn(y) = s * y + t with
s = gamma / sqrt(running_var + eps) and t = beta - s * running_mean. When y is the output of a
conv (y = W * x + b) or of a low-rank layer (linear in its last pass: y = F z + b), then
bn(y) = (s W) * x + (s b + t): the BatchNorm disappears into the weights and bias of that
(last) pass, and the network computes the same function, to float rounding, with one pass
less per layer. A fair speed comparison folds both networks (``latency.fold_bn``).

Which BatchNorm follows which layer is read from the network's graph (torch.fx, with convs,
low-rank layers and BatchNorms as leaves): a BatchNorm folds only if its one input is a conv or
low-rank layer whose output nothing else uses.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lrx.lowrank.base import LowRankConv

FOLDABLE = (nn.Conv2d, LowRankConv)


class FoldError(ValueError):
    """A network whose graph cannot be read, so its BatchNorms cannot be folded."""


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*FOLDABLE, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


def foldable(net: nn.Module) -> list[tuple[str, str]]:
    """``[(layer name, BatchNorm name)]``: every BatchNorm2d of ``net`` that directly follows a
    conv or low-rank layer whose output only it uses. A FoldError if the graph cannot be traced."""
    try:
        graph = _Tracer().trace(net)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the same to the user
        raise FoldError(
            f"latency.fold_bn=true: torch.fx cannot trace {type(net).__name__} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); set latency.fold_bn=false"
        ) from None
    modules = dict(net.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        prev = node.args[0]
        if (
            isinstance(prev, fx.Node)
            and prev.op == "call_module"
            and isinstance(modules[prev.target], FOLDABLE)
            and len(prev.users) == 1
        ):
            pairs.append((prev.target, node.target))
    return pairs


@torch.no_grad()
def fold_bn(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (eval mode) with every :func:`foldable` BatchNorm folded into the layer
    before it and replaced by nn.Identity; module names stay, so the layers compare by name."""
    folded = copy.deepcopy(net).eval()
    for layer_name, bn_name in foldable(folded):
        layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
        if isinstance(layer, nn.Conv2d):
            folded.set_submodule(layer_name, fuse_conv_bn_eval(layer, bn))
        else:
            layer.fold_batchnorm(bn)
        folded.set_submodule(bn_name, nn.Identity())
    return folded
