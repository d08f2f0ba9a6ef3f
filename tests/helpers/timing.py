"""Timing in tests: a quick estimator for tests that time something only to check what is recorded,
and a fake clock on which what is timed takes a known time."""

from collections.abc import Callable
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

from lrx.measure import estimator
from lrx.measure.estimator import Estimator

QUICK = Estimator(warmup_s=0.0, block_s=0.0005, min_rounds=2, max_rounds=3, max_s=1.0)
QUICK_OVERRIDES = [  # the same as Hydra overrides, and no waiting for a quiet machine
    "latency.estimator.warmup_s=0",
    "latency.estimator.block_s=0.0005",
    "latency.estimator.min_rounds=2",
    "latency.estimator.max_rounds=3",
    "latency.quiet_wait_s=0",
    "deploy.targets=[torch-fp32]",  # the deploy stage, without exporting and quantizing for every target
]


def size(module: nn.Module) -> int:
    """The parameter count of ``module`` and its children: its time on the parameter clock."""
    return sum(p.numel() for p in module.parameters())


class ParamClock:
    """The estimator's clock, on which each module called takes as many seconds as it has parameters
    of its own, times ``speed(now)`` (1: a machine whose speed never changes). So a network takes
    its parameter count: every timing is exact whatever the machine, and is the same on every run.
    Anything else takes no time: time only modules on it (a call that runs none would never end a
    block of ``block_s`` seconds)."""

    def __init__(self):
        self.now = 0.0
        self.speed: Callable[[float], int] = lambda now: 1
        self.speeds: set[int] = set()  # the speeds it ran at

    def timer(self) -> float:
        return self.now

    def tick(self, module: nn.Module, args) -> None:
        if torch.jit.is_tracing():  # counting MACs (fvcore traces the network), not a timed call
            return
        speed = self.speed(self.now)
        self.speeds.add(speed)
        self.now += speed * sum(p.numel() for p in module.parameters(recurse=False))


@contextmanager
def param_clock(monkeypatch: pytest.MonkeyPatch):
    """Inside, every module's forward advances a :class:`ParamClock`, which the estimator reads."""
    clock = ParamClock()
    monkeypatch.setattr(estimator, "timer", clock.timer)
    hook = register_module_forward_pre_hook(clock.tick)
    try:
        yield clock
    finally:
        hook.remove()


# Rounds of one call a side (the blocks last a parameter count of seconds), stopping as soon as settled.
ON_PARAM_CLOCK = Estimator(warmup_s=0.0, block_s=1e-9, min_rounds=4, max_rounds=50, max_s=1e9)
