"""OpenVINO models of torch modules, compiled for the CPU in f32, bf16 or int8.

A module is converted with ``openvino.convert_model(..., dynamo=True)`` (torch.export) with a
dynamic batch axis, falling back to TorchScript tracing only where torch.export fails (said in the
log). int8 is NNCF post-training quantization of the converted model on calibration images. A
compiled model runs on OpenVINO's CPU plugin with the latency hint, one stream and a given number
of threads. openvino and nncf are the ``openvino`` extra: ``pip install -e ".[openvino]"``; nothing
here is imported without it.
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrx.modes import eval_mode
from lrx.runtime import extras
from lrx.runtime.calibration import CALIBRATION_IMAGES, first_images
from lrx.runtime.cpu import has_vnni

log = logging.getLogger(__name__)

EXTRA = "openvino"  # pip install -e ".[openvino]"
PACKAGES = ("openvino", "nncf")
DEVICE = "CPU"
PRECISIONS = ("f32", "bf16", "int8")
CAPABILITY = {"bf16": "BF16", "int8": "INT8"}  # OPTIMIZATION_CAPABILITIES of the CPU plugin
# the CPU layer types that do a network's arithmetic; layer_precisions reports the rest too
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution")


def missing_packages() -> list[str]:
    return extras.missing(PACKAGES)


def require_openvino(key: str = "deploy.openvino") -> None:
    """A clear error, before any work, when the openvino extra is not installed."""
    extras.require(missing_packages(), EXTRA, key)


@cache
def _core():
    import openvino as ov

    return ov.Core()


def precision_of(precision: str) -> str:
    """OpenVINO's name of a precision as lrx names it (``fp32`` -> ``f32``; bf16, int8 as they are)."""
    return "f32" if precision == "fp32" else precision


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {precision!r}: one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class Support:
    """Whether this CPU runs a precision natively (true as a bool when it does), and why not."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def cpu_supports(precision: str) -> Support:
    """Whether OpenVINO's CPU plugin runs ``precision`` natively here, from the capabilities it
    reports (OPTIMIZATION_CAPABILITIES: "BF16" needs AVX-512 BF16 or AMX, "INT8" an x86-64 CPU).
    Asked for bf16 on a CPU without it, OpenVINO silently runs f32 instead, so check first."""
    _check_precision(precision)
    if precision == "f32":
        return Support(True)
    capabilities = list(_core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
    if CAPABILITY[precision] in capabilities:
        return Support(True)
    name = _core().get_property(DEVICE, "FULL_DEVICE_NAME")
    return Support(
        False,
        f"OpenVINO's CPU plugin reports no {CAPABILITY[precision]} on {name} (capabilities: {', '.join(capabilities)})",
    )


def convert(module: nn.Module, example: torch.Tensor):
    """``module`` (eval mode, CPU, float32) as an ``openvino.Model`` for inputs shaped like
    ``example`` with any batch size. Converts a private copy, so the model never shares weights
    with ``module`` (torch.export conversion would, whatever ``share_weights`` says)."""
    import openvino as ov

    net = copy.deepcopy(module).to("cpu", torch.float32)
    example = example.detach().to("cpu", torch.float32)
    example = example.expand(max(2, example.shape[0]), *example.shape[1:]).contiguous()  # batch 1 would be fixed
    shape = [(-1, *example.shape[1:])]  # -1: the batch axis is dynamic
    with eval_mode(net), torch.no_grad():
        try:
            model = ov.convert_model(net, example_input=example, input=shape, dynamo=True)
        except Exception as e:  # noqa: BLE001 - any failure of torch.export falls back, and is reported
            log.warning(
                "OpenVINO conversion with torch.export failed (%s: %s); falling back to TorchScript tracing",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
            model = ov.convert_model(net, example_input=example, input=shape, share_weights=False)
    if model.inputs[0].get_partial_shape()[0].is_static:
        model.reshape([-1, *example.shape[1:]])
    return model


def quantize(model, calibration: Iterable, subset_size: int = CALIBRATION_IMAGES):
    """``model`` (an ``openvino.Model`` in float) quantized to int8 by NNCF post-training
    quantization (default preset, for the CPU) on the first ``subset_size`` images of
    ``calibration``: tensors shaped (B, C, H, W) or (images, labels) batches such as a DataLoader's.
    The images are fed one at a time, so ``subset_size`` counts images, as NNCF means it. On a CPU
    without VNNI every layer's weights use 7 bits (NNCF's overflow fix), so that AVX2's 16-bit sums
    of products do not saturate (:mod:`lrx.runtime.cpu`)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    images = [image.numpy() for image in first_images(calibration, subset_size)]
    return nncf.quantize(
        model,
        nncf.Dataset(images),
        subset_size=len(images),
        target_device=nncf.TargetDevice.CPU,
        advanced_parameters=None if has_vnni() else AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
    )


