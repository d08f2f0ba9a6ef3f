"""The cluster path for real: a sweep through hydra-submitit-launcher, whose jobs run as separate
processes that share the sweep directory and the file-locked baseline cache, as on a cluster
(submitit_local runs them on this machine; tests/test_config.py checks the SLURM launchers compose)."""

import json

import pytest

from tests.conftest import run_train
from tests.helpers.data import smoke_args

pytestmark = pytest.mark.slow  # a 2-job sweep, each job a whole (tiny) run


def test_a_submitit_sweep_runs_both_jobs_and_trains_the_baseline_once(tmp_path, tiny_root):
    sweep, cache = tmp_path / "sweep", tmp_path / "baselines"
    args = [
        "-m",
        *smoke_args(tiny_root),
        "decomp.bases=2,4",
        "latency.guard=false",
        "latency.batch_sizes=[1]",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=20",
        f"hydra.sweep.dir={sweep}",
        f"baseline.cache_dir={cache}",
    ]
    res = run_train(args, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    results = [json.loads((sweep / job / "results.json").read_text()) for job in ("0", "1")]
    assert all(r["status"] == "complete" for r in results)
    assert sorted(r["layers"][0]["bases"] for r in results) == [2, 4]
    # the jobs may run side by side: one trains the baseline, the other waits on the lock and loads it
    assert sorted(r["baseline"]["origin"]["source"] for r in results) == ["cache", "trained"]
    assert len(list(cache.rglob("baseline.pt"))) == 1
    assert list(sweep.glob(".submitit/*"))  # the jobs went through submitit
