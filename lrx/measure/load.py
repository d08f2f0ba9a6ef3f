"""Other work on the machine: how many cores it keeps busy, and waiting for it to stop.

Timings taken while other processes run are inflated unevenly: a low-rank layer's many small
passes each wait at a thread-pool barrier for a descheduled thread, so a busy neighbour costs
it more than the dense conv (docs/latency.md). lrx therefore samples the load around every
measurement that decides something and records it, and before such a measurement waits, up to
a cap, for the machine to become quiet (see :func:`wait_for_quiet`).

Busy cores are read from /proc/stat (the whole machine's CPU ticks) less this process's own CPU
time, so a measurement can sample the load while it runs. Without /proc/stat: None.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

QUIET = 0.5  # busy cores below this count as a quiet machine


def cores() -> int:
    return os.cpu_count() or 1


def _busy_ticks() -> tuple[float, float] | None:
    """(busy seconds of all cores, wall-clock seconds) now, or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]  # user nice system idle iowait irq ...
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, time.monotonic()


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Busy cores of OTHER processes between ``start()`` and ``busy()`` (mean over the interval)."""

    def start(self) -> Meter:
        self._busy, self._own = _busy_ticks(), _own_cpu_s()
        return self

    def busy(self) -> float | None:
        now = _busy_ticks()
        if self._busy is None or now is None:
            return None
        wall = max(now[1] - self._busy[1], 1e-6)
        others = (now[0] - self._busy[0]) - (_own_cpu_s() - self._own)
        return round(min(max(others / wall, 0.0), float(cores())), 2)


def busy_cores(seconds: float = 0.5) -> float | None:
    """Busy cores of other processes, sampled over ``seconds`` while this one sleeps."""
    meter = Meter().start()
    time.sleep(seconds)
    return meter.busy()


def wait_for_quiet(max_wait_s: float, what: str) -> dict:
    """Wait up to ``max_wait_s`` seconds (sampling each second) until other processes keep fewer
    than QUIET cores busy, before ``what`` is measured (``max_wait_s=0``: one short sample).
    Returns ``{"busy_cores": [samples], "waited_s", "quiet"}``; when the machine stays busy, logs
    a warning that says so (the measurement goes ahead and its record carries ``quiet: false``)."""
    start, samples = time.monotonic(), [busy_cores(0.5 if max_wait_s > 0 else 0.1)]
    busy = lambda: samples[-1] is not None and samples[-1] >= QUIET
    if busy() and max_wait_s > 0:
        log.info(
            "other work keeps %.1f of %d cores busy: waiting up to %.0f s for a quiet machine before timing %s",
            samples[-1],
            cores(),
            max_wait_s,
            what,
        )
        with tqdm(total=round(max_wait_s), desc=f"waiting for a quiet machine ({what})", unit="s", leave=False) as bar:
            while busy() and time.monotonic() - start < max_wait_s:
                samples.append(busy_cores(1.0))
                bar.update(1)
                bar.set_postfix(busy_cores=f"{samples[-1]:.1f}" if samples[-1] is not None else "?")
    quiet = not busy()
    waited = round(time.monotonic() - start, 1)
    if not quiet:
        log.warning(
            "timing %s while other work keeps %.1f of %d cores busy (waited %.0f s): the timings are "
            "inflated unevenly, so decisions taken on them can be wrong; time on a quiet machine",
            what,
            samples[-1],
            cores(),
            waited,
        )
    elif len(samples) > 1:
        log.info("waited %.0f s for a quiet machine before timing %s", waited, what)
    return {"busy_cores": samples, "waited_s": waited, "quiet": quiet}


@contextmanager
def timing_conditions(max_wait_s: float, neighbours: int, what: str):
    """The conditions a timing that decides or is reported runs in (``latency.quiet_wait_s``,
    ``latency.decide_at.busy``): wait up to ``max_wait_s`` for other work to stop, then, for a CPU
    the network will share, keep ``neighbours`` cores busy while inside. Yields the load record
    (:func:`wait_for_quiet`'s, plus ``neighbours``)."""
    load = wait_for_quiet(max_wait_s, what)
    with busy_neighbours(neighbours):
        yield {**load, "neighbours": neighbours}


@contextmanager
def busy_neighbours(count: int):
    """``count`` other processes that each keep one core busy (a spinning loop) while inside, to
    measure how timings behave next to other work; they are killed on exit."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.3 if count else 0)  # let them start spinning
        yield spinners
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def quiet_and_busy(measure_once, rounds: int, busy: int) -> dict[str, list]:
    """``rounds`` results of ``measure_once()`` on a quiet machine and, where ``busy`` > 0, as many
    next to ``busy`` neighbours (:func:`busy_neighbours`), the two taking turns so that a drift
    hits both: ``{"quiet": [...], "busy": [...]}`` (no ``busy`` where ``busy`` is 0)."""
    out = {"quiet": []} | ({"busy": []} if busy else {})
    for _ in range(rounds):
        out["quiet"].append(measure_once())
        if busy:
            with busy_neighbours(busy):
                out["busy"].append(measure_once())
    return out
