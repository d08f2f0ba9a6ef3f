"""ONNX graphs of torch modules, and the ONNX Runtime sessions that run them.

A module is exported with ``torch.onnx.export(..., dynamo=True)`` (the current exporter, on
onnxscript) with a dynamic batch axis, falling back to the TorchScript exporter only where the
new one fails (said in the log). A session runs on ONNX Runtime's CPU execution provider with
every graph optimisation. onnx, onnxscript and onnxruntime are the ``onnx`` extra:
``pip install -e ".[onnx]"``; nothing here is imported without it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from lrx.modes import eval_mode
from lrx.runtime import extras
from lrx.runtime.calibration import CALIBRATION_IMAGES, first_images
from lrx.runtime.cpu import has_vnni

log = logging.getLogger(__name__)
for _name in ("onnxscript", "onnx_ir"):  # their INFO lines, hundreds per export, would drown a run's log
    logging.getLogger(_name).setLevel(logging.WARNING)

EXTRA = "onnx"  # pip install -e ".[onnx]"
PACKAGES = ("onnx", "onnxscript", "onnxruntime")
OPSET = 18
PROVIDER = "CPUExecutionProvider"
OPTIMIZATION = "ORT_ENABLE_ALL"


def missing_packages() -> list[str]:
    return extras.missing(PACKAGES)


def require_onnx(key: str = "deploy.onnx=true") -> None:
    """A clear error, before any work, when the onnx extra is not installed."""
    extras.require(missing_packages(), EXTRA, key)


def write_graph(net: nn.Module, x: torch.Tensor, path: Path, opset: int = OPSET) -> str:
    """Write ``net`` (CPU, eval mode) as an ONNX graph for inputs shaped like ``x`` (any batch size)
    to ``path``; returns the exporter that worked ("dynamo" or "torchscript")."""
    x = x.expand(max(2, x.shape[0]), *x.shape[1:]).contiguous()  # a batch of 1 would fix the batch axis
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            net,
            (x,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        program.save(str(path))
        return "dynamo"
    except Exception as e:  # noqa: BLE001 - any failure of the new exporter falls back, and is reported
        log.warning(
            "the dynamo ONNX exporter failed (%s: %s); falling back to the TorchScript exporter",
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
    torch.onnx.export(
        net,
        (x,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    return "torchscript"


def quantize(path: Path, out: Path, calibration: Iterable, subset_size: int = CALIBRATION_IMAGES) -> Path:
    """The float graph at ``path`` quantized to int8 by ONNX Runtime's static quantization (QDQ
    format, uint8 activations, int8 weights per channel, MinMax ranges) on the first
    ``subset_size`` images of ``calibration``, written to ``out``. On a CPU without VNNI the weights
    use 7 bits (``reduce_range``), so that AVX2's 16-bit sums of products do not saturate
    (:mod:`lrx.runtime.cpu`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = first_images(calibration, subset_size)
    name = session(path, 1).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter({name: image.numpy()} for image in images)

        def get_next(self):
            return next(self.feeds, None)

    prepared = Path(out).with_suffix(".pre.onnx")
    quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)  # symbolic inference fails on Reshape
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=not has_vnni(),
    )
    prepared.unlink()
    return Path(out)


def session(path: Path, threads: int, options_config: dict | None = None):
    """An ONNX Runtime CPU session with every graph optimisation, ``threads`` intra-op threads and
    the session config entries ``options_config`` (e.g. lrx.runtime.serving's wait policy)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION)
    for key, value in (options_config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=[PROVIDER])


def _feed(sess, x: torch.Tensor) -> dict:
    """The input of ``sess``: ``x`` (any memory format, any device) as a contiguous CPU array."""
    return {sess.get_inputs()[0].name: x.detach().cpu().contiguous().numpy()}


def run(sess, x: torch.Tensor) -> torch.Tensor:
    """``sess`` on ``x``; its first output as a tensor."""
    return torch.from_numpy(sess.run(None, _feed(sess, x))[0])


def runtime_name() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} ({PROVIDER}, {OPTIMIZATION})"


def graph_call(
    module: nn.Module, x: torch.Tensor, threads: int, opset: int = OPSET, precision: str = "fp32"
) -> Callable[[], object]:
    """A zero-argument call that runs ``module`` (exported, CPU) in ONNX Runtime on ``x``; in int8
    the graph is quantized on the images of ``x`` itself (a layer's real input is its calibration)."""
    with tempfile.TemporaryDirectory(prefix="lrx-graph-") as folder:
        path = Path(folder) / "graph.onnx"
        with eval_mode(module), torch.no_grad():
            write_graph(module, x.detach().cpu(), path, opset)
        if precision == "int8":
            path = quantize(path, Path(folder) / "graph_int8.onnx", [x], subset_size=len(x))
        sess = session(path, threads)  # the session holds the graph in memory
    return session_call(sess, x)


def session_call(sess, x: torch.Tensor) -> Callable[[], object]:
    """A zero-argument call that runs ``sess`` on ``x``."""
    return partial(sess.run, None, _feed(sess, x))
