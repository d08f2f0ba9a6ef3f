"""Measured latency: whole models and single layers, baseline and low-rank side by side.

Every timing goes through :mod:`lrx.measure.estimator` (warm-up by time, paired rounds in random order,
the median of per-round ratios with its interquartile range, adaptive stopping), in eval mode
and ``torch.inference_mode()``, at a given torch thread count.

``runtime="onnxruntime"`` times each module instead as its own ONNX graph in ONNX Runtime (CPU,
every graph optimisation, the same thread count; :mod:`lrx.runtime.onnxruntime`), on the same input;
``runtime="openvino"`` as its own model compiled by OpenVINO's CPU plugin (:mod:`lrx.runtime.openvino`).
``precision`` is what the runtime computes in: fp32; bf16 (torch: CPU autocast; OpenVINO); int8
(OpenVINO: each module quantized by NNCF on the input it is timed on). The pairs each runtime
has: :data:`lrx.runtime.RUNTIME_PRECISIONS`.

Two speed-ups are named the same everywhere (docs/DESIGN.md, section 3):
- conv speed-up: summed latency of ALL conv layers of the baseline / the same sum for the
  approximated model, each layer timed on its real input shape (a replaced layer as its whole
  low-rank module; an untouched conv is timed once and counts on both sides), per round;
- model speed-up: end-to-end forward latency of the baseline / the approximated model.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn
from tqdm.auto import tqdm

from lrx.measure.estimator import DEFAULT_ESTIMATOR, Estimator, Ratio, Timing, measure
from lrx.modes import eval_mode
from lrx.modes import memory_format as in_format
from lrx.runtime import RUNTIME_PRECISIONS

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
# where modules are timed: PyTorch eager, ONNX Runtime (the onnx extra) or OpenVINO (the openvino extra)
RUNTIMES = tuple(RUNTIME_PRECISIONS)
PRECISIONS = ("fp32", "bf16", "int8")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}  # a precision as Setup.dtype names it


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
    device: torch.device,
    batch_size: int,
    memory_format: str = "contiguous",
    runtime: str = "torch",
    threads=None,
    precision: str = "fp32",
) -> Setup:
    cuda, threads = device.type == "cuda", threads or default_threads()
    if runtime == "onnxruntime":
        from lrx.runtime.onnxruntime import runtime_name

        return Setup("cpu", threads, batch_size, runtime=runtime_name())
    if runtime == "openvino":
        from lrx.runtime import openvino as ov

        name = ov.runtime_name(ov.precision_of(precision))
        return Setup("cpu", threads, batch_size, dtype=DTYPES[precision], runtime=name)
    return Setup(
        device=torch.cuda.get_device_name(device) if cuda else "cpu",
        threads=threads,
        batch_size=batch_size,
        dtype=DTYPES[precision],
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


def check_runtime(runtime: str, device: torch.device, precision: str = "fp32") -> None:
    """A ValueError for an unknown runtime, a precision it lacks, or a device it does not time on."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is unknown; valid: {', '.join(RUNTIMES)}")
    if precision not in RUNTIME_PRECISIONS[runtime]:
        valid = ", ".join(RUNTIME_PRECISIONS[runtime])
        raise ValueError(f"precision={precision!r} is not one of runtime={runtime}; valid: {valid}")
    if runtime != "torch" and device.type != "cpu":
        raise ValueError(f"runtime={runtime} times on the CPU only, not on {device.type}")


def unsupported(runtime: str, precision: str) -> str | None:
    """Why this CPU does not run ``precision`` natively in ``runtime`` (where the runtime would
    silently fall back or emulate it); None where it does. openvino needs its extra installed."""
    if runtime == "openvino":
        from lrx.runtime import openvino as ov

        support = ov.cpu_supports(ov.precision_of(precision))
        return None if support else support.reason
    if runtime == "torch" and precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "oneDNN reports no bfloat16 support (it needs AVX-512 BF16 or AMX); torch would emulate it, slowly"
    return None


def devices() -> list[torch.device]:
    """Devices to time on: the CPU, and the current CUDA device when there is one."""
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def default_threads() -> int:
    """The thread count torch uses when nobody sets one: the cores it may use."""
    return torch.get_num_threads()


def _autocast(module: nn.Module, x: torch.Tensor):
    with torch.autocast(x.device.type, torch.bfloat16):
        return module(x)


