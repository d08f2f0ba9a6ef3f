"""Deploy finished runs' baseline and final network to every target, and compare them: each graph
checked against torch, its acc@1 measured on the validation split where it runs, each target's two
graphs timed in paired rounds of their own, and the speed-up against the best dense deployment
(lrx.deploy.compare).

    python scripts/deploy_table.py RUN_DIR [RUN_DIR ...] [--targets T ...] [--threads N] [--batch-size B]

Both networks are BatchNorm-folded first (what a deployment serves; fair to both). int8 calibrates
on ``--calibration-images`` training images (never validation or test). Writes
``RUN_DIR/deploy_targets.json`` (atomically) and prints one markdown table per run. Run it on a
machine doing nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lrx.compress.execution import tune
from lrx.deploy.compare import compare_deployments
from lrx.deploy.targets import TARGETS, Target, TargetError, servable
from lrx.io import write_json
from lrx.measure.estimator import Estimator
from lrx.results.saved import datamodule_of, load_models
from lrx.runtime.calibration import CALIBRATION_IMAGES

OUT = "deploy_targets.json"


def deploy_run(run_dir: Path, targets: list[Target], args) -> dict:
    baseline, final, results = load_models(run_dir)
    dm = datamodule_of(results, args.data_root)
    size = results["config"]["model"]["input_size"]
    x = torch.randn(args.batch_size, 3, size, size)
    with torch.no_grad():
        tune(final, x, Estimator.of(results["config"]["latency"].get("estimator")), "channels_last")
    return compare_deployments(
        {"baseline": baseline, "final": final},
        targets,
        x,
        next(iter(dm.val_dataloader()))[0][:16],
        dm.val_dataloader(),
        results["baseline"]["acc1"],
        args.threads,
        Estimator(max_s=60.0),
        calibration=dm.calibration_dataloader(args.calibration_images, seed=0),
        calibration_images=args.calibration_images,
    )


def markdown(run_dir: Path, out: dict) -> str:
    lines = [
        f"{run_dir} ({out['machine']}, {out['date']}, batch {out['batch_size']}, {out['threads']} threads, "
        f"BN folded, busy cores while timing {out['busy_cores']})",
        "",
        "| target | dense ms | dense acc@1 | final ms | final acc@1 | speed-up (IQR) |",
        "|---|---|---|---|---|---|",
    ]
    for t, row in out["targets"].items():
        b, f = row["baseline"], row["final"]
        iqr = "-".join(f"{v:.2f}" for v in row["speedup_iqr"])
        cells = [t, f"{b['ms']:.2f}", f"{b['acc1']:.2f}", f"{f['ms']:.2f}", f"{f['acc1']:.2f}"]
        lines.append(f"| {' | '.join(cells)} | {row['speedup']:.2f}x ({iqr}) |")
    best = out["best"]
    if best:
        iqr = "-".join(f"{v:.2f}" for v in best["speedup_iqr"])
        lines.append(
            f"\nbest dense: {best['dense']} {best['dense_ms']:.2f} ms ({best['dense_acc1']:.2f}%); best final: "
            f"{best['final']} {best['final_ms']:.2f} ms ({best['final_acc1']:.2f}%): **{best['speedup']:.2f}x** ({iqr})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), help=f"of {', '.join(TARGETS)}")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES)
    parser.add_argument("--data-root", help="where the runs' dataset is, if not where they read it")
    args = parser.parse_args(argv)
    try:
        targets = servable(args.targets, "--targets")
    except TargetError as e:
        print(f"deploy_table.py: error: {e}", file=sys.stderr)
        return 2
    for run_dir in args.run_dirs:
        out = deploy_run(run_dir, targets, args)
        write_json(run_dir / OUT, out)
        print(markdown(run_dir, out), "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
