"""Layer selection, bases resolution, validation and in-place replacement."""

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from lrx.lowrank import METHODS, DecompositionError, decompose, resolve_bases, select_convs, skipped_convs, validate
from lrx.lowrank.methods.scheme1 import Scheme1Conv
from lrx.lowrank.methods.scheme2 import Scheme2Conv
from lrx.lowrank.surgery import layer_record
from lrx.models import AlexNet, AlexNetCIFAR
from tests.helpers.methods import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(lam_steps=3, iters=10, refine_iters=10)
CIFAR_CONVS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def mixed():
    """Nested names, a 1x1 conv and a grouped conv among decomposable ones."""
    return nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, 8, 3, padding=1),
            block=nn.Sequential(
                OrderedDict(
                    reduce=nn.Conv2d(8, 4, 1),
                    dw=nn.Conv2d(4, 4, 3, padding=1, groups=4),
                    conv=nn.Conv2d(4, 6, 3, padding=1),
                )
            ),
            act=nn.ReLU(),
        )
    )


def names(selected):
    return [name for name, _ in selected]


@pytest.mark.parametrize(
    "layers, expected",
    [
        ("conv2", ["conv2"]),
        (["conv4", "conv2"], ["conv2", "conv4"]),  # model order
        ("conv[3-5]", ["conv3", "conv4", "conv5"]),
        ([2, 3], ["conv2", "conv3"]),  # 1-based
        ("all", CIFAR_CONVS),
        (["conv1", 1, "conv*"], CIFAR_CONVS),  # mixed, each once
    ],
)
def test_select_convs(layers, expected):
    assert names(select_convs(AlexNetCIFAR(), layers)) == expected


def test_all_and_globs_skip_undecomposable_convs():
    model = mixed()
    assert names(select_convs(model, "all")) == ["stem", "block.conv"]
    assert names(select_convs(model, "block.*")) == ["block.conv"]
    assert names(select_convs(model, 4)) == ["block.conv"]  # indices count every nn.Conv2d


@pytest.mark.parametrize(
    "layers, words",
    [
        ("conv9", ["'conv9'", "valid conv layers", "'conv1'", "'conv5'"]),
        ("bn1", ["'bn1'", "BatchNorm2d", "nn.Conv2d"]),
        (0, ["index 0", "1..5"]),
        (6, ["index 6", "1..5"]),
        ("fc*", ["'fc*'", "no decomposable conv", "valid conv layers"]),
        ([], ["no layers", "valid conv layers"]),
        (2.0, ["2.0", "glob", "'all'"]),
    ],
)
def test_select_convs_errors(layers, words):
    with pytest.raises(DecompositionError) as info:
        select_convs(AlexNetCIFAR(), layers)
    assert all(w in str(info.value) for w in words)


@pytest.mark.parametrize(
    "layers, words",
    [
        ("block.reduce", ["1x1", "nothing to separate"]),
        ("block.dw", ["groups=4"]),
        (3, ["groups=4"]),
        ("act", ["ReLU"]),
    ],
)
def test_explicit_undecomposable_layers_are_errors(layers, words):
    with pytest.raises(DecompositionError) as info:
        select_convs(mixed(), layers)
    assert all(w in str(info.value) for w in words)


