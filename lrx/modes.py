"""Round trips of modules' state: eval mode, and a memory format (and device), set for a block
and restored after it, whatever happens inside."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(*modules: nn.Module):
    """The modules in eval mode inside the block; every submodule back in its own mode after
    (a network may hold submodules in different modes)."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield [m.eval() for m in modules]
    finally:
        for m, training in flags:
            m.training = training


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextmanager
def memory_format(fmt: torch.memory_format, *modules: nn.Module, device: torch.device | str | None = None):
    """The modules' weights in ``fmt`` (and on ``device``, if given) inside the block; back on
    their own devices in the contiguous format after (the format lrx keeps networks in)."""
    homes = [_device_of(m) for m in modules]
    try:
        yield [m.to(device or home, memory_format=fmt) for m, home in zip(modules, homes)]
    finally:
        for m, home in zip(modules, homes):
            m.to(home, memory_format=torch.contiguous_format)
