"""MACs and parameter counts with fvcore, on the model's real input size."""

from __future__ import annotations

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def count_macs(net: nn.Module, input_size: int) -> int:
    """fvcore's count for one ``(1, 3, input_size, input_size)`` image; fvcore counts a
    multiply-accumulate as one, so this is MACs."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    flops = FlopCountAnalysis(net, torch.zeros(1, 3, input_size, input_size, device=device))
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = int(flops.total())
    net.train(was_training)
    return total


def complexity(net: nn.Module, input_size: int) -> dict:
    return {"macs": count_macs(net, input_size), "params": count_params(net)}
