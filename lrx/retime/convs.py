"""Every conv of a finished run, and the whole network, timed again in PyTorch: the baseline beside
the final network (:func:`lrx.measure.latency.compare`, every conv on its real input shape) in one
torch serving setting, quiet and next to busy neighbours, taking turns. :mod:`lrx.retime` runs it
in a fresh process per setting (torch reads its OpenMP variables at start-up).

    python -m lrx.retime.convs JOB_JSON   (the timing process itself)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.benchmark.utils.common import set_torch_threads

from lrx.compress.execution import tune
from lrx.compress.fold import fold_bn
from lrx.measure.estimator import Estimator
from lrx.measure.latency import compare, spread
from lrx.measure.load import quiet_and_busy, wait_for_quiet
from lrx.results.saved import load_models
from lrx.run.serving_choice import in_fresh_process
from lrx.runtime.serving import Serving, openmp_env

SIDES = ("baseline", "approx")


def summary(timings: list[dict]) -> dict:
    """Rounds of one condition: each speed-up's and time's median and range over the rounds, and
    every round's IQR, stability and load."""
    return {
        "setup": timings[0]["setup"],
        "conv_speedup": spread([t["conv_speedup"] for t in timings]),
        "model_speedup": spread([t["model_speedup"] for t in timings]),
        "conv_ms": {side: spread([t["conv_ms"][side] for t in timings]) for side in SIDES},
        "model_ms": {side: spread([t["model_ms"][side] for t in timings]) for side in SIDES},
        "conv_speedup_iqr": [t["conv_speedup_iqr"] for t in timings],
        "model_speedup_iqr": [t["model_speedup_iqr"] for t in timings],
        "unstable": [t["conv_unstable"] or t["model_unstable"] for t in timings],
        "busy_cores": [t["conv_timing"]["busy_cores"] for t in timings],
        "layers": {name: spread([t["layers"][name]["speedup"] for t in timings]) for name in timings[0]["layers"]},
    }


def time_convs(run_dir: Path, serving: Serving, args) -> dict:
    """In this process (whose environment holds ``serving``'s variables): the run's two networks
    (BatchNorm-folded where ``args.fold_bn``) compared ``args.rounds`` times quiet and next to
    ``args.busy`` neighbours, the final network's layer executions chosen here first (``args``:
    rounds, busy, batch_size, estimator, quiet_wait_s, fold_bn)."""
    baseline, final, results = load_models(run_dir)
    if args.fold_bn:
        baseline, final = fold_bn(baseline), fold_bn(final)
    lat, size = results["config"]["latency"], results["config"]["model"]["input_size"]
    estimator = Estimator.of(args.estimator)
    with set_torch_threads(serving.threads):
        executions = tune(final, torch.randn(args.batch_size, 3, size, size), estimator, lat["memory_format"])
    load = wait_for_quiet(args.quiet_wait_s, f"the convs, {serving.label}")

    def once() -> dict:
        return compare(
            baseline, final, size, args.batch_size, "cpu", estimator, lat["memory_format"], threads=serving.threads
        )

    rounds = quiet_and_busy(once, args.rounds, args.busy)
    return {
        "env": openmp_env(),
        "load": load,
        "executions": {name: e["strategy"] for name, e in executions.items()},
        **{when: summary(ts) for when, ts in rounds.items()},
    }


def in_own_process(run_dir: Path, serving: Serving, args) -> dict:
    """:func:`time_convs` in a fresh process whose environment applies ``serving``."""
    job = {"run_dir": str(Path(run_dir).resolve()), "serving": serving.as_dict(), **vars(args)}
    return in_fresh_process(__name__, job, serving.env(), f"the convs, {serving.label}")


def main(argv: list[str] | None = None) -> int:
    """The timing process: the convs in one setting, the result as JSON on the last line."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("job", help="JSON: run_dir, serving, and time_convs's args")
    job = json.loads(parser.parse_args(argv).job)
    run_dir, serving = Path(job.pop("run_dir")), Serving(**job.pop("serving"))
    print(json.dumps(time_convs(run_dir, serving, SimpleNamespace(**job))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
