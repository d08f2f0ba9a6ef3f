"""latency.runtime=openvino and latency.precision: the guard and the latency planner time each layer
and its dense conv compiled by OpenVINO in the precision the network will be served in (int8: each
quantized by NNCF on the layer's own input); the config refuses what cannot run before any work."""

import copy
from functools import cache

import pytest
import torch
from torch import nn

import lrx.measure.latency
import lrx.run.stages
from lrx.compress import planner
from lrx.deploy.targets import TOLERANCE
from lrx.lowrank import decompose
from lrx.lowrank.checks import DecompositionError
from lrx.lowrank.methods.scheme2 import Scheme2Conv
from lrx.measure.latency import call_of, check_runtime, compare, conv_names
from lrx.models import AlexNetCIFAR
from lrx.run import config
from lrx.runtime import RUNTIME_PRECISIONS
from lrx.runtime import openvino as ov
from tests.conftest import compose_cfg
from tests.helpers.methods import one_thread  # noqa: F401
from tests.helpers.run_if import run_if
from tests.helpers.runs import fix_planner_speedups
from tests.helpers.timing import QUICK

pytestmark = pytest.mark.usefixtures("one_thread")


def _layers() -> tuple[nn.Conv2d, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1).eval()
    return conv, Scheme2Conv.from_conv(conv, 4).eval(), torch.randn(4, 8, 8, 8)


def _rel(out, ref: torch.Tensor) -> float:
    return float((torch.as_tensor(out, dtype=torch.float32) - ref).norm() / ref.norm())


@pytest.mark.slow
@run_if(openvino=True)
@torch.no_grad()
def test_an_openvino_fp32_call_computes_the_module():
    conv, layer, x = _layers()
    for module in (conv, layer):
        out = call_of(module, x, "openvino", 1, "fp32")()  # the timed call's own outputs
        assert _rel(out[0], module(x)) < 1e-4


@pytest.mark.slow
@run_if(openvino=True)
def test_an_int8_call_compiles_the_module_quantized_on_its_own_input(monkeypatch):
    compiled, calibrated, real_compile, real_quantize = [], [], ov.compile, ov.quantize
    monkeypatch.setattr(ov, "compile", lambda model, *a: compiled.append((model, *a)) or real_compile(model, *a))
    monkeypatch.setattr(ov, "quantize", lambda m, d, **k: calibrated.append((d, k)) or real_quantize(m, d, **k))
    conv, layer, x = _layers()
    for module in (conv, layer):
        out = call_of(module, x, "openvino", 1, "int8")()
        with torch.no_grad():
            assert _rel(out[0], module(x)) <= TOLERANCE["int8"]  # quantized, not broken
    assert [(ov.is_quantized(model), precision) for model, precision, _ in compiled] == [(True, "int8")] * 2
    assert all(data[0] is x and k == {"subset_size": len(x)} for data, k in calibrated)


@torch.no_grad()
def test_a_torch_bf16_call_runs_under_autocast():
    conv, _, x = _layers()
    out = call_of(conv, x, "torch", None, "bf16")()
    assert out.dtype == torch.bfloat16 and _rel(out.float(), conv(x)) < 5e-2


@pytest.mark.parametrize("runtime, precision", [("torch", "int8"), ("onnxruntime", "bf16")])
def test_a_precision_the_runtime_lacks_is_refused(runtime, precision):
    with pytest.raises(ValueError, match=f"precision='{precision}' is not one of runtime={runtime}"):
        check_runtime(runtime, torch.device("cpu"), precision)
    with pytest.raises(DecompositionError, match=f"precision='{precision}'"):
        planner.plan(AlexNetCIFAR(), ["conv2"], 2, "latency", timed=planner.Timed(runtime=runtime, precision=precision))


