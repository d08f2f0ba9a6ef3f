"""Re-measure a finished run's speed-ups, several times, to see how far one timing can be trusted.

Loads the run's baseline and final network (``lrx.pipeline.load_models``), chooses the final
network's layer executions on this machine (``lrx.lowrank.execution.tune``, as a run does), and
times them side by side ``--rounds`` times with the run's own latency settings
(``lrx.latency.compare``: every conv on its real input shape and the whole model, interleaved,
medians of ``latency.repeats`` runs). Prints each round's conv and model speed-up and their
median and range, and writes them to ``RUN_DIR/retime.json`` (atomically; the run's
``results.json`` is left as it was):

    python scripts/retime.py outputs/exp/<run> --rounds 5

Run it on a machine doing nothing else: another process on the CPU inflates timings unevenly.
The whole-model time also depends on the memory allocator: in a fresh process glibc returns the
activations' memory to the OS after each forward pass, which adds the same few milliseconds to
both networks and lowers the model speed-up (docs/RESULTS.md measured 1.78x here against 2.00x in
the run and 2.24x with ``MALLOC_TRIM_THRESHOLD_=4000000000 MALLOC_MMAP_THRESHOLD_=4000000000``);
the per-conv timings, and so the conv speed-up, hardly move.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from lrx.io import write_json
from lrx.latency import compare, spread
from lrx.lowrank.execution import tune
from lrx.pipeline import load_models
from lrx.report import RETIMED


def retime(run_dir: Path, rounds: int, batch_size: int | None = None) -> dict:
    """``rounds`` independent side-by-side timings of the run's baseline and final network."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds!r} is invalid; valid: an integer >= 1")
    baseline, final, results = load_models(run_dir)
    cfg = results["config"]
    lat, size = cfg["latency"], cfg["model"]["input_size"]
    batch_size = batch_size or max(lat["batch_sizes"])
    x = torch.randn(batch_size, 3, size, size)
    executions = tune(final, x, lat["warmup"], lat["repeats"], lat["memory_format"])
    timings = [
        compare(baseline, final, size, batch_size, "cpu", lat["warmup"], lat["repeats"], lat["memory_format"])
        for _ in tqdm(range(rounds), desc=f"retime {run_dir.name}")
    ]
    return {
        "date": datetime.date.today().isoformat(),
        "setup": timings[0]["setup"],
        "recorded": {"conv": results["speedup"]["conv"]["cpu"], "model": results["speedup"]["model"]["cpu"]},
        "conv_speedup": spread([t["conv_speedup"] for t in timings]),
        "model_speedup": spread([t["model_speedup"] for t in timings]),
        "layers": {name: spread([t["layers"][name]["speedup"] for t in timings]) for name in timings[0]["layers"]},
        "executions": {name: e["strategy"] for name, e in executions.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a finished run directory (holds results.json and model.pt)")
    ap.add_argument("--rounds", type=int, default=5, help="independent timings (default 5)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the run's largest latency batch size")
    args = ap.parse_args(argv)
    try:
        out = retime(args.run_dir, args.rounds, args.batch_size)
    except ValueError as e:
        sys.exit(f"retime: error: {e}")
    write_json(args.run_dir / RETIMED, out)
    for key in ("conv_speedup", "model_speedup"):
        s = out[key]
        rounds = ", ".join(f"{v:.2f}" for v in s["rounds"])
        print(
            f"{key}: median {s['median']:.2f}x, range {s['min']:.2f}-{s['max']:.2f}x ({rounds}); "
            f"recorded in the run {out['recorded'][key.split('_')[0]]:.2f}x"
        )
    print(f"written to {args.run_dir / RETIMED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
