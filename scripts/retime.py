"""Re-measure a finished run's speed-ups, several times, quiet and next to other work, at several
thread counts, to see how far one timing can be trusted.

Loads the run's baseline and final network (``lrx.results.saved.load_models``), chooses the final
network's layer executions on this machine (``lrx.compress.execution.tune``, as a run does), and
times them side by side ``--rounds`` times at each point (thread count x number of busy
neighbours) with the run's batch size and memory format (``lrx.measure.latency.compare``: every conv on
its real input shape and the whole model, by the estimator of ``lrx.measure.estimator``, whose settings
are the run's ``latency.estimator`` where it has one). ``--busy 1`` starts one process that keeps
a core busy while that point is timed (default: quiet, then one busy neighbour). It times in the
OpenMP environment and at the thread count ``scripts/serving_table.py`` recommended for the run
(``serving.json``), if any; ``--env OMP_WAIT_POLICY=PASSIVE`` times in another, in a fresh
process (the variables are read at start-up), and ``retime.json`` records it. Prints a table of the
conv and model speed-ups (median and range of the rounds' medians, and the widest IQR within a
round) and writes everything to
``RUN_DIR/retime.json`` (atomically; the run's ``results.json`` is left as it was).
``--fold-bn`` first folds every BatchNorm of BOTH networks into the layer before it
(``lrx.compress.fold``, what a deployment runs) and writes ``retime_bn_folded.json`` instead:

    python scripts/retime.py outputs/exp/<run> --rounds 5 --threads 1 2 --busy 0 1

Its top-level ``conv_speedup`` / ``model_speedup`` (what the report shows) are the quiet point at
torch's default thread count where there is one, else the first quiet point's. Run it on a
machine doing nothing else: the busy neighbours must be the only other work.
The whole-model time also depends on the memory allocator: in a fresh process glibc returns the
activations' memory to the OS after each forward pass, which adds the same few milliseconds to
both networks and lowers the model speed-up (docs/LOG.md); the per-conv timings, and so the
conv speed-up, hardly move.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch
from torch.utils.benchmark.utils.common import set_torch_threads
from tqdm import tqdm

from lrx.compress.execution import tune
from lrx.compress.fold import fold_bn
from lrx.io import write_json
from lrx.measure.estimator import Estimator
from lrx.measure.latency import compare, default_threads, machine, spread
from lrx.measure.load import busy_cores, busy_neighbours, cores
from lrx.results.files import RETIMED, recommended_serving
from lrx.results.saved import load_models
from lrx.runtime.serving import openmp_env

FOLDED_RETIMED = "retime_bn_folded.json"


def _label(threads: int, busy: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}, " + (f"{busy} core(s) kept busy" if busy else "quiet")


def _summary(timings: list[dict], busy_before: list) -> dict:
    """Each speed-up's spread over the rounds (their medians), and each round's IQR and load."""
    return {
        "setup": timings[0]["setup"],
        "conv_speedup": spread([t["conv_speedup"] for t in timings]),
        "model_speedup": spread([t["model_speedup"] for t in timings]),
        "conv_ms": {side: spread([t["conv_ms"][side] for t in timings]) for side in ("baseline", "approx")},
        "model_ms": {side: spread([t["model_ms"][side] for t in timings]) for side in ("baseline", "approx")},
        "conv_speedup_iqr": [t["conv_speedup_iqr"] for t in timings],
        "model_speedup_iqr": [t["model_speedup_iqr"] for t in timings],
        "unstable": [t["conv_unstable"] or t["model_unstable"] for t in timings],
        "busy_cores_before": busy_before,
        "busy_cores_while": [t["conv_timing"]["busy_cores"] for t in timings],
        "layers": {name: spread([t["layers"][name]["speedup"] for t in timings]) for name in timings[0]["layers"]},
    }


def retime(
    run_dir: Path,
    rounds: int,
    batch_size: int | None = None,
    threads: list[int] | None = None,
    busy=(0,),
    fold: bool = False,
) -> dict:
    """``rounds`` independent side-by-side timings of the run's baseline and final network at each
    thread count x busy neighbours, both networks BatchNorm-folded where ``fold``."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds!r} is invalid; valid: an integer >= 1")
    n = cores()
    if any(not 0 <= b < n for b in busy) or any(not 1 <= t <= n for t in threads or [1]):
        raise ValueError(
            f"threads={threads} and busy={list(busy)} are invalid; valid: threads 1 to {n}, busy 0 to {n - 1} "
            f"(this machine has {n} cores)"
        )
    baseline, final, results = load_models(run_dir)
    if fold:
        baseline, final = fold_bn(baseline), fold_bn(final)
    cfg = results["config"]
    lat, size = cfg["latency"], cfg["model"]["input_size"]
    estimator = Estimator.of(lat.get("estimator"))
    batch_size = batch_size or max(lat["batch_sizes"])
    threads = threads or [default_threads()]
    with set_torch_threads(threads[-1]):
        executions = tune(final, torch.randn(batch_size, 3, size, size), estimator, lat["memory_format"])
    out_points = {}
    for b in busy:
        for t in threads:
            label = _label(t, b)
            with busy_neighbours(b):
                before, timings = [], []
                for _ in tqdm(range(rounds), desc=f"retime {run_dir.name}, {label}"):
                    before.append(busy_cores())
                    timings.append(
                        compare(baseline, final, size, batch_size, "cpu", estimator, lat["memory_format"], threads=t)
                    )
            out_points[label] = _summary(timings, before)
    quiet = [_label(t, 0) for t in (default_threads(), *threads) if _label(t, 0) in out_points]
    headline = out_points[quiet[0]] if quiet else next(iter(out_points.values()))
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "batch_size": batch_size,
        "bn_folded": fold,
        "estimator": estimator.as_dict(),
        "recorded": {"conv": results["speedup"]["conv"]["cpu"], "model": results["speedup"]["model"]["cpu"]},
        "conv_speedup": headline["conv_speedup"],
        "model_speedup": headline["model_speedup"],
        "points": out_points,
        "executions": {name: e["strategy"] for name, e in executions.items()},
    }


