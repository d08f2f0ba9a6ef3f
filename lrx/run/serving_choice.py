"""Which thread count and wait policy serve a finished run's networks fastest on this CPU, quiet and
next to other work (``deploy.serving=auto``, ``python -m lrx.retime``): a setting of
:mod:`lrx.runtime.serving` timed in its own fresh process (the settings are process-wide, some read
at start-up), the baseline and final network BatchNorm-folded and side by side in a target by
the run's ``latency.estimator``, quiet and then with ``busy`` neighbour processes each keeping a
core busy (``rounds`` times each, taking turns). The recommended setting per target
(:func:`recommend`) is, among those under which the final network keeps its advantage next to the
neighbours, the one whose final network is never far from the fastest. ``serving.json`` beside the
run keeps every point and the recommendation.

    python -m lrx.run.serving_choice JOB_JSON   (the timing process itself)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm import tqdm

from lrx.compress.execution import tune
from lrx.compress.fold import fold_bn
from lrx.deploy.targets import Target, deploy
from lrx.io import write_json
from lrx.measure.estimator import Estimator, measure
from lrx.measure.latency import machine
from lrx.measure.load import cores, quiet_and_busy, wait_for_quiet
from lrx.results.files import SERVING
from lrx.results.saved import datamodule_of, load_models, opset_of
from lrx.runtime.calibration import CALIBRATION_IMAGES
from lrx.runtime.serving import OPENMP_VARIABLES, Serving, choices, openmp_env


def _timing(rounds: list) -> dict:
    """Rounds of one condition (quiet or busy): each side's median ms and the median speed-up over
    the rounds, with every round's speed-up, IQR and load."""
    speedups = [t.ratios["speedup"] for t in rounds]
    return {
        "ms": {side: statistics.median(t.ms[side] for t in rounds) for side in rounds[0].ms},
        "speedup": statistics.median(r.median for r in speedups),
        "speedup_rounds": [r.median for r in speedups],
        "speedup_iqr": [[r.q25, r.q75] for r in speedups],
        "busy_cores": [t.busy_cores for t in rounds],
    }


def probe(run_dir: Path, target: Target, serving: Serving, args) -> dict:
    """In this process (whose environment holds ``serving``'s variables): both networks deployed
    to ``target`` as ``serving`` says, timed side by side ``args.rounds`` times quiet and next to
    ``args.busy`` neighbours, the two taking turns (``args``: rounds, busy, batch_size,
    calibration_images, data_root, and ``estimator`` and ``quiet_wait_s``, None for the run's)."""
    baseline, final, results = load_models(run_dir)
    lat, size = results["config"]["latency"], results["config"]["model"]["input_size"]
    x = torch.randn(args.batch_size, 3, size, size)
    estimator = Estimator.of(args.estimator or lat.get("estimator"))
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
                opset_of(results),
            ).timer(x)
            for side, net in {"baseline": baseline, "final": final}.items()
        }
    speedup = {"speedup": lambda r: r["baseline"] / r["final"]}
    quiet_wait_s = lat.get("quiet_wait_s", 60.0) if args.quiet_wait_s is None else args.quiet_wait_s
    load = wait_for_quiet(quiet_wait_s, f"{target.name}, {serving.label}")
    rounds = quiet_and_busy(lambda: measure(calls, speedup, estimator, serving.threads), args.rounds, args.busy)
    return {"env": openmp_env(), "load": load, **{when: _timing(ts) for when, ts in rounds.items()}}


def in_fresh_process(module: str, job: dict, env: dict[str, str], what: str) -> dict:
    """``python -m module JOB_JSON`` in a fresh process whose OpenMP variables are ``env``'s and no
    others (torch reads them at start-up); the JSON it prints last. A RuntimeError naming ``what``
    where it fails."""
    inherited = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
    argv = [sys.executable, "-m", module, json.dumps(job)]
    done = subprocess.run(argv, env={**inherited, **env}, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{what}: the timing process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_own_process(run_dir: Path, target: Target, serving: Serving, args) -> dict:
    """:func:`probe` in a fresh process whose environment applies ``serving``."""
    job = {"run_dir": str(Path(run_dir).resolve()), "target": target.name, "serving": serving.as_dict(), **vars(args)}
    return in_fresh_process(__name__, job, serving.env(), f"{target.name}, {serving.label}")


KEEPS = 0.8  # a robust setting: next to the neighbours, the final network keeps this share of its quiet speed-up


def robust(point: dict) -> bool:
    """Next to the neighbours, the final network stays faster than the dense one and keeps at least
    KEEPS of its quiet speed-up; any point timed quiet only."""
    if "busy" not in point:
        return True
    quiet, busy = point["quiet"]["speedup"], point["busy"]["speedup"]
    return busy > 1 and busy >= KEEPS * quiet


def recommend(points: list[dict]) -> dict:
    """Among the robust points (all of them where none is), the one whose final network is never
    far from the fastest, quiet or busy: the least of max(quiet ms / fastest quiet ms, busy ms /
    fastest busy ms; quiet only where the points were timed quiet only)."""
    best = {when: min(p[when]["ms"]["final"] for p in points) for when in ("quiet", "busy") if when in points[0]}
    regret = lambda p: max(p[when]["ms"]["final"] / best[when] for when in best)  # noqa: E731
    kept = [p for p in points if robust(p)]
    chosen = min(kept or points, key=regret)
    return {"serving": chosen["serving"], "regret": regret(chosen), "robust": bool(kept)}


def choose(
    run_dir: Path,
    targets: list[Target],
    busy: int = 1,
    batch_size: int = 32,
    calibration_images: int = CALIBRATION_IMAGES,
    data_root: str | None = None,
    rounds: int = 1,
) -> dict:
    """Every setting of every target timed in its own process, the recommendation per target;
    written to ``run_dir/serving.json`` (atomically) and returned."""
    if not 0 <= busy < cores():
        raise ValueError(f"busy={busy!r} is invalid; valid: 0 to {cores() - 1} (fewer than the {cores()} cores)")
    if rounds < 1:
        raise ValueError(f"rounds={rounds!r} is invalid; valid: an integer >= 1")
    args = SimpleNamespace(
        busy=busy,
        batch_size=batch_size,
        calibration_images=calibration_images,
        data_root=data_root,
        rounds=rounds,
        estimator=None,
        quiet_wait_s=None,
    )
    out = {"date": datetime.date.today().isoformat(), "machine": machine(), "busy": busy, "targets": {}}
    out["batch_size"], out["bn_folded"] = batch_size, True
    for target in targets:
        points = [
            {"serving": s.as_dict(), **in_own_process(Path(run_dir), target, s, args)}
            for s in tqdm(choices(target.runtime, cores()), desc=f"serving {target.name}")
        ]
        out["targets"][target.name] = {"points": points, "recommended": recommend(points)}
    write_json(Path(run_dir) / SERVING, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """The timing process: one target in one setting, its result as JSON on the last line."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("job", help="JSON: run_dir, target, serving, and probe's args")
    job = json.loads(parser.parse_args(argv).job)
    run_dir, target, serving = Path(job.pop("run_dir")), Target.of(job.pop("target")), Serving(**job.pop("serving"))
    print(json.dumps(probe(run_dir, target, serving, SimpleNamespace(**job))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
