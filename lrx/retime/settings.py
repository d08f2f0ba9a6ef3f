"""The serving settings (:mod:`lrx.runtime.serving`) a target is re-timed in: every thread count x
wait policy asked for; where none is asked for, the setting recommended for the run
(:func:`lrx.results.files.recommended_serving`), else the runtime's own wait at the run's thread
count."""

from __future__ import annotations

from lrx.measure.load import cores
from lrx.runtime.serving import DEFAULT_WAIT, WAITS, Serving

ALL = "all"


def thread_counts(values: list[str] | None) -> list[int] | None:
    """``--threads``: the counts named, every count up to the cores for ``all``, None where none is
    named; a ValueError naming the flag, the bad value and the valid ones."""
    if not values:
        return None
    if values == [ALL]:
        return list(range(1, cores() + 1))
    for v in values:
        if not v.isdigit() or not 1 <= int(v) <= cores():
            raise ValueError(f"--threads {v} is invalid; valid: 1 to {cores()} (this machine's cores), or {ALL}")
    return [int(v) for v in values]


def wait_policies(values: list[str]) -> dict[str, list[str]]:
    """``--wait``: ``{runtime: [wait, ...]}`` from ``RUNTIME=WAIT`` items, every wait of every
    runtime for ``all``; a ValueError naming the flag, the bad value and the valid ones."""
    if values == [ALL]:
        return {runtime: list(waits) for runtime, waits in WAITS.items()}
    out: dict[str, list[str]] = {}
    for item in values:
        runtime, sep, wait = item.partition("=")
        if not sep:
            valid = ", ".join(f"{r}={w}" for r, waits in WAITS.items() for w in waits)
            raise ValueError(f"--wait {item} is invalid; valid: RUNTIME=WAIT ({valid}), or {ALL}")
        Serving.of(runtime, 1, wait, key=f"--wait {item}")
        out.setdefault(runtime, []).append(wait)
    return out


def settings(
    runtime: str, recommended: dict | None, run_threads: int, threads: list[int] | None, waits: dict[str, list[str]]
) -> list[Serving]:
    """Every ``threads`` x ``waits[runtime]`` setting of ``runtime``; where either is not given,
    ``recommended``'s (a Serving's fields), else ``run_threads`` and the runtime's own wait."""
    base = Serving(**recommended) if recommended else None
    counts = threads or [base.threads if base else run_threads]
    policies = waits.get(runtime) or [base.wait if base else DEFAULT_WAIT[runtime]]
    return [Serving.of(runtime, t, w) for t in counts for w in policies]
