"""Deployment targets: each runs the network it was given (checked against torch within its
precision's tolerance), a wrong target is refused before any work, and the comparison picks the
best dense deployment among those that keep the baseline's accuracy."""

from types import SimpleNamespace

import pytest
import torch

from lrx.deploy import compare
from lrx.deploy.targets import TARGETS, TOLERANCE, Target, TargetError, check, deploy
from lrx.lowrank import decompose
from lrx.measure.estimator import Estimator, Ratio
from lrx.models import AlexNetCIFAR
from tests.helpers.run_if import run_if

pytestmark = run_if(onnxruntime=True, openvino=True)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    base = AlexNetCIFAR(num_classes=10).eval()
    final = AlexNetCIFAR(num_classes=10).eval()
    final.load_state_dict(base.state_dict())
    decompose(final, ["conv2", "conv3"], "scheme2", bases=16)
    return {"baseline": base, "final": final}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=run_if(target=name)) for name in TARGETS])
def test_every_target_runs_the_network_within_its_tolerance(name, nets, tmp_path):
    target = Target.of(name)
    images = torch.randn(6, 3, 32, 32)
    calibration = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    for net in nets.values():
        d = deploy(net, target, images, 1, tmp_path, calibration=calibration, calibration_images=16)
        record = check(d, net, images)
        assert record["rel_error"] <= TOLERANCE[target.precision]
        assert d.run(torch.randn(3, 3, 32, 32)).shape == (3, 10)  # any batch size


@pytest.mark.parametrize(
    "name, words",
    [("openvino-fp16", "valid: torch-fp32, torch-bf16"), ("tensorrt-fp32", "openvino-int8$"), ("int8", "")],
)
def test_an_unknown_target_is_named_with_the_valid_ones(name, words):
    with pytest.raises(TargetError, match=f"deploy.targets: '{name}' is not a deployment target.*{words}"):
        Target.of(name)


def test_int8_without_calibration_images_is_refused(nets, tmp_path):
    with pytest.raises(TargetError, match="openvino-int8 needs calibration images"):
        deploy(nets["baseline"], Target.of("openvino-int8"), torch.randn(2, 3, 32, 32), 1, tmp_path)


def test_a_graph_that_disagrees_with_its_network_is_refused(nets, tmp_path):
    d = deploy(nets["baseline"], Target.of("torch-fp32"), torch.randn(2, 3, 32, 32), 1, tmp_path)
    d.run = lambda x: torch.zeros(len(x), 10)
    with pytest.raises(TargetError, match="torch-fp32 disagrees with its torch network.*relative error"):
        check(d, nets["baseline"], torch.randn(4, 3, 32, 32))


@pytest.mark.slow
def test_onnx_runtime_serves_the_graph_exported_at_the_configured_opset(nets, tmp_path):
    import onnx

    target, net, images = Target.of("onnxruntime-fp32"), {"baseline": nets["baseline"]}, torch.randn(2, 3, 32, 32)
    deployed, failed = compare.deploy_both(net, [target], images, 1, torch.channels_last, None, 0, opset=20)
    d = deployed[target.name]["baseline"]
    d.save(tmp_path)
    opset = {o.domain: o.version for o in onnx.load(tmp_path / "model.onnx").opset_import}[""]
    assert failed == {} and opset == d.info["opset"] == 20


def _timings(ms: dict[str, tuple[float, float]]) -> dict:
    """Per target a measurement as :func:`compare.time_all` returns it, every round alike:
    ``ms[target] = (baseline ms, final ms)``."""
    out = {}
    for t, (b, f) in ms.items():
        ratio = Ratio(b / f, b / f, b / f, 0.1)
        record = lambda: {"rounds": 10}  # noqa: E731
        out[t] = SimpleNamespace(ms={"baseline": b, "final": f}, ratios={"speedup": ratio}, record=record, threads=1)
        out[t].busy_cores = 0.0
    return out


def test_the_reference_is_the_fastest_dense_target_that_keeps_the_accuracy():
    """int8 is the fastest dense target but loses a point: the reference is bf16 (within half a
    point); the final network's fastest target is int8; each target's speed-up is its own pair's."""
    deployed = {t: {"baseline": SimpleNamespace(info={}), "final": SimpleNamespace(info={})} for t in TARGETS[:3]}
    names = list(deployed)
    ms = {names[0]: (20.0, 8.0), names[1]: (5.0, 4.0), names[2]: (2.0, 2.5)}
    acc1 = {names[0]: {"baseline": 87.5, "final": 87.0}, names[1]: {"baseline": 87.2, "final": 86.9}}
    acc1[names[2]] = {"baseline": 86.4, "final": 86.6}
    out = compare.table(deployed, _timings(ms), acc1, reference_acc1=87.5)
    assert (out["best"]["dense"], out["best"]["final"]) == (names[1], names[2])
    assert out["targets"][names[0]]["speedup"] == pytest.approx(2.5)
    assert out["targets"][names[2]]["final"]["ms"] == 2.5 and out["targets"][names[2]]["timing"] == {"rounds": 10}
    assert compare.table(deployed, _timings(ms), acc1, reference_acc1=99.0)["best"] is None


def test_each_targets_two_graphs_are_timed_on_their_own_one_target_after_another(monkeypatch):
    timed = []
    monkeypatch.setattr(compare, "measure", lambda calls, ratios, *args: timed.append(sorted(calls)) or len(timed))
    graph = SimpleNamespace(timer=lambda x: lambda: None)
    deployed = {t: {"baseline": graph, "final": graph} for t in TARGETS[:3]}
    assert compare.time_all(deployed, None) == {t: i + 1 for i, t in enumerate(TARGETS[:3])}
    assert timed == [["baseline", "final"]] * 3  # never two targets' graphs in one measurement