@run_if(openvino=True)
@pytest.mark.slow  # every conv and both networks quantized: about 10 s
def test_compare_in_openvino_int8_names_the_runtime_and_precision():
    torch.manual_seed(0)
    base = AlexNetCIFAR(widths=(8, 8, 8, 8, 8)).eval()
    approx = copy.deepcopy(base)
    decompose(approx, ["conv2"], "scheme2", 4)
    t = compare(base, approx, 32, 2, estimator=QUICK, runtime="openvino", precision="int8", threads=1)
    assert t["setup"]["runtime"].startswith("openvino ") and t["setup"]["runtime"].endswith("(CPU, int8)")
    assert t["setup"]["dtype"] == "int8" and t["setup"]["memory_format"] == "contiguous"
    assert [n for n, v in t["layers"].items() if v["replaced"]] == ["conv2"]
    assert all(v["baseline_ms"] > 0 and v["approx_ms"] > 0 for v in t["layers"].values())


@run_if(openvino=True)
def test_the_planner_times_its_candidates_in_openvino_int8(monkeypatch):
    """Every candidate and its dense conv really run quantized in OpenVINO; the reported speed-up is
    then fixed (low-rank twice as fast), so that the plan does not depend on this machine's timing."""
    quantized, real_compile = [], ov.compile
    monkeypatch.setattr(ov, "compile", lambda m, *a: quantized.append(ov.is_quantized(m)) or real_compile(m, *a))
    timed = fix_planner_speedups(monkeypatch)
    torch.manual_seed(0)
    net = AlexNetCIFAR(widths=(8, 16, 16, 16, 8)).eval()
    chosen, report = planner.plan(
        net, ["conv3"], 1.1, "latency", batch_size=2, methods=["channel_svd"], progress=False, rank_multiple=8,
        timed=planner.Timed(QUICK, threads=1, runtime="openvino", precision="int8"),
    )  # fmt: skip
    assert report["runtime"] == "openvino" and report["precision"] == "int8"
    assert chosen["conv3"].method == "channel_svd"
    assert timed and all((t["runtime"], t["threads"], t["precision"]) == ("openvino", 1, "int8") for t in timed)
    assert quantized and all(quantized)


def _check(tmp_path, *overrides) -> list[str]:
    return config.check(compose_cfg(list(overrides), tmp_path))


@run_if(openvino=True)
def test_the_config_defaults_to_where_it_serves_and_accepts_every_servable_pair(tmp_path):
    latency = compose_cfg([], tmp_path).latency
    assert (latency.runtime, latency.precision) == ("auto", "auto")
    for precision in RUNTIME_PRECISIONS["openvino"]:
        if ov.cpu_supports(ov.precision_of(precision)):
            assert _check(tmp_path, "latency.runtime=openvino", f"latency.precision={precision}") == []


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["latency.precision=fp16"], ["latency.precision='fp16'", "fp32, bf16, int8"]),
        (
            ["latency.runtime=onnxruntime", "latency.precision=bf16"],
            ["latency.precision='bf16'", "valid: fp32, int8 or auto ("],
        ),
        (
            ["latency.runtime=torch", "latency.precision=int8"],
            ["latency.precision='int8'", "fp32, bf16 or auto (the precisions of latency.runtime=torch)"],
        ),
        (["latency.guard=false", "latency.runtime=onnxruntime", "latency.precision=bf16"], ["'bf16'", "valid: fp32"]),
    ],
)
def test_an_unknown_precision_or_one_the_runtime_lacks_is_refused(tmp_path, overrides, words):
    with pytest.raises(config.ConfigError) as info:
        _check(tmp_path, *overrides)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_openvino_without_its_extra_is_refused_naming_the_key(tmp_path, monkeypatch):
    from lrx.runtime import openvino as ov

    monkeypatch.setattr(ov, "missing_packages", lambda: ["openvino", "nncf"])
    with pytest.raises(config.ConfigError, match=r"latency.runtime=openvino needs openvino, nncf.*\.\[openvino\]"):
        _check(tmp_path, "latency.runtime=openvino", "latency.precision=int8")


@run_if(openvino=True)
def test_bf16_where_the_cpu_lacks_it_is_refused(tmp_path, monkeypatch):
    class NoBF16:
        def get_property(self, device, name):
            return {"OPTIMIZATION_CAPABILITIES": ["FP32", "INT8"], "FULL_DEVICE_NAME": "Old CPU"}[name]

    monkeypatch.setattr(ov, "_core", NoBF16)
    no_bf16 = r"latency.precision='bf16' .*openvino.*Old CPU.*valid here: fp32, int8"
    with pytest.raises(config.ConfigError, match=no_bf16):
        _check(tmp_path, "latency.runtime=openvino", "latency.precision=bf16")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(config.ConfigError, match=r"latency.precision='bf16' .*torch.*oneDNN.*valid here: fp32$"):
        _check(tmp_path, "latency.runtime=torch", "latency.precision=bf16")


