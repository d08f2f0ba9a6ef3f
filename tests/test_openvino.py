"""OpenVINO deployment: conversion with a dynamic batch axis, f32 and bf16 agreement with torch,
NNCF int8 that really runs in int8, saved models that load and run the same, a timing call, and
clear errors without the extra or without a precision on this CPU."""

import importlib.util
import logging
import sys

import pytest
import torch
from torch import nn

from lrx.deploy.targets import TOLERANCE
from lrx.lowrank import decompose
from lrx.models import AlexNetCIFAR
from lrx.runtime import openvino as ovr
from lrx.runtime.cpu import has_vnni
from tests.helpers.run_if import run_if

pytestmark = run_if(openvino=True)

SIZE = 16  # the tiny network's images
INT8_RTOL = 0.1  # int8 error relative to the largest |logit| with VNNI; about 1% in practice


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def assert_agrees(out: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    """``out`` matches ``ref`` within ``rtol`` of the largest |logit| (logits near 0 get no slack of their own)."""
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, as lrx.deploy.targets.check measures a deployment."""
    return float((out - ref).norm() / ref.norm())


def conv_precisions(compiled) -> set[str]:
    return {precision for (layer, precision) in ovr.layer_precisions(compiled) if layer == "Convolution"}


@pytest.fixture(scope="module")
def tiny():
    net = tiny_net()
    return net, ovr.convert(net, torch.randn(1, 3, SIZE, SIZE))


@pytest.fixture(scope="module")
def tiny_int8(tiny):
    torch.manual_seed(1)
    calibration = [(torch.randn(8, 3, SIZE, SIZE), torch.zeros(8, dtype=torch.long)) for _ in range(4)]
    return ovr.quantize(tiny[1], calibration, subset_size=32)


def test_conversion_leaves_the_module_alone_and_keeps_no_tie_to_its_weights():
    net = tiny_net().train()
    model = ovr.convert(net, torch.randn(1, 3, SIZE, SIZE))
    assert net.training  # eval mode only for the conversion
    assert model.inputs[0].get_partial_shape()[0].is_dynamic
    x = torch.randn(2, 3, SIZE, SIZE)
    before = ovr.run(ovr.compile(model, "f32", threads=1), x)
    with torch.no_grad():
        net[0].weight.mul_(2)  # fine-tuning or surgery of the module afterwards
    torch.testing.assert_close(ovr.run(ovr.compile(model, "f32", threads=1), x), before, rtol=0, atol=0)


def test_torchscript_tracing_is_the_fallback(monkeypatch, caplog):
    import openvino as ov

    real = ov.convert_model

    def export_fails(*args, dynamo=False, **kwargs):
        if dynamo:
            raise RuntimeError("unsupported op")
        return real(*args, **kwargs)

    monkeypatch.setattr(ov, "convert_model", export_fails)
    net = tiny_net()
    with pytest.warns(FutureWarning):  # torch.jit.trace is deprecated: the reason it is only the fallback
        model = ovr.convert(net, torch.randn(1, 3, SIZE, SIZE))
    assert "torch.export failed (RuntimeError: unsupported op)" in caplog.text
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = net(x)
    assert_agrees(ovr.run(ovr.compile(model, "f32", threads=1), x), ref, rtol=1e-4)


def test_f32_agrees_with_torch_at_any_batch_size_and_runs_in_f32(tiny):
    net, model = tiny
    compiled = ovr.compile(model, "f32", threads=1)
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            ref = net(x)
        assert_agrees(ovr.run(compiled, x), ref, rtol=1e-4)
    assert conv_precisions(compiled) == {"f32"}  # not the plugin's bf16 default on a bf16 CPU


@run_if(target="openvino-bf16")
def test_bf16_agrees_with_torch_within_bf16_precision(tiny):
    net, model = tiny
    compiled = ovr.compile(model, "bf16", threads=1)
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = net(x)
    assert_agrees(ovr.run(compiled, x), ref, rtol=2e-2)  # bf16 keeps 8 bits of mantissa: ~4e-3 a rounding
    assert conv_precisions(compiled) == {"bf16"}


@pytest.fixture(scope="module")
def int8_and_torch(tiny, tiny_int8):
    """The tiny network's logits in OpenVINO int8 and in torch, on the same images."""
    torch.manual_seed(2)
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = tiny[0](x)
    return ovr.run(ovr.compile(tiny_int8, "int8", threads=1), x), ref


def test_int8_runs_in_int8_and_stays_close_to_torch(tiny_int8, int8_and_torch):
    # An untrained network's logits lie close together, so top-1 agreement would flip on rounding
    # noise; the error is the sound check, and the layer precisions show the convolutions really
    # ran in int8 (a model left in float would pass any loose check). On every CPU the error stays
    # within what lrx accepts of an int8 deployment (lrx.deploy.targets.check): without VNNI, u8 x s8
    # products saturate in pairs (about 0.12 here, on AVX2).
    assert ovr.is_quantized(tiny_int8)
    assert conv_precisions(ovr.compile(tiny_int8, "int8", threads=1)) in ({"u8"}, {"i8"}, {"u8", "i8"})
    out, ref = int8_and_torch
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert 0 < rel_error(out, ref) <= TOLERANCE["int8"]


@run_if(vnni=True)
def test_with_vnni_int8_is_as_close_as_its_quantization_steps(int8_and_torch):
    assert_agrees(*int8_and_torch, rtol=INT8_RTOL)


def test_a_precision_must_match_the_model(tiny, tiny_int8):
    with pytest.raises(ValueError, match="int8 needs a model quantized by quantize"):
        ovr.compile(tiny[1], "int8", threads=1)
    with pytest.raises(ValueError, match="f32 needs a float model"):
        ovr.compile(tiny_int8, "f32", threads=1)
    with pytest.raises(ValueError, match="unknown OpenVINO precision 'fp16'"):
        ovr.compile(tiny[1], "fp16", threads=1)


def test_calibration_counts_images_from_batches_or_labelled_batches(tiny, monkeypatch, caplog):
    import nncf

    seen = {}

    def fake_quantize(model, dataset, subset_size, **kwargs):
        seen.update(items=list(dataset.get_inference_data()), subset_size=subset_size, **kwargs)
        return model

    monkeypatch.setattr(nncf, "quantize", fake_quantize)
    batches = [(torch.randn(8, 3, SIZE, SIZE), torch.zeros(8)) for _ in range(5)]
    ovr.quantize(tiny[1], batches, subset_size=20)
    assert seen["subset_size"] == 20 and len(seen["items"]) == 20
    assert all(item.shape == (1, 3, SIZE, SIZE) for item in seen["items"])
    assert seen["target_device"] == nncf.TargetDevice.CPU
    with caplog.at_level(logging.WARNING, logger=ovr.__name__):
        ovr.quantize(tiny[1], [torch.randn(3, 3, SIZE, SIZE)], subset_size=20)
    assert seen["subset_size"] == 3 and "3 images, fewer than the 20" in caplog.text
    with pytest.raises(ValueError, match="needs calibration images"):
        ovr.quantize(tiny[1], [], subset_size=20)


def test_saved_models_load_and_run_exactly_the_same(tiny, tiny_int8, tmp_path):
    x = torch.randn(3, 3, SIZE, SIZE)
    for precision, model in (("f32", tiny[1]), ("int8", tiny_int8)):
        path = ovr.save(model, tmp_path / precision)
        assert path == tmp_path / f"{precision}.xml" and (tmp_path / f"{precision}.bin").is_file()
        expected = ovr.run(ovr.compile(model, precision, threads=1), x)
        loaded = ovr.compile(ovr.load(path), precision, threads=1)
        torch.testing.assert_close(ovr.run(loaded, x), expected, rtol=0, atol=0)


def test_the_timing_call_runs_the_model_on_its_input(tiny):
    net, model = tiny
    compiled = ovr.compile(model, "f32", threads=1)
    x = torch.randn(4, 3, SIZE, SIZE).to(memory_format=torch.channels_last)  # graph_call copies it: no tie to x
    with torch.no_grad():
        ref = net(x)
    call = ovr.graph_call(compiled, x)
    del x
    for _ in range(3):  # one request, run again and again
        assert_agrees(torch.from_numpy(call()[0].copy()), ref, rtol=1e-4)


def test_a_precision_this_cpu_lacks_is_refused_with_the_reason(tiny, monkeypatch):
    class NoBF16:
        def get_property(self, device, name):
            return {"OPTIMIZATION_CAPABILITIES": ["FP32", "INT8"], "FULL_DEVICE_NAME": "Old CPU"}[name]

    monkeypatch.setattr(ovr, "_core", NoBF16)
    support = ovr.cpu_supports("bf16")
    assert not support and "no BF16 on Old CPU" in support.reason
    assert ovr.cpu_supports("int8") and ovr.cpu_supports("f32")
    with pytest.raises(RuntimeError, match="OpenVINO bf16: .*no BF16 on Old CPU"):
        ovr.compile(tiny[1], "bf16", threads=1)


def test_runtime_name_says_version_device_and_precision():
    assert ovr.runtime_name("int8").startswith("openvino 20") and ovr.runtime_name("int8").endswith("(CPU, int8)")


def test_without_the_extra_the_module_imports_and_the_error_names_it(monkeypatch):
    for name in ovr.PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)  # import fails, find_spec finds nothing
    spec = importlib.util.spec_from_file_location("lrx_runtime_openvino_bare", ovr.__file__)
    bare = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bare)
    spec.loader.exec_module(bare)  # nothing of openvino or nncf at import
    assert bare.missing_packages() == ["openvino", "nncf"]
    message = r'deploy.openvino=true needs openvino, nncf: install the extra with pip install -e "\.\[openvino\]"'
    with pytest.raises(ImportError, match=message):
        bare.require_openvino("deploy.openvino=true")


