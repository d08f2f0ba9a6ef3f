"""Which thread count and wait policy serve a finished run's networks fastest on this CPU, quiet and
next to other work: every setting of ``lrx.runtime.serving`` (threads x wait policy, per runtime)
timed in its own fresh process (the settings are process-wide, some read at start-up), with the
baseline and final network side by side in each target, first on a quiet machine, then with
``--busy`` neighbour processes each keeping a core busy.

    python scripts/serving_table.py RUN_DIR [--targets torch-fp32 onnxruntime-fp32 openvino-int8] \\
        [--busy 1] [--data-root ../shared/data]

Both networks are BatchNorm-folded (what a deployment serves). The recommended setting per target
is the one whose final network is never far from the fastest: the least of max(quiet ms / fastest
quiet ms, busy ms / fastest busy ms) over the settings. Prints one table per target (ms of both
networks and the speed-up, quiet and busy) and writes ``RUN_DIR/serving.json`` (atomically). Run
it on a machine doing nothing else: the neighbours must be the only other work.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from lrx.compress.execution import tune
from lrx.compress.fold import fold_bn
from lrx.deploy.targets import Target, TargetError, deploy
from lrx.io import write_json
from lrx.measure.estimator import Estimator, measure
from lrx.measure.latency import machine
from lrx.measure.load import busy_neighbours, cores, wait_for_quiet
from lrx.results.saved import datamodule_of, load_models
from lrx.runtime.serving import Serving, choices

OUT = "serving.json"
DEFAULT_TARGETS = ("torch-fp32", "onnxruntime-fp32", "openvino-int8")


def _timing(t) -> dict:
    r = t.ratios["speedup"]
    return {"ms": t.ms, "speedup": r.median, "speedup_iqr": [r.q25, r.q75], "busy_cores": t.busy_cores}


def probe(run_dir: Path, target: Target, serving: Serving, busy: int, args) -> dict:
    """In this process (whose environment holds ``serving``'s variables): both networks deployed
    to ``target`` as ``serving`` says, timed side by side quiet, then next to ``busy`` neighbours."""
    baseline, final, results = load_models(run_dir)
    size = results["config"]["model"]["input_size"]
    x = torch.randn(args.batch_size, 3, size, size)
    estimator = Estimator(max_s=20.0)
    with torch.no_grad():
        tune(final, x, estimator, "channels_last")
    calibration = None
    if target.precision == "int8":
        calibration = datamodule_of(results, args.data_root).calibration_dataloader(args.calibration_images, seed=0)
    with tempfile.TemporaryDirectory(prefix="lrx-serving-") as work:
        calls = {
            side: deploy(
                fold_bn(net),
                target,
                x,
                serving.threads,
                Path(work),
                torch.channels_last,
                calibration,
                args.calibration_images,
                serving,
            ).timer(x)
            for side, net in {"baseline": baseline, "final": final}.items()
        }
    speedup = {"speedup": lambda r: r["baseline"] / r["final"]}
    load = wait_for_quiet(60, f"{target.name}, {serving.label}")
    out = {"load": load, "quiet": _timing(measure(calls, speedup, estimator, serving.threads))}
    with busy_neighbours(busy):
        out["busy"] = _timing(measure(calls, speedup, estimator, serving.threads))
    return out


def _in_own_process(run_dir: Path, target: Target, serving: Serving, args) -> dict:
    """:func:`probe` in a fresh process whose environment applies ``serving``."""
    job = {"run_dir": str(run_dir), "target": target.name, "serving": serving.as_dict()}
    argv = [sys.executable, __file__, "--worker", json.dumps(job), *_shared_args(args)]
    done = subprocess.run(argv, env={**os.environ, **serving.env()}, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{target.name}, {serving.label}: the timing process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shared_args(args) -> list[str]:
    out = ["--busy", str(args.busy), "--batch-size", str(args.batch_size)]
    out += ["--calibration-images", str(args.calibration_images)]
    return out + (["--data-root", args.data_root] if args.data_root else [])


def recommend(points: list[dict]) -> dict:
    """The point whose final network is never far from the fastest, quiet or busy."""
    best = {when: min(p[when]["ms"]["final"] for p in points) for when in ("quiet", "busy")}
    regret = lambda p: max(p[when]["ms"]["final"] / best[when] for when in best)  # noqa: E731
    chosen = min(points, key=regret)
    return {"serving": chosen["serving"], "regret": regret(chosen)}


def table(target: str, points: list[dict], chosen: dict) -> str:
    lines = [
        f"{target}:",
        "",
        "| setting | quiet: dense -> final ms | quiet speed-up | busy: dense -> final ms | busy speed-up "
        "| busy keeps | busy cores (quiet / busy) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        q, b = p["quiet"], p["busy"]
        mark = " **(recommended)**" if p["serving"] == chosen["serving"] else ""
        lines.append(
            f"| {Serving(**p['serving']).label}{mark} | {q['ms']['baseline']:.2f} -> {q['ms']['final']:.2f} "
            f"| {q['speedup']:.2f}x | {b['ms']['baseline']:.2f} -> {b['ms']['final']:.2f} | {b['speedup']:.2f}x "
            f"| {b['speedup'] / q['speedup']:.0%} | {q['busy_cores']} / {b['busy_cores']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    parser.add_argument("--busy", type=int, default=1, help="neighbour processes keeping a core busy (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--data-root", help="where the run's dataset is, if not where it read it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        out = probe(Path(job["run_dir"]), Target.of(job["target"]), Serving(**job["serving"]), args.busy, args)
        print(json.dumps(out))
        return 0
    if args.run_dir is None:
        parser.error("RUN_DIR is required")
    if not 0 <= args.busy < cores():
        parser.error(f"--busy {args.busy} is invalid; valid: 0 to {cores() - 1} (fewer than the {cores()} cores)")
    try:
        targets = [Target.of(t, "--targets") for t in args.targets]
        for t in targets:
            t.require("--targets")
    except TargetError as e:
        parser.error(str(e))
    out = {"date": datetime.date.today().isoformat(), "machine": machine(), "busy": args.busy, "targets": {}}
    out["batch_size"], out["bn_folded"] = args.batch_size, True
    for target in targets:
        settings = choices(target.runtime, cores())
        points = []
        for serving in tqdm(settings, desc=f"serving {target.name}"):
            points.append({"serving": serving.as_dict(), **_in_own_process(args.run_dir, target, serving, args)})
        chosen = recommend(points)
        out["targets"][target.name] = {"points": points, "recommended": chosen}
        print(table(target.name, points, chosen), "\n", flush=True)
    write_json(args.run_dir / OUT, out)
    print(f"written to {args.run_dir / OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
