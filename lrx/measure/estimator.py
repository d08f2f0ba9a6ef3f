"""The one estimator behind every timing in lrx: warm-up by time, paired interleaved rounds,
medians of per-round ratios with their spread, and a stopping rule.

Each side (a zero-argument call) is first warmed up for ``warmup_s`` seconds (oneDNN builds its
primitives on the first calls, so a fixed small count can leave a side cold). Then rounds: each
round times one block of calls of every side, in a fresh random order; a side's block lasts
about ``block_s`` and gives its per-call time for that round. A ratio, e.g. a speed-up
(baseline ms / approximation ms), is computed within each round, so a drift of clock or load
hits both of its sides; its estimate is the median of the per-round ratios, with the
interquartile range [q25, q75] as its spread. Rounds are added until every ratio's
(q75 - q25) / median < ``rel_iqr`` (the rule of torch.utils.benchmark's adaptive_autorange),
after at least ``min_rounds``, or until ``max_rounds`` or ``max_s`` seconds; a ratio still
wider is flagged ``unstable``.

The clock is torch.utils.benchmark's (it synchronises an accelerator before reading) and the
thread count is set by its ``set_torch_threads``. Its ``Timer`` itself times one statement at a
time, with a warm-up per block, so it cannot pair sides within a round.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch.utils.benchmark.utils.common import set_torch_threads
from torch.utils.benchmark.utils.timer import timer

from lrx.measure.load import Meter


@dataclass(frozen=True)
class Estimator:
    """How long and how often to time (config: ``latency.estimator``)."""

    warmup_s: float = 0.2  # seconds of warm-up calls per side, at least 2 calls
    block_s: float = 0.01  # seconds one side's block of calls lasts in a round, at least 1 call
    min_rounds: int = 10
    max_rounds: int = 50
    max_s: float = 10.0  # no more rounds after this many seconds (min_rounds are always run)
    rel_iqr: float = 0.1  # stop once every ratio's IQR / median is below this

    @classmethod
    def of(cls, node: Mapping | None) -> Estimator:
        return cls() if node is None else cls(**{f.name: node[f.name] for f in fields(cls) if f.name in node})

    def as_dict(self) -> dict:
        return asdict(self)


FIELDS = tuple(f.name for f in fields(Estimator))
DEFAULT_ESTIMATOR = Estimator()


@dataclass(frozen=True)
class Ratio:
    """The median of per-round ratios and its interquartile range."""

    median: float
    q25: float
    q75: float
    rel_iqr: float  # stopping threshold it was judged against

    @classmethod
    def of(cls, values: list[float], rel_iqr: float) -> Ratio:
        q25, q50, q75 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(q50, q25, q75, rel_iqr)

    @property
    def width(self) -> float:
        return (self.q75 - self.q25) / self.median if self.median else math.inf

    @property
    def unstable(self) -> bool:
        return self.width >= self.rel_iqr

    def record(self, prefix: str = "") -> dict:
        """``{prefix}speedup`` (the median), ``{prefix}speedup_iqr`` ([q25, q75]) and
        ``{prefix}unstable``, as results.json keeps a speed-up."""
        return {
            f"{prefix}speedup": self.median,
            f"{prefix}speedup_iqr": [self.q25, self.q75],
            f"{prefix}unstable": self.unstable,
        }


@dataclass(frozen=True)
class Timing:
    """What :func:`measure` returns: each side's median per-call milliseconds over the rounds, each
    ratio, and how it was measured."""

    ms: dict[str, float]
    ratios: dict[str, Ratio]
    rounds: int
    seconds: float
    threads: int
    busy_cores: float | None  # cores other processes kept busy meanwhile (lrx.measure.load)

    def record(self) -> dict:
        return {
            "rounds": self.rounds,
            "seconds": round(self.seconds, 3),
            "threads": self.threads,
            "busy_cores": self.busy_cores,
        }


def _block_s(call: Callable[[], object], number: int) -> float:
    """Seconds per call over ``number`` consecutive calls."""
    start = timer()
    for _ in range(number):
        call()
    return (timer() - start) / number


def _warm_up(call: Callable[[], object], seconds: float) -> float:
    """Call until ``seconds`` have passed (at least twice); the last call's seconds."""
    spent, n, last = 0.0, 0, 0.0
    while n < 2 or spent < seconds:
        last = _block_s(call, 1)
        spent, n = spent + last, n + 1
    return last


def measure(
    calls: Mapping[str, Callable[[], object]],
    ratios: Mapping[str, Callable[[dict[str, float]], float]] | None = None,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    threads: int | None = None,
) -> Timing:
    """Time every call in paired rounds (see the module docstring) at ``threads`` torch threads
    (default: the current count). ``ratios`` are functions of one round's ``{call: ms}``; with
    none, the stopping rule watches each call's own per-round times instead."""
    threads = threads or torch.get_num_threads()
    watched = ratios or {k: (lambda r, k=k: r[k]) for k in calls}
    order, shuffle = list(calls), random.Random(0).shuffle  # a local generator: the global seeds stay untouched
    meter, start = Meter().start(), time.perf_counter()
    rounds: list[dict[str, float]] = []
    with torch.inference_mode(), set_torch_threads(threads):
        per_call = {k: _warm_up(c, estimator.warmup_s) for k, c in calls.items()}
        number = {k: max(1, math.ceil(estimator.block_s / max(s, 1e-9))) for k, s in per_call.items()}
        while True:
            shuffle(order)
            rounds.append({k: _block_s(calls[k], number[k]) * 1e3 for k in order})
            n, spent = len(rounds), time.perf_counter() - start
            if n < 2:
                continue
            estimates = {k: Ratio.of([f(r) for r in rounds], estimator.rel_iqr) for k, f in watched.items()}
            settled = not any(e.unstable for e in estimates.values())
            if n >= estimator.max_rounds or (n >= estimator.min_rounds and (settled or spent > estimator.max_s)):
                break
    ms = {k: statistics.median(r[k] for r in rounds) for k in calls}
    return Timing(ms, estimates if ratios else {}, len(rounds), time.perf_counter() - start, threads, meter.busy())