def is_quantized(model) -> bool:
    """Whether ``model`` holds NNCF's quantization (FakeQuantize operations)."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def compile(model, precision: str, threads: int, properties: dict | None = None):
    """``model`` compiled for OpenVINO's CPU plugin in ``precision`` with the latency hint, one
    stream, ``threads`` inference threads and any further ``properties`` (e.g. lrx.runtime.serving's
    ENABLE_CPU_PINNING). Refuses a precision the CPU lacks (see cpu_supports)
    and an int8 request for a model NNCF did not quantize."""
    _check_precision(precision)
    support = cpu_supports(precision)
    if not support:
        raise RuntimeError(f"OpenVINO {precision}: {support.reason}")
    if (precision == "int8") != is_quantized(model):
        needs = "a model quantized by quantize()" if precision == "int8" else "a float model, not a quantized one"
        raise ValueError(f"OpenVINO {precision} needs {needs}")
    # The CPU plugin defaults to bf16 where the CPU has it (AVX-512 BF16, AMX), so f32 must be asked
    # for. Quantized operations run in int8 whatever this hint says (it picks the precision of the
    # operations NNCF left in float): int8 asks for f32 there, so that "int8" means int8 and f32 alone,
    # the same on every CPU, and the comparison with f32 shows what int8 did, not bf16.
    hint = "bf16" if precision == "bf16" else "f32"
    config = {
        "INFERENCE_PRECISION_HINT": hint,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
        **(properties or {}),
    }
    compiled = _core().compile_model(model, DEVICE, config)
    granted = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # what the plugin settled on
    if granted != hint:
        raise RuntimeError(f"OpenVINO was asked for {hint} and compiled {granted}")
    return compiled


def layer_precisions(compiled) -> Counter:
    """How many layers of each type ran in each precision, from the compiled (runtime) model:
    ``{("Convolution", "u8"): 5, ...}``; constants, inputs and outputs left out."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        if layer not in ("Const", "Input", "Output"):
            counts[layer, info["runtimePrecision"].astype(str)] += 1
    return counts


def _array(x: torch.Tensor) -> np.ndarray:
    """``x`` (any memory format, any device) as a contiguous float32 CPU array."""
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def run(compiled, x: torch.Tensor) -> torch.Tensor:
    """``compiled`` on ``x``; its first output as a float32 tensor."""
    out = compiled(_array(x))[0]
    return torch.from_numpy(np.array(out, dtype=np.float32))


def graph_call(compiled, x: torch.Tensor) -> Callable[[], object]:
    """A zero-argument call that runs ``compiled`` on ``x`` and returns when it is done: one
    infer request whose input tensor is set once; its outputs are not copied out."""
    import openvino as ov

    request = compiled.create_infer_request()
    # a copy the tensor owns: a tensor sharing a numpy array's memory keeps the array alive only
    # while its Python object lives, not while the request holds it
    request.set_input_tensor(ov.Tensor(_array(x)))
    return partial(request.infer, None, share_outputs=True)  # synchronous: returns after the outputs are written


def module_call(module: nn.Module, x: torch.Tensor, precision: str, threads: int) -> Callable[[], object]:
    """A zero-argument call that runs ``module`` on ``x``, converted and compiled on its own in
    ``precision`` (f32, bf16, int8) with ``threads`` threads; int8 quantizes it on the images of
    ``x`` itself (a layer's real input is its calibration)."""
    model = convert(module, x)
    if precision == "int8":
        model = quantize(model, [x], subset_size=len(x))
    return graph_call(compile(model, precision, threads), x)


def save(model, path: Path | str) -> Path:
    """``model`` as OpenVINO IR: ``path`` (.xml) and its weights beside it (.bin), exactly (no fp16
    compression of float weights)."""
    import openvino as ov

    path = Path(path).with_suffix(".xml")
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def load(path: Path | str):
    """The ``openvino.Model`` saved at ``path`` (.xml, with its .bin beside it)."""
    return _core().read_model(str(Path(path).with_suffix(".xml")))


def runtime_name(precision: str) -> str:
    _check_precision(precision)
    return f"openvino {importlib.metadata.version('openvino')} ({DEVICE}, {precision})"
