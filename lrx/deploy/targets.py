"""Deployment targets: a network served by a runtime in a precision, checked against its torch
network, evaluated where it runs, and timed side by side with the other networks.

A target is named ``<runtime>-<precision>``:

- ``torch-fp32``: PyTorch eager, float32, in the latency memory format;
- ``torch-bf16``: PyTorch eager under CPU autocast to bfloat16 (oneDNN's bf16 kernels: AVX-512 BF16
  or AMX);
- ``onnxruntime-fp32``, ``onnxruntime-int8``: the ONNX graph in ONNX Runtime; int8 is its static
  quantization (QDQ) on calibration images from the training split (:mod:`lrx.runtime.onnxruntime`);
- ``openvino-fp32``, ``openvino-bf16``, ``openvino-int8``: OpenVINO's CPU plugin; int8 is NNCF
  post-training quantization on calibration images from the training split
  (:mod:`lrx.runtime.openvino`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lrx.measure.latency import unsupported
from lrx.modes import eval_mode
from lrx.runtime import RUNTIME_PRECISIONS
from lrx.runtime import onnxruntime as ort
from lrx.runtime import openvino as ov
from lrx.runtime.calibration import CALIBRATION_IMAGES
from lrx.runtime.serving import Serving

TARGETS = tuple(f"{r}-{p}" for r, ps in RUNTIME_PRECISIONS.items() for p in ps)
AUTO = "auto"  # deploy.targets: every target this installation and CPU serve
# A deployed network's logits on the check images agree with its torch network's within this
# relative error (||difference|| / ||torch logits||): float32 to rounding, bf16 to its 8-bit
# mantissa, int8 to its quantization steps.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "int8": 0.25}


class TargetError(ValueError):
    """A target that is unknown, or that this machine or installation cannot serve."""


@dataclass(frozen=True)
class Target:
    runtime: str
    precision: str

    @classmethod
    def of(cls, name: str, key: str = "deploy.targets") -> Target:
        """The target called ``name``; a TargetError naming ``key`` and the valid names."""
        runtime, _, precision = str(name).rpartition("-")
        if precision not in RUNTIME_PRECISIONS.get(runtime, ()):
            raise TargetError(f"{key}: {name!r} is not a deployment target; valid: {', '.join(TARGETS)}")
        return cls(runtime, precision)

    def matches(self, runtime: str, precision: str) -> bool:
        """Whether this target has ``runtime`` and ``precision`` (either ``auto``: any)."""
        return runtime in (AUTO, self.runtime) and precision in (AUTO, self.precision)

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def require(self, key: str = "deploy.targets") -> None:
        """A TargetError, before any work, when this installation or CPU cannot serve the target:
        a missing extra, or a precision the CPU lacks (where the runtime would silently fall back)."""
        try:
            if self.runtime == "onnxruntime":
                ort.require_onnx(f"{key}: {self.name}")
            if self.runtime == "openvino":
                ov.require_openvino(f"{key}: {self.name}")
        except ImportError as e:
            raise TargetError(str(e)) from None
        why = unsupported(self.runtime, self.precision)
        if why:
            raise TargetError(f"{key}: {self.name} is not served natively on this CPU: {why}")


def servable(names, key: str = "deploy.targets") -> list[Target]:
    """The targets called ``names``, each one this installation and CPU serve; a TargetError
    naming ``key`` for the first that is unknown or not served."""
    targets = [Target.of(name, key) for name in names]
    for target in targets:
        target.require(key)
    return targets


@dataclass
class Deployed:
    """A network in a target: ``run(x)`` gives its logits (float32), ``timer(x)`` a call without
    arguments for the estimator, ``files`` what :func:`save` keeps of it."""

    target: Target
    run: Callable[[torch.Tensor], torch.Tensor]
    timer: Callable[[torch.Tensor], Callable[[], object]]
    save: Callable[[Path], list[str]] = lambda folder: []
    info: dict = field(default_factory=dict)


def _torch(net: nn.Module, precision: str, memory_format: torch.memory_format) -> Deployed:
    net = net.eval().to(memory_format=memory_format)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            return net(x.contiguous(memory_format=memory_format)).float()

    def timer(x: torch.Tensor) -> Callable[[], object]:
        return partial(run, x.contiguous(memory_format=memory_format))

    return Deployed(Target("torch", precision), run, timer)


def _onnxruntime(
    net: nn.Module,
    precision: str,
    example: torch.Tensor,
    serving: Serving,
    folder: Path,
    calibration,
    images: int,
    opset: int,
) -> Deployed:
    path = folder / "graph.onnx"
    with eval_mode(net), torch.no_grad():
        exporter = ort.write_graph(net.cpu(), example, path, opset)
    if precision == "int8":
        path = ort.quantize(path, folder / "graph_int8.onnx", calibration, images)
    sess = ort.session(path, serving.threads, serving.settings)
    graph = path.read_bytes()

    def save(dest: Path) -> list[str]:
        (dest / "model.onnx").write_bytes(graph)
        return ["model.onnx"]

    return Deployed(
        Target("onnxruntime", precision),
        partial(ort.run, sess),
        partial(ort.session_call, sess),
        save,
        {"exporter": exporter, "opset": opset, "runtime": f"{ort.runtime_name()}, {precision}"},
    )


def _openvino(net: nn.Module, precision: str, example: torch.Tensor, serving: Serving, calibration, images: int):
    model = ov.convert(net, example)
    if precision == "int8":
        model = ov.quantize(model, calibration, images)
    compiled = ov.compile(model, ov.precision_of(precision), serving.threads, serving.settings)

    def save(dest: Path) -> list[str]:
        xml = ov.save(model, dest / "model.xml")
        return [xml.name, xml.with_suffix(".bin").name]

    return Deployed(
        Target("openvino", precision),
        partial(ov.run, compiled),
        partial(ov.graph_call, compiled),
        save,
        {"runtime": ov.runtime_name(ov.precision_of(precision))},
    )


def deploy(
    net: nn.Module,
    target: Target,
    example: torch.Tensor,
    threads: int,
    workdir: Path,
    memory_format: torch.memory_format = torch.channels_last,
    calibration: Iterable | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    serving: Serving | None = None,
    opset: int = ort.OPSET,
) -> Deployed:
    """``net`` (eval mode, CPU, float32) served by ``target`` for inputs shaped like ``example``
    (any batch size), with ``threads`` threads and the runtime's default wait policy, or as
    ``serving`` says (lrx.runtime.serving; torch's must already be in this process's environment);
    int8 calibrates on ``calibration`` (training images, never validation or test). ONNX Runtime
    serves the graph exported at ONNX ``opset``. ``workdir`` holds intermediate files."""
    if target.precision == "int8" and calibration is None:
        raise TargetError(f"{target.name} needs calibration images (training images for its int8 quantization)")
    serving = serving or Serving.of(target.runtime, threads)
    if serving.runtime != target.runtime:
        raise TargetError(f"{target.name} cannot be served with a setting for {serving.runtime}")
    if target.runtime == "torch":
        d = _torch(net, target.precision, memory_format)
    elif target.runtime == "onnxruntime":
        d = _onnxruntime(net, target.precision, example, serving, Path(workdir), calibration, calibration_images, opset)
    else:
        d = _openvino(net, target.precision, example, serving, calibration, calibration_images)
    d.info["serving"] = serving.as_dict()
    return d


def check(deployed: Deployed, net: nn.Module, images: torch.Tensor) -> dict:
    """The deployed network against its torch network (float32, eval) on ``images``: the relative
    error ||deployed - torch|| / ||torch|| of their logits, the largest |difference| relative to
    the largest |logit|, and the share of images whose top-1 class agrees; a TargetError where the
    relative error exceeds the target precision's tolerance."""
    with eval_mode(net), torch.no_grad():
        ref = net(images)
    out = deployed.run(images)
    tiny = torch.finfo(ref.dtype).tiny
    rel = float((out - ref).norm()) / max(float(ref.norm()), tiny)
    max_rel = float((out - ref).abs().max()) / max(float(ref.abs().max()), tiny)
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    tolerance = TOLERANCE[deployed.target.precision]
    if not rel <= tolerance:
        raise TargetError(
            f"{deployed.target.name} disagrees with its torch network on {len(images)} validation images: "
            f"relative error {rel:.2e} > {tolerance:g} (top-1 agreement {agree:.0%})"
        )
    return {
        "rel_error": rel,
        "max_rel_error": max_rel,
        "top1_agreement": agree,
        "tolerance": tolerance,
        "check_images": len(images),
    }


def deployed_accuracy(deployed: Deployed, loader, max_batches: int | None = None, desc: str = "acc@1") -> float:
    """acc@1 in percent of the deployed network over ``loader``, computed where it runs."""
    correct = total = 0
    n = len(loader) if max_batches is None else min(max_batches, len(loader))
    for i, (x, y) in enumerate(tqdm(loader, total=n, desc=desc, leave=False)):
        if i == n:
            break
        correct += int((deployed.run(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / total
