"""Deployment targets: each runs the network it was given (checked against torch within its
precision's tolerance), a wrong target is refused before any work, and the comparison picks the
best dense deployment among those that keep the baseline's accuracy."""

from types import SimpleNamespace

import pytest
import torch

from lrx.deploy import compare
from lrx.deploy.targets import TARGETS, TOLERANCE, Target, TargetError, check, deploy
from lrx.lowrank import decompose
from lrx.measure.estimator import Ratio
from lrx.models import AlexNetCIFAR

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    base = AlexNetCIFAR(num_classes=10).eval()
    final = AlexNetCIFAR(num_classes=10).eval()
    final.load_state_dict(base.state_dict())
    decompose(final, ["conv2", "conv3"], "scheme2", bases=16)
    return {"baseline": base, "final": final}


def _servable(name: str) -> Target:
    target = Target.of(name)
    try:
        target.require()
    except TargetError as e:
        pytest.skip(str(e))
    return target


@pytest.mark.slow
@pytest.mark.parametrize("name", TARGETS)
def test_every_target_runs_the_network_within_its_tolerance(name, nets, tmp_path):
    target = _servable(name)
    images = torch.randn(6, 3, 32, 32)
    calibration = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    for net in nets.values():
        d = deploy(net, target, images, 1, tmp_path, calibration=calibration, calibration_images=16)
        record = check(d, net, images)
        assert record["max_rel_error"] <= TOLERANCE[target.precision]
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
    with pytest.raises(TargetError, match="torch-fp32 disagrees with its torch network.*max relative error"):
        check(d, nets["baseline"], torch.randn(4, 3, 32, 32))


def _timing(ms: dict[str, float]):
    """A measurement as :func:`compare.time_all` returns it, every round alike."""
    ratios = {
        compare._pair(b, f): Ratio(ms[b] / ms[f], ms[b] / ms[f], ms[b] / ms[f], 0.1)
        for b in ms
        if b.startswith("baseline@")
        for f in ms
        if f.startswith("final@")
    }
    return SimpleNamespace(ms=ms, ratios=ratios, record=lambda: {"rounds": 10})


def test_the_reference_is_the_fastest_dense_target_that_keeps_the_accuracy():
    """int8 is the fastest dense target but loses a point: the reference is bf16 (within half a
    point); the final network's fastest target is int8; the speed-up is bf16 dense / int8 final."""
    deployed = {t: {"baseline": SimpleNamespace(info={}), "final": SimpleNamespace(info={})} for t in TARGETS[:3]}
    names = list(deployed)
    ms = {f"baseline@{names[0]}": 20.0, f"baseline@{names[1]}": 5.0, f"baseline@{names[2]}": 2.0}
    ms |= {f"final@{names[0]}": 8.0, f"final@{names[1]}": 4.0, f"final@{names[2]}": 2.5}
    acc1 = {names[0]: {"baseline": 87.5, "final": 87.0}, names[1]: {"baseline": 87.2, "final": 86.9}}
    acc1[names[2]] = {"baseline": 86.4, "final": 86.6}
    out = compare.table(deployed, _timing(ms), acc1, reference_acc1=87.5)
    best = out["best"]
    assert (best["dense"], best["final"]) == (names[1], names[2]) and best["speedup"] == pytest.approx(2.0)
    assert out["targets"][names[0]]["speedup"] == pytest.approx(2.5)
    assert compare.table(deployed, _timing(ms), acc1, reference_acc1=99.0)["best"] is None