def _cell(s: dict) -> str:
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def table(out: dict) -> str:
    """The points as a markdown table."""
    lines = [
        "| point | conv speed-up, median (range) | widest conv IQR | model speed-up | widest model IQR "
        "| conv ms, baseline -> final | busy cores while timing |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, p in out["points"].items():
        conv_iqr = max(p["conv_speedup_iqr"], key=lambda q: q[1] - q[0])
        model_iqr = max(p["model_speedup_iqr"], key=lambda q: q[1] - q[0])
        busy = [b for b in p["busy_cores_while"] if b is not None]
        load = f"{min(busy):.2f}-{max(busy):.2f}" if busy else "not measured"
        lines.append(
            f"| {label} | {_cell(p['conv_speedup'])} | {conv_iqr[0]:.2f}-{conv_iqr[1]:.2f} "
            f"| {_cell(p['model_speedup'])} | {model_iqr[0]:.2f}-{model_iqr[1]:.2f} "
            f"| {p['conv_ms']['baseline']['median']:.2f} -> {p['conv_ms']['approx']['median']:.2f} | {load} |"
        )
    return "\n".join(lines)


def recommended_torch(run_dir: Path) -> dict:
    """The torch-fp32 setting scripts/serving_table.py recommended for the run (its ``serving.json``,
    a Serving's fields), {} without one."""
    return recommended_serving(run_dir).get("torch-fp32", {})


def wanted_env(run_dir: Path, overrides: list[str]) -> dict[str, str]:
    """The OpenMP environment to time in: the recommended torch setting's, then ``--env KEY=VALUE``
    overrides."""
    env: dict[str, str] = dict(recommended_torch(run_dir).get("settings", {}))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r} is invalid; valid: KEY=VALUE, e.g. OMP_WAIT_POLICY=PASSIVE")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a finished run directory (holds results.json and model.pt)")
    ap.add_argument("--rounds", type=int, default=5, help="independent timings per point (default 5)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the run's largest latency batch size")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="default: the recommended, else torch's")
    ap.add_argument(
        "--busy", type=int, nargs="+", default=[0, 1], help="busy neighbour processes per point (default: 0, then 1)"
    )
    ap.add_argument(
        "--env",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="environment to time in, e.g. OMP_WAIT_POLICY=PASSIVE (default: the run's serving.json recommendation)",
    )
    ap.add_argument("--fold-bn", action="store_true", help="fold the BatchNorms of both networks first")
    args = ap.parse_args(argv)
    try:
        env = wanted_env(args.run_dir, args.env)
    except ValueError as e:
        sys.exit(f"retime: error: {e}")
    if any(os.environ.get(k) != v for k, v in env.items()):  # read at start-up: time in a fresh process
        if argv is not None:
            sys.exit(f"retime: error: start the process with {env} in its environment")
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**os.environ, **env})
    recommended = recommended_torch(args.run_dir)
    threads = args.threads or ([recommended["threads"]] if recommended else None)
    try:
        out = retime(args.run_dir, args.rounds, args.batch_size, threads, args.busy, args.fold_bn)
    except ValueError as e:
        sys.exit(f"retime: error: {e}")
    out["env"] = openmp_env()
    path = args.run_dir / (FOLDED_RETIMED if args.fold_bn else RETIMED)
    write_json(path, out)
    folded = ", BatchNorm folded in both networks" if out["bn_folded"] else ""
    env = " ".join(f"{k}={v}" for k, v in out["env"].items()) or "OpenMP's defaults"
    print(f"{args.run_dir}: {out['machine']}, batch {out['batch_size']}{folded}, {out['date']}, {env}")
    print(table(out))
    print(f"recorded in the run: conv {out['recorded']['conv']:.2f}x, model {out['recorded']['model']:.2f}x")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