@pytest.mark.slow
@pytest.mark.parametrize("method", [None, "scheme2", "cp"])
def test_alexnet_with_and_without_low_rank_layers_deploys_in_every_precision(method):
    torch.manual_seed(0)
    net = AlexNetCIFAR().eval()
    if method:
        decompose(net, ["conv2", "conv3"], method, bases=16)
    model = ovr.convert(net, torch.randn(1, 3, 32, 32))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    for batch in (1, 5):
        assert_agrees(ovr.run(ovr.compile(model, "f32", threads=2), x[:batch]), ref[:batch], rtol=1e-4)
    if ovr.cpu_supports("bf16"):
        assert_agrees(ovr.run(ovr.compile(model, "bf16", threads=2), x), ref, rtol=2e-2)
    quantized = ovr.quantize(model, [torch.randn(8, 3, 32, 32) for _ in range(4)], subset_size=32)
    compiled = ovr.compile(quantized, "int8", threads=2)
    assert conv_precisions(compiled) in ({"u8"}, {"i8"}, {"u8", "i8"})
    out = ovr.run(compiled, x)
    assert rel_error(out, ref) <= TOLERANCE["int8"]  # what lrx accepts of an int8 deployment, on any CPU
    if has_vnni():  # int8 products summed exactly: within its quantization steps
        assert_agrees(out, ref, rtol=INT8_RTOL)
