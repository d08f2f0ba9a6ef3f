"""MACs and parameter counts with fvcore, on the model's real input size."""

from __future__ import annotations

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from lrx.modes import eval_mode


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def count_macs(net: nn.Module, input_size: int) -> int:
    """fvcore's count for one ``(1, 3, input_size, input_size)`` image; fvcore counts a
    multiply-accumulate as one, so this is MACs."""
    device = next(net.parameters()).device
    with eval_mode(net):
        flops = FlopCountAnalysis(net, torch.zeros(1, 3, input_size, input_size, device=device))
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(flops.total())


def complexity(net: nn.Module, input_size: int) -> dict:
    return {"macs": count_macs(net, input_size), "params": count_params(net)}