def test_a_precision_nothing_times_in_is_an_ignored_key(tmp_path):
    ignored = _check(tmp_path, "latency.guard=false", "latency.runtime=openvino", "latency.precision=int8")
    assert [k.split(" ")[0] for k in ignored] == ["latency.runtime", "latency.precision"]
    assert _check(tmp_path, "decomp=none", "latency.precision=bf16")[0].startswith("latency.precision (neither")


@run_if(openvino=True)
def test_the_guard_decides_in_openvino_int8_and_its_records_say_so(monkeypatch, tmp_path, tiny_root):
    """The guard's timing runs in the configured runtime and precision (made-up times: conv2 at 0.5x)."""
    from omegaconf import open_dict

    from lrx.run.job import prepare
    from tests.helpers.data import smoke_args
    from tests.helpers.timing import QUICK_OVERRIDES

    asked = []

    def compare(baseline, approx, *args, runtime="torch", precision="fp32", **kwargs):
        asked.append((runtime, precision))
        exact = lambda v, p="": {f"{p}speedup": v, f"{p}speedup_iqr": [v, v], f"{p}unstable": False}  # noqa: E731
        layers = {}
        for name in conv_names(baseline):
            replaced = type(approx.get_submodule(name)) is not nn.Conv2d
            v = 0.5 if replaced else 1.0
            layers[name] = {"baseline_ms": 1.0, "approx_ms": 1.0 / v, **exact(v), "replaced": replaced}
        conv = {"baseline": float(len(layers)), "approx": sum(v["approx_ms"] for v in layers.values())}
        model = {"model_ms": {"baseline": 2.0, "approx": 2.0}, **exact(1.0, "model_")}
        whole = exact(conv["baseline"] / conv["approx"], "conv_")
        return {"setup": {}, "layers": layers, "conv_ms": conv, **whole, **model}

    monkeypatch.setattr(lrx.measure.latency, "compare", compare)
    overrides = [*smoke_args(tiny_root), *QUICK_OVERRIDES, "model.net.widths=[16,24,32,32,24]", "data_recon.steps=2"]
    overrides += ["latency.runtime=openvino", "latency.precision=int8", "latency.batch_sizes=[1,4]"]
    overrides += [f"baseline.cache_dir={tmp_path / 'baselines'}"]
    cfg = compose_cfg(overrides, tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]
    results = lrx.run.stages.run(prepare(cfg), tmp_path)
    (layer,) = results["layers"]
    n = torch.get_num_threads()
    at = f"openvino-int8-cpu, {n} thread{'s' if n > 1 else ''}, batch 4"
    assert layer["guard"]["at"] == at and layer["kept"] is False and at in layer["put_back_reason"]
    assert asked[0] == ("openvino", "int8")  # the guard; then the final timing, torch fp32
    assert set(asked[1:]) == {("torch", "fp32")}


@cache
def _onnx_runtime_int8_error() -> float:
    """The relative error of a conv timed in ONNX Runtime int8 (quantized on its own input)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1).eval()
    x = torch.randn(4, 8, 12, 12)
    out = torch.from_numpy(call_of(conv, x, "onnxruntime", threads=1, precision="int8")()[0])
    with torch.no_grad():
        ref = conv(x)
    return float((out - ref).norm() / ref.norm())


@run_if(onnxruntime=True)
def test_onnx_runtime_int8_times_the_layer_quantized_on_its_own_input():
    # quantized (not the float graph), and within what lrx accepts of an int8 deployment on any CPU
    # (without VNNI u8 x s8 products saturate in pairs: about 0.15 here, on AVX2)
    assert 0 < _onnx_runtime_int8_error() <= TOLERANCE["int8"]


@run_if(onnxruntime=True, vnni=True)
def test_with_vnni_onnx_runtime_int8_is_as_close_as_its_quantization_steps():
    assert _onnx_runtime_int8_error() < 0.05  # calibrated on x itself