def test_a_target_that_fails_its_check_is_left_out_and_the_others_go_on(nets, monkeypatch, caplog):
    def check_fails_in_bf16(d, net, images):
        if d.target.precision == "bf16":
            raise TargetError(f"{d.target.name} disagrees")
        return {"rel_error": 0.0}

    monkeypatch.setattr(compare, "check", check_fails_in_bf16)
    targets = [Target.of("torch-fp32"), Target.of("torch-bf16")]
    deployed, failed = compare.deploy_both(nets, targets, torch.randn(2, 3, 32, 32), 1, torch.channels_last, None, 0)
    assert list(deployed) == ["torch-fp32"] and set(deployed["torch-fp32"]) == {"baseline", "final"}
    assert failed == {"torch-bf16": "baseline network: torch-bf16 disagrees"}
    assert "torch-bf16 is left out" in caplog.text


def _deploy_cfg(tmp_path, *overrides):
    from lrx.run.config import check as check_config
    from tests.conftest import compose_cfg

    return lambda: check_config(compose_cfg(["decomp=none", *overrides], tmp_path))


def test_a_run_refuses_openvino_targets_without_the_extra_naming_the_key(tmp_path, monkeypatch):
    from lrx.run.config import ConfigError
    from lrx.runtime import openvino as ovr

    monkeypatch.setattr(ovr, "missing_packages", lambda: ["openvino", "nncf"])
    with pytest.raises(ConfigError, match=r"deploy.targets: openvino-fp32 needs openvino, nncf: install the extra"):
        _deploy_cfg(tmp_path, "deploy.targets=[torch-fp32,openvino-fp32]")()
    _deploy_cfg(tmp_path, "deploy.targets=auto")()  # auto leaves out what is not installed
    assert "openvino-fp32" not in [t.name for t in compare.available_targets()]


def test_a_run_refuses_bf16_where_the_cpu_would_fall_back_to_f32(tmp_path, monkeypatch):
    from lrx.run.config import ConfigError
    from lrx.runtime import openvino as ovr

    class NoBF16:
        def get_property(self, device, name):
            return {"OPTIMIZATION_CAPABILITIES": ["FP32", "INT8"], "FULL_DEVICE_NAME": "Old CPU"}[name]

    monkeypatch.setattr(ovr, "_core", NoBF16)
    with pytest.raises(ConfigError, match="deploy.targets: openvino-bf16 is not served natively on this CPU.*Old CPU"):
        _deploy_cfg(tmp_path, "deploy.targets=[openvino-bf16]")()
    assert "openvino-bf16" not in [t.name for t in compare.available_targets()]


@pytest.mark.slow
def test_a_run_deploys_both_networks_keeps_the_graphs_and_reports_the_best_dense(tmp_path, tiny_root):
    import json

    from lrx.compress.fold import fold_bn
    from lrx.results.saved import load_models
    from lrx.runtime import openvino as ovr
    from tests.helpers.runs import run_smoke

    overrides = ["deploy.targets=[torch-fp32,openvino-fp32]", "latency.guard=false", "finetune.epochs=1"]
    results = run_smoke(tmp_path, tiny_root, *overrides)
    dep = json.loads((tmp_path / "results.json").read_text())["deploy"]
    assert set(dep["targets"]) == {"torch-fp32", "openvino-fp32"} and dep["failed"] == {}
    for row in dep["targets"].values():
        for side in ("baseline", "final"):
            assert row[side]["ms"] > 0 and 0 <= row[side]["acc1"] <= 100
            assert row[side]["check"]["rel_error"] <= TOLERANCE["fp32"]
    assert dep["reference_acc1"] == results["baseline"]["acc1"] and dep["bn_folded"]
    best = dep["best"]
    assert results["speedup"]["vs_best_dense"] == (best and best["speedup"])
    assert best is None or (best["dense"] in dep["targets"] and best["final"] in dep["targets"])
    # the kept OpenVINO graph of the final network is the saved final network, BatchNorm folded
    assert dep["files"]["openvino-fp32"]["final"] == ["openvino-fp32/final/model.xml", "openvino-fp32/final/model.bin"]
    model = ovr.load(tmp_path / "deployed" / "openvino-fp32" / "final" / "model.xml")
    _, final, _ = load_models(tmp_path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = fold_bn(final)(x)
    out = ovr.run(ovr.compile(model, "f32", 1), x)
    assert float((out - ref).norm()) <= 1e-4 * float(ref.norm())


def test_the_headline_times_two_runtimes_each_alone_and_one_runtime_as_a_pair():
    import time

    def deployed(runtime, seconds):
        def timer(x):
            return lambda: time.sleep(seconds)

        return SimpleNamespace(target=SimpleNamespace(runtime=runtime), timer=timer)

    fast = Estimator(warmup_s=0.0, block_s=0.0, min_rounds=3, max_rounds=3)
    best = {"dense": "a", "final": "b"}
    two = {"a": {"baseline": deployed("onnxruntime", 0.004)}, "b": {"final": deployed("openvino", 0.001)}}
    out = compare.time_best(two, best, None, fast, 1)
    assert out["timed"] == "each alone" and out["dense_ms"] > 0 and out["final_ms"] > 0
    assert out["speedup"] == pytest.approx(out["dense_ms"] / out["final_ms"])
    assert out["speedup_iqr"][0] <= out["speedup"] <= out["speedup_iqr"][1]
    one = {"a": {"baseline": deployed("openvino", 0.004)}, "b": {"final": deployed("openvino", 0.001)}}
    assert compare.time_best(one, best, None, fast, 1)["timed"] == "as a pair"
