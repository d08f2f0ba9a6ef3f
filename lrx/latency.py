"""Measured latency: whole models and single layers, baseline and low-rank side by side.

Every timing uses eval mode and ``torch.inference_mode()``, warm-up runs, and the median of
repeated runs; CUDA is synchronised around each run. Modules compared with each other run
interleaved (round-robin, one call each per round), so drifts of clock and load hit all sides
alike.

``runtime="onnxruntime"`` times each module instead as its own ONNX graph in ONNX Runtime (CPU,
every graph optimisation, torch's thread count; :mod:`lrx.onnx_graphs`), on the same input.

Two speed-ups are named the same everywhere (DESIGN.md, section 4):
- conv speed-up: summed latency of ALL conv layers of the baseline / the same sum for the
  approximated model, each layer timed on its real input shape (a replaced layer as its whole
  low-rank module; an untouched conv is timed once and counts on both sides);
- model speed-up: end-to-end forward latency of the baseline / the approximated model.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn

from lrx.modes import eval_mode
from lrx.modes import memory_format as in_format

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
RUNTIMES = ("torch", "onnxruntime")  # where modules are timed: PyTorch eager, or ONNX Runtime (the onnx extra)


def memory_format_of(name: str) -> torch.memory_format:
    """The torch memory format called ``name`` (a key of MEMORY_FORMATS); a clear error otherwise."""
    if name not in MEMORY_FORMATS:
        raise ValueError(f"memory_format={name!r} is unknown; valid: {', '.join(MEMORY_FORMATS)}")
    return MEMORY_FORMATS[name]


@dataclass(frozen=True)
class Setup:
    """What a latency figure was measured under."""

    device: str
    threads: int
    batch_size: int
    dtype: str = "float32"
    memory_format: str = "contiguous"
    cudnn_benchmark: bool | None = None
    runtime: str = "torch"

    def as_dict(self) -> dict:
        return asdict(self)


def setup_for(
    device: torch.device, batch_size: int, memory_format: str = "contiguous", runtime: str = "torch"
) -> Setup:
    cuda = device.type == "cuda"
    if runtime == "onnxruntime":
        from lrx.onnx_graphs import runtime_name

        return Setup("cpu", torch.get_num_threads(), batch_size, runtime=runtime_name())
    return Setup(
        device=torch.cuda.get_device_name(device) if cuda else "cpu",
        threads=torch.get_num_threads(),
        batch_size=batch_size,
        memory_format=memory_format,
        cudnn_benchmark=torch.backends.cudnn.benchmark if cuda else None,
    )


def machine() -> str:
    """The CPU's model name and core count, e.g. "Intel(R) Xeon(R) ..., 2 cores" (what a figure was measured on)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def spread(values: list[float]) -> dict:
    """The median, min and max of repeated measurements, and the measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def check_runtime(runtime: str, device: torch.device) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is unknown; valid: {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"runtime=onnxruntime times on the CPU only, not on {device.type}")


def devices() -> list[torch.device]:
    """Devices to time on: the CPU, and the current CUDA device when there is one."""
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def interleaved_ms(
    calls: Mapping[str, Callable[[], object]], device: torch.device, warmup: int = 3, repeats: int = 10
) -> dict[str, float]:
    """Median milliseconds of each zero-argument call, measured round-robin (one call of each
    per round), synchronised on CUDA."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, call in calls.items():
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            times[k].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def modules_ms(
    modules: Mapping[str, nn.Module], x: torch.Tensor, warmup: int = 3, repeats: int = 10, runtime: str = "torch"
) -> dict[str, float]:
    """Median milliseconds of ``m(x)`` for each module (eval mode), interleaved on the same input,
    in ``runtime`` (one of RUNTIMES)."""
    check_runtime(runtime, x.device)
    if runtime == "onnxruntime":
        from lrx.onnx_graphs import graph_call

        calls = {k: graph_call(m, x, torch.get_num_threads()) for k, m in modules.items()}
        return interleaved_ms(calls, x.device, warmup, repeats)
    with eval_mode(*modules.values()):
        return interleaved_ms({k: partial(m, x) for k, m in modules.items()}, x.device, warmup, repeats)


