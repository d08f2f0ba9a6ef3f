"""A finished run's deploy stage again: both networks BatchNorm-folded and deployed to the targets,
each graph checked against torch, its acc@1 measured on the validation split where it runs, each
target's two graphs timed in paired rounds, and the speed-up against the best dense deployment
(:func:`lrx.deploy.compare.compare_deployments`, results.json's ``deploy`` shape). :mod:`lrx.retime`
runs it in a fresh process, with the runtimes' own wait policies.

    python -m lrx.retime.deployment JOB_JSON   (the process itself)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from lrx.compress.execution import tune
from lrx.deploy.compare import compare_deployments
from lrx.deploy.targets import Target
from lrx.measure.estimator import Estimator
from lrx.measure.latency import memory_format_of
from lrx.results.saved import datamodule_of, load_models, opset_of
from lrx.run.serving_choice import in_fresh_process

CHECK_IMAGES = 16  # validation images each graph is checked on, where the run's config names none


def deploy_run(run_dir: Path, targets: list[Target], threads: int, args) -> dict:
    """In this process: :func:`compare_deployments` of the run's two networks in ``targets`` at
    ``threads``, in the run's memory format, next to its ``latency.decide_at.busy`` neighbours
    (``args``: batch_size, estimator, quiet_wait_s, calibration_images, data_root)."""
    baseline, final, results = load_models(run_dir)
    cfg, dm = results["config"], datamodule_of(results, args.data_root)
    lat, size = cfg["latency"], cfg["model"]["input_size"]
    x = torch.randn(args.batch_size, 3, size, size)
    estimator = Estimator.of(args.estimator)
    with torch.no_grad():
        tune(final, x, estimator, lat["memory_format"])
    int8 = any(t.precision == "int8" for t in targets)
    return compare_deployments(
        {"baseline": baseline, "final": final},
        targets,
        x,
        next(iter(dm.val_dataloader()))[0][: (cfg.get("deploy") or {}).get("check_images", CHECK_IMAGES)],
        dm.val_dataloader(),
        results["baseline"]["acc1"],
        threads,
        estimator,
        memory_format_of(lat["memory_format"]),
        dm.calibration_dataloader(args.calibration_images, seed=cfg.get("seed", 0)) if int8 else None,
        args.calibration_images,
        args.quiet_wait_s,
        (lat.get("decide_at") or {}).get("busy", 0),
        opset=opset_of(results),
    )


def in_own_process(run_dir: Path, targets: list[Target], threads: int, args) -> dict:
    """:func:`deploy_run` in a fresh process with none of this one's OpenMP variables."""
    job = {"run_dir": str(Path(run_dir).resolve()), "targets": [t.name for t in targets], "threads": threads}
    return in_fresh_process(__name__, {**job, **vars(args)}, {}, f"deploying {Path(run_dir).name}")


def main(argv: list[str] | None = None) -> int:
    """The process: the run deployed and compared, the result as JSON on the last line."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("job", help="JSON: run_dir, targets, threads, and deploy_run's args")
    job = json.loads(parser.parse_args(argv).job)
    run_dir, targets = Path(job.pop("run_dir")), [Target.of(name) for name in job.pop("targets")]
    print(json.dumps(deploy_run(run_dir, targets, job.pop("threads"), SimpleNamespace(**job))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
