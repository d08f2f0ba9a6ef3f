"""Finished runs deployed to each target and timed there, quiet and next to other work, in the
serving setting recommended for the run.

For each run directory (results.json and model.pt) and each target (default: the targets the run
deployed to), both networks are BatchNorm-folded, deployed and timed side by side in a fresh
process (:mod:`lrx.run.serving_choice`: the settings are process-wide, torch's read at start-up),
``--rounds`` times quiet and ``--rounds`` times next to ``--busy`` neighbour processes that each
keep a core busy, the two taking turns. The setting per target is the run's recommendation
(``serving.json``, from ``scripts/serving_table.py`` or ``deploy.serving=auto``), else the
runtime's own at the run's thread count; ``--threads`` and ``--wait torch=passive`` time another
to compare. Prints a markdown table (ms of both networks and the speed-up, quiet and busy, and
how much of the quiet speed-up survives the load) and writes ``RUN_DIR/runtimes.json``
(atomically):

    python scripts/runtime_table.py results/runs/cp_multiple16_ft2 --rounds 3 --data-root ../shared/data

Int8 targets calibrate on the run's training images (``--data-root`` if they are not where the run
read them). Run it on a machine doing nothing else: the neighbours must be the only other work.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from lrx.deploy.compare import available_targets
from lrx.deploy.targets import Target, TargetError, servable
from lrx.io import write_json
from lrx.measure.latency import decide_point, machine
from lrx.measure.load import cores
from lrx.results.files import RESULTS, recommended_serving
from lrx.run.serving_choice import in_own_process, load
from lrx.runtime.calibration import CALIBRATION_IMAGES
from lrx.runtime.serving import Serving


def setting(target: Target, recommended: dict, run_threads: int, threads: int | None, waits: dict) -> Serving:
    """The setting ``recommended`` for ``target`` (serving.json's, a Serving's fields; else the
    runtime's own at the run's thread count), with ``threads`` / ``waits[runtime]`` replacing its
    parts where given."""
    base = Serving(**recommended[target.name]) if target.name in recommended else None
    threads = threads or (base.threads if base else run_threads)
    wait = waits.get(target.runtime) or (base.wait if base else None)
    return Serving.of(target.runtime, threads, wait, key=f"--wait {target.runtime}")


def time_targets(run_dir: Path, targets: list[str] | None, args) -> dict:
    """Every target of the run in its setting, each in its own process (``args``: rounds, busy,
    batch_size, calibration_images, data_root, threads, waits)."""
    results = json.loads((run_dir / RESULTS).read_text())
    names = targets or list((results.get("deploy") or {}).get("targets") or {}) or None
    chosen = servable(names, "--targets") if names else available_targets()
    recommended, run_threads = recommended_serving(run_dir), decide_point(results["config"]["latency"])[1]
    settings = {t: setting(t, recommended, run_threads, args.threads, args.waits) for t in chosen}  # checked first
    out = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "rounds": args.rounds,
        "busy": args.busy,
        "batch_size": args.batch_size,
        "bn_folded": True,
        "acc1": results["final"]["acc1"],
        "baseline_acc1": results["baseline"]["acc1"],
        "targets": {},
    }
    for target, serving in tqdm(settings.items(), desc=f"runtimes of {run_dir.name}"):
        timed = in_own_process(run_dir, target, serving, args)
        out["targets"][target.name] = {"serving": serving.as_dict(), **timed}
    return out


def _ms(t: dict) -> str:
    return f"{t['ms']['baseline']:.2f} -> {t['ms']['final']:.2f}"


def _speedup(t: dict) -> str:
    r = t["speedup_rounds"]
    return f"{t['speedup']:.2f}x ({min(r):.2f}-{max(r):.2f})"


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| run | target | setting | quiet: dense -> final ms | quiet speed-up (range) | busy: dense -> final ms "
        "| busy speed-up (range) | busy keeps | busy cores (quiet / busy) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, out in rows.items():
        for target, t in out["targets"].items():
            q, b = t["quiet"], t["busy"]
            lines.append(
                f"| {name} | {target} | {Serving(**t['serving']).label} | {_ms(q)} | {_speedup(q)} | {_ms(b)} "
                f"| {_speedup(b)} | {b['speedup'] / q['speedup']:.0%} | {load(q)} / {load(b)} |"
            )
    return "\n".join(lines)


def _waits(items: list[str]) -> dict[str, str]:
    waits = dict(item.partition("=")[::2] for item in items)
    if any(not k or not v for k, v in waits.items()):
        raise ValueError(f"--wait {' '.join(items)} is invalid; valid: RUNTIME=WAIT, e.g. torch=passive")
    return waits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+", help="finished run directories (results.json and model.pt)")
    ap.add_argument("--targets", nargs="+", default=None, help="default: the targets each run deployed to")
    ap.add_argument("--rounds", type=int, default=3, help="timings per condition, quiet and busy (default 3)")
    ap.add_argument("--busy", type=int, default=1, help="neighbour processes keeping a core busy (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="default: the recommended setting's")
    ap.add_argument("--wait", nargs="+", default=[], metavar="RUNTIME=WAIT", help="e.g. torch=passive")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES)
    ap.add_argument("--data-root", help="where the runs' dataset is, if not where they read it")
    args = ap.parse_args(argv)
    n = cores()
    try:
        if args.rounds < 1 or not 0 <= args.busy < n or not 1 <= (args.threads or 1) <= n:
            raise ValueError(
                f"--rounds {args.rounds} --busy {args.busy} --threads {args.threads} is invalid; valid: rounds >= 1, "
                f"busy 0 to {n - 1}, threads 1 to {n} (this machine has {n} cores)"
            )
        args = SimpleNamespace(**vars(args), waits=_waits(args.wait))
        rows = {d.name: time_targets(d, args.targets, args) for d in args.run_dirs}
    except (TargetError, ValueError) as e:
        ap.error(str(e))
    for d in args.run_dirs:
        write_json(d / "runtimes.json", rows[d.name])
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