def call_of(
    module: nn.Module, x: torch.Tensor, runtime: str = "torch", threads: int | None = None, precision: str = "fp32"
):
    """A zero-argument call of ``module`` on ``x`` in ``precision``: in torch (call it in eval mode;
    bf16 under autocast), as its own ONNX Runtime graph, or as its own OpenVINO model (int8:
    quantized on the images of ``x``), with ``threads`` threads. Nothing is shared between calls."""
    check_runtime(runtime, x.device, precision)
    if runtime == "onnxruntime":
        from lrx.runtime.onnxruntime import graph_call

        return graph_call(module, x, threads or default_threads(), precision=precision)
    if runtime == "openvino":
        from lrx.runtime import openvino as ov

        return ov.module_call(module, x, ov.precision_of(precision), threads or default_threads())
    return partial(_autocast, module, x) if precision == "bf16" else partial(module, x)


def time_modules(
    modules: Mapping[str, nn.Module],
    x: torch.Tensor,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    runtime: str = "torch",
    threads: int | None = None,
    ratios: Mapping[str, Callable[[dict], float]] | None = None,
    precision: str = "fp32",
    built: Mapping[str, Callable[[], object]] | None = None,
) -> Timing:
    """Each module on the same input ``x`` (eval mode), timed together in ``runtime`` and
    ``precision`` by the estimator, with the given ``ratios`` of one round's ``{name: ms}``;
    ``built``: calls already made by :func:`call_of` for some of the modules, on this ``x``."""
    built = built or {}
    calls = {k: built[k] if k in built else call_of(m, x, runtime, threads, precision) for k, m in modules.items()}
    with eval_mode(*modules.values()):
        return measure(calls, ratios, estimator, threads)


def dense_vs_lowrank(
    dense: nn.Module,
    lowrank: nn.Module,
    x: torch.Tensor,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    runtime: str = "torch",
    threads: int | None = None,
    precision: str = "fp32",
    built: Mapping[str, Callable[[], object]] | None = None,
) -> Timing:
    """``dense`` against ``lowrank`` on ``x`` in ``runtime`` and ``precision``: ``ms`` of both and
    the ratio ``speedup`` (dense / lowrank); ``built``: calls already made, as :func:`time_modules`."""
    speedup = {"speedup": lambda r: r["dense"] / r["lowrank"]}
    modules = {"dense": dense, "lowrank": lowrank}
    return time_modules(modules, x, estimator, runtime, threads, speedup, precision, built)


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


EXACT = Ratio(1.0, 1.0, 1.0, Estimator.rel_iqr)  # an untouched layer's speed-up: the same timing on both sides


def _unchanged(base_m: nn.Module, approx_m: nn.Module) -> bool:
    """Untouched, or put back by the guard: the same type and weight shape (a pruned conv keeps
    its type, not its shape)."""
    if type(approx_m) is not type(base_m):
        return False
    return getattr(base_m, "weight", None) is None or base_m.weight.shape == approx_m.weight.shape


def layer_timings(
    baseline: nn.Module,
    approx: nn.Module,
    x: torch.Tensor,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    runtime: str = "torch",
    threads: int | None = None,
    precision: str = "fp32",
) -> tuple[dict[str, dict], dict]:
    """Every conv of ``baseline`` timed on its real input for the network input ``x`` (in
    ``runtime`` and ``precision``), all in the same rounds: a replaced one (a low-rank module, or a
    pruned conv) beside its counterpart in ``approx`` on that network's own input, an untouched one
    once, counting on both sides. Returns ``({name:
    {"baseline_ms", "approx_ms", "speedup", "speedup_iqr", "unstable", "replaced", "rounds"}},
    conv)``, ``conv`` the summed latencies, the
    conv speed-up (its per-round value: sum(baseline) / sum(approximation)) and ``conv_timing``
    (rounds, seconds, threads and busy cores of the measurement all the layers shared)."""
    names = conv_names(baseline)
    replaced = [n for n in names if not _unchanged(baseline.get_submodule(n), approx.get_submodule(n))]
    inputs = {"baseline": layer_inputs(baseline, names, x), "approx": layer_inputs(approx, replaced, x)}
    modules = {(n, "baseline"): baseline.get_submodule(n) for n in names}
    modules |= {(n, "approx"): approx.get_submodule(n) for n in replaced}
    calls = {
        f"{n}/{side}": call_of(m, inputs[side][n], runtime, threads, precision) for (n, side), m in modules.items()
    }

    def side(r: dict, name: str) -> float:
        return r[f"{name}/approx" if name in replaced else f"{name}/baseline"]

    ratios = {n: (lambda r, n=n: r[f"{n}/baseline"] / r[f"{n}/approx"]) for n in replaced}
    ratios["conv"] = lambda r: sum(r[f"{n}/baseline"] for n in names) / sum(side(r, n) for n in names)
    with eval_mode(*modules.values()):
        t = measure(calls, ratios, estimator, threads)
    layers = {}
    for n in names:
        ms = t.ms[f"{n}/baseline"]
        if n in replaced:
            layers[n] = {"baseline_ms": ms, "approx_ms": t.ms[f"{n}/approx"], **t.ratios[n].record()}
        else:
            layers[n] = {"baseline_ms": ms, "approx_ms": ms, **EXACT.record()}
        layers[n] |= {"replaced": n in replaced, "rounds": t.rounds}
    conv_ms = {"baseline": sum(v["baseline_ms"] for v in layers.values())}
    conv_ms["approx"] = sum(v["approx_ms"] for v in layers.values())
    return layers, {"conv_ms": conv_ms, **t.ratios["conv"].record("conv_"), "conv_timing": t.record()}


