"""The pipeline's stage order: the latency guard decides right after filter reconstruction, so data
reconstruction and fine-tuning fit only the layers that stay."""

import datetime
import json
import re
import shlex
import subprocess

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

import lrx.measure.latency
import lrx.run.stages
from lrx.io import PROJECT
from lrx.lowrank.methods.scheme1 import Scheme1Conv
from lrx.measure.complexity import complexity
from lrx.measure.latency import conv_names, machine
from lrx.results.saved import load_models
from lrx.run.job import prepare
from lrx.run.stages import run
from tests.conftest import REPO, compose_cfg
from tests.helpers.data import smoke_args
from tests.helpers.methods import one_thread  # noqa: F401
from tests.helpers.timing import QUICK, QUICK_OVERRIDES, param_clock, size

# The networks are tiny: on a CPU shared with other work, a second thread only waits for its turn.
pytestmark = pytest.mark.usefixtures("one_thread")


def _exact(speedup: float, prefix: str = "") -> dict:
    """A speed-up as the estimator records it, measured without any spread."""
    return {f"{prefix}speedup": speedup, f"{prefix}speedup_iqr": [speedup, speedup], f"{prefix}unstable": False}


def _fake_compare(conv2_speedup: float):
    """lrx.measure.latency.compare with made-up times: conv2, where replaced, runs at ``conv2_speedup``."""

    def compare(baseline, approx, *args, **kwargs):
        layers = {}
        for name in conv_names(baseline):
            replaced = type(approx.get_submodule(name)) is not nn.Conv2d
            speedup = conv2_speedup if replaced else 1.0
            layers[name] = {"baseline_ms": 1.0, "approx_ms": 1.0 / speedup, **_exact(speedup), "replaced": replaced}
        conv = {"baseline": float(len(layers)), "approx": sum(v["approx_ms"] for v in layers.values())}
        return {
            "setup": {},
            "layers": layers,
            "conv_ms": conv,
            **_exact(conv["baseline"] / conv["approx"], "conv_"),
            "model_ms": {"baseline": 2.0, "approx": 2.0},
            **_exact(1.0, "model_"),
        }

    return compare


def _threads() -> str:
    n = torch.get_num_threads()  # latency.threads=null: the final timing runs at torch's own count
    return f"{n} thread{'s' if n > 1 else ''}"


