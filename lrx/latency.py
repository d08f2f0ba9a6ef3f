"""Measured forward latency: eval mode, inference mode, warm-up, median of repeated runs."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def median_ms(net: nn.Module, x: torch.Tensor, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time in milliseconds of ``net(x)``, synchronised on CUDA."""
    was_training = net.training
    net.eval()
    for _ in range(warmup):
        net(x)
    times = []
    for _ in range(repeats):
        _sync(x.device)
        start = time.perf_counter()
        net(x)
        _sync(x.device)
        times.append((time.perf_counter() - start) * 1e3)
    net.train(was_training)
    return statistics.median(times)


def devices() -> list[torch.device]:
    """Devices to time on: the CPU, and the current CUDA device when there is one."""
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def model_latency(net: nn.Module, input_size: int, batch_size: int = 32, warmup: int = 3, repeats: int = 10) -> dict:
    """``{device: median ms}`` for one batch of ``(batch_size, 3, input_size, input_size)``."""
    home = next(net.parameters()).device
    out = {}
    for device in devices():
        net.to(device)
        x = torch.randn(batch_size, 3, input_size, input_size, device=device)
        out[device.type] = median_ms(net, x, warmup, repeats)
    net.to(home)
    return out