def compare(
    baseline: nn.Module,
    approx: nn.Module,
    input_size: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    estimator: Estimator = DEFAULT_ESTIMATOR,
    memory_format: str = "contiguous",
    runtime: str = "torch",
    threads: int | None = None,
    precision: str = "fp32",
) -> dict:
    """Time ``baseline`` against ``approx`` (the same network with some convs replaced or pruned), at
    ``threads`` (default: :func:`default_threads`), in ``runtime`` and ``precision``.

    Returns the setup, per-conv latencies and speed-ups (:func:`layer_timings`), the conv
    speed-up and the model speed-up, each with its interquartile range, ``unstable`` flag and
    the rounds, seconds and busy cores of its measurement, all measured side by side in this
    process. ``approx`` must keep the baseline's module names for the replaced layers. With
    ``memory_format="channels_last"`` both networks and the input run channels_last (in torch;
    ONNX Runtime and OpenVINO are fed NCHW and choose their own layouts).
    """
    device, threads = torch.device(device), threads or default_threads()
    check_runtime(runtime, device, precision)
    memory_format = memory_format if runtime == "torch" else "contiguous"
    fmt = memory_format_of(memory_format)
    with in_format(fmt, baseline, approx, device=device):
        x = torch.randn(batch_size, 3, input_size, input_size, device=device).contiguous(memory_format=fmt)
        layers, conv = layer_timings(baseline, approx, x, estimator, runtime, threads, precision)
        model_ratio = {"model": lambda r: r["baseline"] / r["approx"]}
        nets = {"baseline": baseline, "approx": approx}
        whole = time_modules(nets, x, estimator, runtime, threads, model_ratio, precision)
    return {
        "setup": setup_for(device, batch_size, memory_format, runtime, threads, precision).as_dict(),
        "layers": layers,
        **conv,
        "model_ms": whole.ms,
        **whole.ratios["model"].record("model_"),
        "model_timing": whole.record(),
    }


def thread_counts(threads) -> list[int]:
    """The thread counts ``latency.threads`` names: the list, or ``[default_threads()]`` for null."""
    return [int(t) for t in threads] if threads else [default_threads()]


def decide_point(lat: Mapping) -> tuple[int, int]:
    """``(batch size, threads)`` the guard and the planner decide at and the headline figures are
    reported at: ``latency.decide_at``, its nulls being the largest batch size / thread count."""
    at = lat.get("decide_at") or {}
    return at.get("batch_size") or max(lat["batch_sizes"]), at.get("threads") or max(thread_counts(lat.get("threads")))


def compare_at(
    baseline: nn.Module,
    approx: nn.Module,
    input_size: int,
    batch_sizes,
    threads,
    device: torch.device | str = "cpu",
    estimator: Estimator = DEFAULT_ESTIMATOR,
    memory_format: str = "contiguous",
    runtime: str = "torch",
    precision: str = "fp32",
) -> dict[int, dict[int, dict]]:
    """:func:`compare` at every thread count x batch size: ``{threads: {batch size: compare(...)}}``."""
    points = [(t, bs) for t in thread_counts(threads) for bs in batch_sizes]
    out: dict[int, dict[int, dict]] = {}
    for t, bs in tqdm(points, desc=f"timing ({runtime} {precision}, {torch.device(device).type})", leave=False):
        out.setdefault(t, {})[bs] = compare(
            baseline, approx, input_size, bs, device, estimator=estimator, memory_format=memory_format,
            runtime=runtime, threads=t, precision=precision,
        )  # fmt: skip
    return out


def point_label(where: str, threads: int, batch_size: int) -> str:
    """``"cpu, 2 threads, batch 32"``: a measured point, named the same everywhere."""
    return f"{where}, {threads} thread{'s' if int(threads) > 1 else ''}, batch {batch_size}"


def points(timings: Mapping) -> list[tuple[str, dict]]:
    """Every measured point of ``{where: {threads: {batch size: compare(...)}}}`` (``where``: a
    device or runtime) as ``(point_label(...), compare(...))``."""
    return [
        (point_label(where, t, bs), c)
        for where, by_threads in timings.items()
        for t, by_bs in by_threads.items()
        for bs, c in by_bs.items()
    ]