# Fewer data-reconstruction steps and quick timings: the tests check what the stages do and record.
FEW = ["model.net.widths=[16,24,32,32,24]", "data_recon.steps=2", *QUICK_OVERRIDES]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One baseline cache for the module: the baseline is trained once, by the first run."""
    return tmp_path_factory.mktemp("baselines")


@pytest.fixture
def run_in(tmp_path, tiny_root, cache_dir):
    """The pipeline in-process on experiment=smoke over the tiny data, as lrx.train runs it; returns
    its results (its folder: ``tmp_path``)."""

    def run_with(*overrides) -> dict:
        cfg = compose_cfg([*smoke_args(tiny_root), *FEW, *overrides, f"baseline.cache_dir={cache_dir}"], tmp_path)
        with open_dict(cfg):
            del cfg["hydra"]  # as lrx.train receives it
        return run(prepare(cfg), tmp_path)

    return run_with


@pytest.mark.parametrize("conv2_speedup", [0.5, 2.0])
def test_guard_decides_before_data_reconstruction_and_finetuning(monkeypatch, run_in, conv2_speedup):
    monkeypatch.setattr(lrx.measure.latency, "compare", _fake_compare(conv2_speedup))
    results = run_in()
    (layer,) = results["layers"]
    if conv2_speedup < 1:  # put back: the fitting stages have nothing left to fit, the model is the baseline
        assert list(results["stages"]) == ["filter", "guard"]
        assert layer["kept"] is False and "0.50x" in layer["put_back_reason"] and "data_recon" not in layer
        assert results["final"]["acc1"] == results["baseline"]["acc1"]
        assert results["final"]["macs"] == results["baseline"]["macs"]
    else:
        assert list(results["stages"]) == ["filter", "data", "finetune"]
        assert layer["kept"] is True and "data_recon" in layer
        assert results["final"]["macs"] < results["baseline"]["macs"]


def test_the_guard_decides_in_the_configured_runtime(monkeypatch, run_in):
    pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[onnx]'")
    fake, runtimes = _fake_compare(0.5), []

    def compare(*args, runtime="torch", **kwargs):
        runtimes.append(runtime)
        return fake(*args, **kwargs)

    monkeypatch.setattr(lrx.measure.latency, "compare", compare)
    results = run_in("latency.runtime=onnxruntime", "latency.precision=fp32", "latency.batch_sizes=[1,4]")
    (layer,) = results["layers"]
    at = f"onnxruntime-cpu, {_threads()}, batch 4"
    assert layer["guard"] == {"speedup": 0.5, "speedup_iqr": [0.5, 0.5], "at": at} and layer["kept"] is False
    assert at in layer["put_back_reason"]
    # the guard, then the final timing at each batch size, unfolded and BN folded (latency.fold_bn)
    assert runtimes == ["onnxruntime", *["torch"] * 4]


def test_a_finetuning_that_lowers_validation_acc1_is_not_kept(monkeypatch, run_in):
    monkeypatch.setattr(lrx.measure.latency, "compare", _fake_compare(2.0))
    acc1 = {"baseline": 90.0, "filter": 70.0, "data": 85.0, "finetune": 40.0}  # fine-tuning diverged
    monkeypatch.setattr(
        lrx.run.stages, "_accuracies", lambda job, net, tag: {"acc1": acc1[tag], "acc1_test": acc1[tag]}
    )
    before, timed = {}, {}

    def ruinous_finetune(job, baseline, approx, logger, callbacks):
        before.update({k: v.clone() for k, v in approx.state_dict().items()})
        with torch.no_grad():
            for p in approx.parameters():
                p.add_(1.0)

    def timings(job, baseline, approx, **kwargs):
        timed.update({k: v.clone() for k, v in approx.state_dict().items()})
        return real_timings(job, baseline, approx, **kwargs)

    real_timings = lrx.run.stages._timings
    monkeypatch.setattr(lrx.run.stages, "_fit_approximation", ruinous_finetune)
    monkeypatch.setattr(lrx.run.stages, "_timings", timings)
    results = run_in("latency.guard=false")
    assert list(results["stages"]) == ["filter", "data", "finetune"] and results["finetune_reverted"] is True
    assert results["final"]["acc1"] == 85.0  # the model handed back is the one from before fine-tuning
    assert before and all(torch.equal(timed[k], v) for k, v in before.items())


def test_the_final_network_is_saved_and_loads_back(tmp_path, monkeypatch, run_in):
    monkeypatch.setattr(lrx.measure.latency, "compare", _fake_compare(2.0))
    results = run_in()
    baseline, final, loaded = load_models(tmp_path)
    assert isinstance(final.conv2, Scheme1Conv) and type(baseline.conv2) is nn.Conv2d
    assert not final.training and not baseline.training
    assert complexity(final, 32)["macs"] == results["final"]["macs"] == loaded["final"]["macs"]
    assert complexity(baseline, 32)["macs"] == results["baseline"]["macs"]


def test_a_run_records_the_command_that_makes_it_again_its_code_date_and_machine(tmp_path, monkeypatch, run_in):
    monkeypatch.setattr(lrx.measure.latency, "compare", _fake_compare(2.0))
    results = run_in("decomp.bases=2")
    words = shlex.split(results["command"])
    assert words[:3] == ["python", "-m", "lrx.train"] and "decomp.bases=2" in words
    again = compose_cfg(words[3:], tmp_path)
    with open_dict(again):
        del again["hydra"]
    assert OmegaConf.to_container(again, resolve=True) == results["config"]
    assert datetime.datetime.fromisoformat(results["date"]).date() == datetime.date.today()
    assert results["machine"] == machine()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert (results["code"] or "").removesuffix("-dirty") == head[:12]  # this checkout's commit (None: no git)


def test_loading_a_directory_without_a_finished_run_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no finished run"):
        load_models(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "results.json").write_text(
        json.dumps({"status": "complete", "baseline": {"origin": {"path": "gone.pt"}}})
    )
    with pytest.raises(ValueError, match=re.escape(f"{str(PROJECT / 'gone.pt')!r}, is not there")):  # under the project
        load_models(tmp_path)


@pytest.mark.parametrize("conv2_speedup", [0.5, 2.0])
def test_every_setting_where_the_final_model_is_slower_is_named(monkeypatch, run_in, conv2_speedup):
    monkeypatch.setattr(lrx.measure.latency, "compare", _fake_compare(conv2_speedup))
    results = run_in("latency.guard=false")  # conv2 stays, even when slower
    conv = 5 / (4 + 1 / conv2_speedup)  # five convs of 1 ms, conv2 replaced
    slower = f"{{}}, {_threads()}, batch {{}}: conv {conv:.2f}x, model 1.00x; layers slower: conv2 {conv2_speedup:.2f}x"
    points = [(device, bs) for device in ("cpu", "cpu (BN folded)") for bs in (1, 32)]  # latency.fold_bn: both
    expected = [slower.format(*point) for point in points] if conv2_speedup < 1 else []
    assert results["slower_than_baseline"] == expected


def test_every_point_records_the_speedups_its_timings_give(tmp_path, monkeypatch, run_in):
    """On the parameter clock (a module takes its parameter count in seconds) the final timings are
    known exactly: at every point, conv2's speed-up is its parameter ratio, the conv speed-up the
    convs' (the untouched ones counting on both sides) and the model's the networks', without spread."""
    with param_clock(monkeypatch):  # Scheme 2: no execution to choose, so nothing else is timed
        overrides = ["latency.guard=false", "latency.batch_sizes=[1,2]", "callbacks.cost=null"]
        results = run_in("decomp=scheme2", *overrides, "latency.fold_bn=false")  # the unfolded networks' figures
    baseline, final, _ = load_models(tmp_path)
    names = conv_names(baseline)
    convs = [sum(size(net.get_submodule(n)) for n in names) for net in (baseline, final)]
    expected = {
        "conv2": size(baseline.conv2) / size(final.conv2),
        "conv": convs[0] / convs[1],
        "model": size(baseline) / size(final),
    }
    assert expected["conv2"] > expected["conv"] > expected["model"] > 1
    recorded = json.loads((tmp_path / "results.json").read_text())
    points = lrx.measure.latency.points(recorded["latency"])
    assert [where for where, _ in points] == [f"cpu, {_threads()}, batch {bs}" for bs in (1, 2)]
    for where, t in points:
        measured = {"conv2": t["layers"]["conv2"]["speedup"], "conv": t["conv_speedup"], "model": t["model_speedup"]}
        assert measured == expected, where
        assert t["conv_speedup_iqr"] == [expected["conv"]] * 2 and t["model_speedup_iqr"] == [expected["model"]] * 2
        assert all(t["layers"][n]["speedup"] == 1.0 for n in names if n != "conv2")
        for timing in (t["conv_timing"], t["model_timing"]):
            assert timing["rounds"] == QUICK.min_rounds and timing["threads"] == torch.get_num_threads()
    assert results["speedup"]["conv"]["cpu"] == expected["conv"] and results["slower_than_baseline"] == []


def test_with_fold_bn_both_networks_are_also_timed_folded_beside_the_unfolded_figures(monkeypatch, run_in):
    timed = []
    fake = _fake_compare(2.0)

    def compare(baseline, approx, *args, **kwargs):
        timed.append(any(isinstance(m, nn.BatchNorm2d) for m in (*baseline.modules(), *approx.modules())))
        return fake(baseline, approx, *args, **kwargs)

    monkeypatch.setattr(lrx.measure.latency, "compare", compare)
    results = run_in("latency.fold_bn=true", "latency.guard=false")
    folded = "cpu (BN folded)"
    assert set(results["latency"]) == {"cpu", folded} and set(results["speedup"]["conv"]) == {"cpu", folded}
    assert results["speedup"]["model"][folded] == 1.0 and timed == [True, True, False, False]  # batch 1 and 32