def test_skipped_convs_name_every_undecomposable_conv_and_why():
    skipped = skipped_convs(mixed())
    assert list(skipped) == ["block.reduce", "block.dw"]
    assert "1x1" in skipped["block.reduce"] and "groups=4" in skipped["block.dw"]
    assert skipped_convs(AlexNetCIFAR()) == {}
    odd = nn.Sequential(nn.Conv2d(3, 4, (1, 3)), nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"))
    assert [("1x3" in r, "circular" in r) for r in skipped_convs(odd).values()] == [(True, False), (False, True)]
    # the complement of what 'all' selects
    model = mixed()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(names(select_convs(model, "all")) + list(skipped_convs(model))) == sorted(convs)


def test_resolve_bases():
    selected = ["conv2", "conv3"]
    assert resolve_bases(selected, 4) == [4, 4]
    assert resolve_bases(selected, [4, 8]) == [4, 8]
    assert resolve_bases(selected, {"conv3": 8, "conv2": 4}) == [4, 8]
    with pytest.raises(DecompositionError, match=r"length 3.*2 layers"):
        resolve_bases(selected, [1, 2, 3])
    with pytest.raises(DecompositionError, match=r"unknown: \['conv9'\], missing: \['conv3'\]"):
        resolve_bases(selected, {"conv2": 4, "conv9": 8})


def conv2_full_rank(method):
    n, c, kh, kw = AlexNetCIFAR().conv2.weight.shape
    return kh * kw if method in (1, "scheme1") else min(c * kh, n * kw)


@pytest.mark.parametrize("method", [1, 2, "scheme1", "2"])
@pytest.mark.parametrize("above", [False, True])
def test_validate_refuses_bases_out_of_range(method, above):
    full = conv2_full_rank(method)
    bases = full + 1 if above else 0
    with pytest.raises(DecompositionError) as info:
        validate(AlexNetCIFAR(), ["conv2"], method, bases)
    assert all(w in str(info.value) for w in ["'conv2'", f"bases={bases}", f"[1, {full}]"])


@pytest.mark.parametrize(
    "method, opts, words",
    [
        (1, {"lam_start": -1.0}, ["lam_start=-1.0", ">= 0"]),
        ("scheme1", {"lam_steps": 0}, ["lam_steps=0", ">= 1"]),
        (1, {"lam": 0.1}, ["lam: not an option of method 'scheme1'", "lam_start"]),
        # options go to their method only: Scheme 1's are not Scheme 2's
        (2, {"lam_steps": 0}, ["lam_steps: not an option of method 'scheme2'", "its options: none"]),
        ("2", {"lam_start": 0.01}, ["lam_start: not an option of method 'scheme2'"]),
        (3, {}, ["method 3 is unknown", "valid: " + ", ".join(METHODS)]),
    ],
)
def test_validate_refuses_bad_options(method, opts, words):
    with pytest.raises(DecompositionError) as info:
        validate(AlexNetCIFAR(), ["conv2"], method, 4, **opts)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize(
    "method, opts", [(1, {"lam_start": 0.01}), (2, {}), ("channel_svd", {}), ("cp", {"progress": False})]
)
def test_validate_solves_nothing(method, opts):
    model = AlexNetCIFAR()
    plan = validate(model, "all", method, 4, **opts)
    assert [(name, b) for name, _, b in plan] == [(name, 4) for name in CIFAR_CONVS]
    assert all(conv is model.get_submodule(name) for name, conv, _ in plan)
    assert not any(isinstance(m, tuple(METHODS.values())) for m in model.modules())


def test_decompose_checks_every_layer_before_replacing_any():
    model = AlexNetCIFAR()
    with pytest.raises(DecompositionError, match="'conv1'.*bases=20"):
        decompose(model, ["conv1", "conv2"], 2, {"conv2": 4, "conv1": 20})  # conv1: min(3*5, 64*5) = 15
    assert isinstance(model.conv2, nn.Conv2d)


def test_decompose_alexnet_cifar():
    torch.manual_seed(0)
    model = AlexNetCIFAR().eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    conv2_shape = list(model.conv2.weight.shape)
    records = decompose(model, [3, 4, 5], 2, [64, 32, 32])  # indices first: replacing changes the count
    records = decompose(model, "conv2", 1, 4, **FAST) + records
    assert isinstance(model.conv2, Scheme1Conv) and isinstance(model.conv5, Scheme2Conv)
    assert model(x).shape == before.shape
    json.dumps(records)
    assert [r["name"] for r in records] == ["conv2", "conv3", "conv4", "conv5"]
    assert records[0]["shape"] == conv2_shape and records[0]["method"] == "scheme1"
    assert {r["method"] for r in records[1:]} == {"scheme2"}  # the alias 2 recorded by name
    assert records[0]["lambda"]["schedule"] == "ascending" and len(records[0]["rank1_energy"]) == 4
    assert records[1]["lambda"] is None and records[1]["bases"] == 64
    for r in records:
        assert {"rel_error", "macs_speedup", "solve_time_s"} <= set(r) and 0 <= r["rel_error"] < 1


def test_layer_record_is_the_report_without_the_history():
    conv = nn.Conv2d(3, 4, 3)
    layer = Scheme1Conv.from_conv(conv, 2, **FAST)
    record = layer_record("features.0", conv, layer)
    assert "history" in layer.report and "history" not in record
    assert record == {
        "name": "features.0",
        "shape": [4, 3, 3, 3],
        **{k: v for k, v in layer.report.items() if k != "history"},
    }
    json.dumps(record)


def test_decompose_passes_the_options_to_the_method():
    model = mixed()
    (record,) = decompose(model, "stem", "scheme1", 2, lam_schedule="fixed", lam_start=0.0, iters=3, refine_iters=0)
    assert record["lambda"]["schedule"] == "fixed" and record["refine_iters"] == 0
    assert len(model.stem.report["history"]) == 1 and len(model.stem.report["history"][0]["objective"]) <= 3


def test_decompose_nested_names():
    model = mixed()
    decompose(model, "all", 2, 3)
    assert isinstance(model.block.conv, Scheme2Conv) and isinstance(model.block.reduce, nn.Conv2d)
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 6, 8, 8)


def test_decompose_alexnet():
    model = AlexNet().eval()
    records = decompose(model, ["conv2"], 1, 2, **FAST) + decompose(model, "conv[345]", 2, 48)
    assert len(records) == 4
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