def median_ms(net: nn.Module, x: torch.Tensor, warmup: int = 3, repeats: int = 10, runtime: str = "torch") -> float:
    """Median milliseconds of ``net(x)``."""
    return modules_ms({"net": net}, x, warmup, repeats, runtime)["net"]


@torch.inference_mode()
def layer_inputs(net: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The real input tensor of each named module for the network input ``x``."""
    captured: dict[str, torch.Tensor] = {}
    handles = [
        net.get_submodule(name).register_forward_pre_hook(lambda m, args, name=name: captured.setdefault(name, args[0]))
        for name in names
    ]
    try:
        with eval_mode(net):
            net(x)
    finally:
        for h in handles:
            h.remove()
    return captured


def conv_names(net: nn.Module) -> list[str]:
    return [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]


def layer_timings(
    baseline: nn.Module,
    approx: nn.Module,
    x: torch.Tensor,
    warmup: int = 3,
    repeats: int = 10,
    runtime: str = "torch",
) -> dict[str, dict]:
    """Every conv of ``baseline`` timed on its real input for the network input ``x``: a replaced
    one against its low-rank module in ``approx`` (interleaved), an untouched one once, counting
    on both sides. ``{name: {"baseline_ms", "approx_ms", "speedup", "replaced"}}``."""
    names = conv_names(baseline)
    inputs = layer_inputs(baseline, names, x)
    layers = {}
    for name in names:
        base_m, approx_m = baseline.get_submodule(name), approx.get_submodule(name)
        if type(approx_m) is type(base_m):  # untouched (or put back by the guard)
            ms = median_ms(base_m, inputs[name], warmup, repeats, runtime)
            layers[name] = {"baseline_ms": ms, "approx_ms": ms, "speedup": 1.0, "replaced": False}
            continue
        t = modules_ms({"baseline": base_m, "approx": approx_m}, inputs[name], warmup, repeats, runtime)
        layers[name] = {
            "baseline_ms": t["baseline"],
            "approx_ms": t["approx"],
            "speedup": t["baseline"] / t["approx"],
            "replaced": True,
        }
    return layers


def compare(
    baseline: nn.Module,
    approx: nn.Module,
    input_size: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    memory_format: str = "contiguous",
    runtime: str = "torch",
) -> dict:
    """Time ``baseline`` against ``approx`` (the same network with some convs replaced).

    Returns the setup, per-conv latencies (``baseline_ms``, ``approx_ms``, ``speedup``), the
    conv speed-up and the model speed-up, all measured side by side in this process.
    ``approx`` must keep the baseline's module names for the replaced layers. With
    ``memory_format="channels_last"`` both networks and the input run channels_last (in torch;
    ONNX Runtime is fed NCHW and chooses its own layouts).
    """
    device = torch.device(device)
    check_runtime(runtime, device)
    memory_format = memory_format if runtime == "torch" else "contiguous"
    fmt = memory_format_of(memory_format)
    with in_format(fmt, baseline, approx, device=device):
        x = torch.randn(batch_size, 3, input_size, input_size, device=device).contiguous(memory_format=fmt)
        layers = layer_timings(baseline, approx, x, warmup, repeats, runtime)
        whole = modules_ms({"baseline": baseline, "approx": approx}, x, warmup, repeats, runtime)
    conv_base = sum(v["baseline_ms"] for v in layers.values())
    conv_approx = sum(v["approx_ms"] for v in layers.values())
    return {
        "setup": setup_for(device, batch_size, memory_format, runtime).as_dict(),
        "layers": layers,
        "conv_ms": {"baseline": conv_base, "approx": conv_approx},
        "conv_speedup": conv_base / conv_approx,
        "model_ms": whole,
        "model_speedup": whole["baseline"] / whole["approx"],
    }
