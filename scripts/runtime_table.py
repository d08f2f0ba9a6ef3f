"""Finished runs timed in PyTorch eager and in ONNX Runtime side by side, at each batch size.

For each run directory (results.json and model.pt), loads the baseline and the final network
(``lrx.results.saved.load_models``), chooses the final network's layer executions on this machine
(``lrx.compress.execution.tune``), then times both networks ``--rounds`` times at each batch size
in both runtimes with the run's latency settings (``lrx.measure.latency.compare``: every conv on its real
input shape and the whole model, by the estimator of ``lrx.measure.estimator``; in ONNX Runtime every
conv and each network as its own graph, every graph optimisation, torch's thread count). In each
round the runtimes and batch sizes take turns, so a drift of load hits all of them alike; before
each round the busy cores (other work on the CPU) are sampled. Prints a markdown table of the medians and ranges, and
writes them to ``RUN_DIR/runtimes.json`` (atomically):

    python scripts/runtime_table.py results/runs/cp_headline results/runs/scheme2_3x --rounds 3

Needs the onnx extra (``pip install -e ".[onnx]"``). Run it on a machine doing nothing else.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from lrx.compress.execution import tune
from lrx.io import write_json
from lrx.measure.estimator import Estimator
from lrx.measure.latency import compare, machine, spread
from lrx.measure.load import busy_cores
from lrx.results.files import ORT
from lrx.results.saved import load_models
from lrx.runtime.onnxruntime import require_onnx

RUNTIMES = {"torch": "cpu", "onnxruntime": ORT}  # runtime -> its key in results.json


def side_by_side(run_dir: Path, rounds: int, batch_sizes: list[int] | None = None) -> dict:
    """``{"points": {"<runtime key>, batch <b>": {conv_speedup, model_speedup, ms}}, ...}``."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds!r} is invalid; valid: an integer >= 1")
    baseline, final, results = load_models(run_dir)
    cfg = results["config"]
    lat, size = cfg["latency"], cfg["model"]["input_size"]
    batch_sizes = batch_sizes or lat["batch_sizes"]
    estimator = Estimator.of(lat.get("estimator"))
    tune(final, torch.randn(max(batch_sizes), 3, size, size), estimator, lat["memory_format"])
    timings: dict[str, list[dict]] = {}
    busy = []
    for _ in tqdm(range(rounds), desc=f"torch and onnxruntime, {run_dir.name}"):
        busy.append(busy_cores())
        for bs in batch_sizes:
            for runtime, key in RUNTIMES.items():
                t = compare(baseline, final, size, bs, "cpu", estimator, lat["memory_format"], runtime)
                timings.setdefault(f"{key}, batch {bs}", []).append(t)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "busy_cores": busy,
        "acc1": results["final"]["acc1"],
        "baseline_acc1": results["baseline"]["acc1"],
        "macs_speedup": results["speedup"]["macs"],
        "points": {
            point: {
                "setup": ts[0]["setup"],
                "conv_speedup": spread([t["conv_speedup"] for t in ts]),
                "model_speedup": spread([t["model_speedup"] for t in ts]),
                "model_ms": {side: spread([t["model_ms"][side] for t in ts]) for side in ("baseline", "approx")},
                "layers": {name: spread([t["layers"][name]["speedup"] for t in ts]) for name in ts[0]["layers"]},
            }
            for point, ts in timings.items()
        },
    }


def _cell(s: dict) -> str:
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| run | acc@1 (baseline) | MACs | runtime, batch | conv speed-up | model speed-up "
        "| model ms, baseline -> final |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, out in rows.items():
        for point, p in out["points"].items():
            lines.append(
                f"| {name} | {out['acc1']:.2f} ({out['baseline_acc1']:.2f}) | {out['macs_speedup']:.2f}x | {point} "
                f"| {_cell(p['conv_speedup'])} | {_cell(p['model_speedup'])} "
                f"| {p['model_ms']['baseline']['median']:.2f} -> {p['model_ms']['approx']['median']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+", help="finished run directories (results.json and model.pt)")
    ap.add_argument("--rounds", type=int, default=3, help="independent timings of each point (default 3)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: the run's latency.batch_sizes")
    args = ap.parse_args(argv)
    try:
        require_onnx("scripts/runtime_table.py")
        rows = {d.name: side_by_side(d, args.rounds, args.batch_sizes) for d in args.run_dirs}
    except (ValueError, ImportError) as e:
        sys.exit(f"runtime_table: error: {e}")
    for d in args.run_dirs:
        write_json(d / "runtimes.json", rows[d.name])
    print(table(rows))
    busy = [b for out in rows.values() for b in out["busy_cores"]]
    print(f"\nbusy cores before each round: {min(busy):.2f}-{max(busy):.2f}; threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
