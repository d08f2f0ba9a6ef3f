"""Real runs of ``python -m lrx.train`` on the shared CIFAR-10 data, in subprocesses."""

import json
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
import torch

from lrx.models import AlexNet
from tests.conftest import run_train
from tests.helpers.data import write_tiny_cifar10
from tests.helpers.timing import QUICK_OVERRIDES
from tests.wandb_offline import run_info

pytestmark = pytest.mark.slow  # every test here runs lrx.train in a subprocess


def _results(root):
    return sorted(root.rglob("results.json"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_root):
    cwd = tmp_path_factory.mktemp("smoke")
    # no guard: whether conv2 is faster depends on this machine (tests/test_pipeline.py fakes both outcomes)
    res = run_train(["experiment=smoke", "logger=csv", "latency.guard=false"], cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd


def test_smoke_run_writes_complete_results(smoke_run):
    (path,) = _results(smoke_run / "outputs" / "runs")
    results = json.loads(path.read_text())
    assert results["status"] == "complete"
    for stage in ("baseline", "final"):
        entry = results[stage]
        assert 0.0 <= entry["acc1"] <= 100.0
        assert entry["macs"] > 0 and entry["params"] > 0
        assert entry["latency_ms"]["cpu"] > 0
    (layer,) = results["layers"]  # experiment=smoke: Scheme 1 on conv2
    assert layer["name"] == "conv2" and layer["method"] == "scheme1" and layer["bases"] == 8
    assert 0 < layer["rel_error"] < 1 and layer["macs_speedup"] > 1 and layer["measured_speedup"]["cpu"] > 0
    assert layer["data_recon"]["rel_error_after"] <= layer["data_recon"]["rel_error_before"]
    assert list(results["stages"]) == ["filter", "data", "finetune"]
    assert results["skipped"] == {} and results["ignored_keys"] == [] and results["dataset"] == "cifar10"
    assert results["speedup"]["conv"]["cpu"] > 0 and results["speedup"]["model"]["cpu"] > 0
    (by_batch,) = results["latency"]["cpu"].values()  # latency.threads=null: one thread count, torch's
    assert set(by_batch) == {"1", "32"} and results["speedup"]["at"]["batch_size"] == 32
    assert results["config"]["model"]["name"] == "alexnet_cifar"
    assert results["baseline"]["origin"]["source"] == "trained"
    assert (smoke_run / "outputs" / "baselines").is_dir()


def test_second_run_reuses_the_cached_baseline(smoke_run):
    res = run_train(["experiment=smoke", "logger=none"], cwd=smoke_run)
    assert res.returncode == 0, res.stderr[-3000:]
    newest = max(_results(smoke_run / "outputs" / "runs"), key=lambda p: p.stat().st_mtime)
    assert json.loads(newest.read_text())["baseline"]["origin"]["source"] == "cache"


def test_corrupt_cached_baseline_is_rebuilt(smoke_run):
    (cached,) = (smoke_run / "outputs" / "baselines").rglob("baseline.pt")
    cached.write_bytes(cached.read_bytes()[:1000])
    res = run_train(["experiment=smoke", "logger=none"], cwd=smoke_run)
    assert res.returncode == 0, res.stderr[-3000:]
    newest = max(_results(smoke_run / "outputs" / "runs"), key=lambda p: p.stat().st_mtime)
    assert json.loads(newest.read_text())["baseline"]["origin"]["source"] == "trained"


SUMMARY_KEYS = {
    "baseline/acc1",
    "final/acc1",
    "baseline/macs_m",
    "final/macs_m",
    "baseline/params_m",
    "final/params_m",
    "baseline/latency_ms/cpu",
    "final/latency_ms/cpu",
    "speedup/macs",
    "speedup/conv/cpu",
    "speedup/model/cpu",
    "stage/filter/acc1",
    "stage/data/acc1",
    "stage/finetune/acc1",
}


def test_two_job_multirun_logs_offline_wandb_reports_and_skips_finished_jobs(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=smoke", "decomp.bases=2,4", "latency.guard=false", f"hydra.sweep.dir={sweep}"]
    res = run_train(args, cwd=tmp_path)  # the default logger: W&B, offline
    assert res.returncode == 0, res.stderr[-3000:]
    found = _results(sweep)
    assert len(found) == 2
    assert sorted(json.loads(p.read_text())["config"]["decomp"]["bases"] for p in found) == [2, 4]

    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 2
    infos = [run_info(r) for r in runs]
    assert sorted(i["name"] for i in infos) == ["alexnet_cifar cifar10 s1 M2 l2", "alexnet_cifar cifar10 s1 M4 l2"]
    assert {i["group"] for i in infos} == {str(sweep)}  # a dashboard groups the sweep's jobs
    for info in infos:
        assert SUMMARY_KEYS <= set(info["summary"]), SUMMARY_KEYS - set(info["summary"])
        assert info["summary"]["layers/nrows"] == 1  # the per-layer W&B Table
        assert info["config"]["decomp"]["method"] == "scheme1"  # the resolved config
        assert {"alexnet_cifar", "cifar10", "s1"} <= set(info["tags"])

    rep = subprocess.run([sys.executable, "-m", "lrx.report", str(sweep)], capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr
    every_run = (sweep / "report.md").read_text().split("## Every run")[1].split("\n## ")[0]
    rows = [line for line in every_run.splitlines() if line.startswith("| alexnet_cifar")]
    assert len(rows) == 3  # the baseline and the two jobs
    assert plt.imread(sweep / "report.png").shape[0] > 100

    stamps = [p.stat().st_mtime_ns for p in found]
    again = run_train(args, cwd=tmp_path)  # a re-run of the finished sweep skips both jobs
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("skipped:") == 2
    assert [p.stat().st_mtime_ns for p in found] == stamps


@pytest.mark.parametrize("root_kind", ["missing", "empty"])
def test_bad_data_root_fails_before_any_work(tmp_path, root_kind):
    root = tmp_path / "no-data"
    if root_kind == "empty":
        root.mkdir()
    res = run_train(["experiment=smoke", "logger=none", f"data.root={root}"], cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert str(root) in res.stderr and "cifar-10-batches-bin" in res.stderr
    assert "Traceback" not in res.stderr
    assert not _results(tmp_path) and not (tmp_path / "outputs" / "baselines").exists()


def test_truncated_batch_file_fails_before_any_work(tmp_path):
    write_tiny_cifar10(tmp_path / "data" / "cifar-10-batches-bin")
    bad = tmp_path / "data" / "cifar-10-batches-bin" / "data_batch_4.bin"
    bad.write_bytes(bad.read_bytes()[:-7])
    res = run_train(["experiment=smoke", "logger=none", f"data.root={tmp_path / 'data'}"], cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert "data_batch_4.bin" in res.stderr and "3073" in res.stderr and "Traceback" not in res.stderr
    assert not _results(tmp_path) and not (tmp_path / "outputs" / "baselines").exists()


def test_the_users_command_replaces_conv2_by_scheme1_with_8_bases(tmp_path, data_root):
    """``python -m lrx.train model=alexnet decomp.bases=8 -m`` with a given AlexNet state_dict, on a
    few batches: the earlier attempt's AlexNet-2 row."""
    torch.save(AlexNet().state_dict(), tmp_path / "alexnet.pt")
    sweep = tmp_path / "sweep"
    few = [
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.eval_batch_size=4",
        "latency.batch_sizes=[2]",
        *QUICK_OVERRIDES,
        "latency.guard=false",
        "callbacks.cost=null",
        "logger=none",
    ]
    res = run_train(
        [
            "model=alexnet",
            "decomp.bases=8",
            f"baseline.ckpt={tmp_path / 'alexnet.pt'}",
            *few,
            f"hydra.sweep.dir={sweep}",
            "-m",  # last, as the user writes it: argparse takes the overrides before it
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = _results(sweep)
    results = json.loads(path.read_text())
    (layer,) = results["layers"]
    assert (layer["name"], layer["method"], layer["bases"]) == ("conv2", "scheme1", 8)
    assert layer["lambda"]["schedule"] == "fixed" and layer["lambda"]["start"] == 1e-4
    assert results["model"] == "alexnet" and results["baseline"]["origin"]["source"] == "checkpoint"
