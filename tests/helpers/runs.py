"""Runs the tests make in-process: the smoke pipeline, and the planner with fixed timings."""

from __future__ import annotations

from pathlib import Path

from omegaconf import open_dict

from lrx.measure.estimator import Ratio, Timing


def run_smoke(tmp_path: Path, root: Path, *overrides: str) -> dict:
    """experiment=smoke in this process on the data under ``root``, writing into ``tmp_path`` (its
    baseline cached there too); the run's results."""
    from lrx.run.job import prepare
    from lrx.run.stages import run
    from tests.conftest import compose_cfg
    from tests.helpers.data import smoke_args

    cfg = compose_cfg([*smoke_args(root), *overrides, f"baseline.cache_dir={tmp_path / 'cache'}"], tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]
    return run(prepare(cfg), tmp_path)


def fix_planner_speedups(monkeypatch) -> list[dict]:
    """The planner's timings run for real (in their runtime and precision) but report every
    low-rank candidate twice as fast as its conv, so that a plan does not depend on this machine's
    timing; returns the list each timing appends ``{runtime, threads, precision, calls}`` to."""
    from lrx.compress import planner

    timed, real_pair, real_alone = [], planner.dense_vs_lowrank, planner.time_modules

    def dense_vs_lowrank(dense, lowrank, x, estimator, runtime="torch", threads=None, precision="fp32", built=None):
        real = real_pair(dense, lowrank, x, estimator, runtime, threads, precision, built)
        timed.append({"runtime": runtime, "threads": threads, "precision": precision, "calls": set(real.ms)})
        return Timing(real.ms, {"speedup": Ratio(2.0, 2.0, 2.0, 0.1)}, 2, 0.0, 1, 0.0)

    def time_modules(modules, x, estimator, runtime="torch", threads=None, ratios=None, precision="fp32", built=None):
        real = real_alone(modules, x, estimator, runtime, threads, ratios, precision, built)
        timed.append({"runtime": runtime, "threads": threads, "precision": precision, "calls": set(real.ms)})
        return Timing({"dense": 1.0}, {}, 2, 0.0, 1, 0.0)

    monkeypatch.setattr(planner, "dense_vs_lowrank", dense_vs_lowrank)
    monkeypatch.setattr(planner, "time_modules", time_modules)
    return timed
