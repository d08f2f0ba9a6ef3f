"""The planner: per layer, the method and number of bases that reach a conv speed-up target with
the least total reconstruction error.

For every selected conv it solves filter reconstruction for a grid of candidates of the methods
asked for (each method's ``planner_ranks``: for most, the ranks that give 1.25x .. 16x theoretical
speed-up) and prices each candidate either in MACs (its theoretical cost) or in measured latency (timed on the
layer's real input shape against the dense conv, interleaved). Keeping the dense conv is always
a candidate (error 0). It then picks one candidate per layer minimising the total error, sum_l e_l^2, with e_l one of
(see :func:`plan`)

- ``data``: the layer's relative output error on calibration images;
- ``kl``: the network's output error with only that layer replaced, e_l^2 = KL(baseline's class
  probabilities || the network's) on calibration images. For small errors the KL is a quadratic
  form in the logit error (the Fisher information), so the layers' KLs add up to about the whole
  approximation's: ranks go where the PREDICTIONS need them, not where a layer's output does;
- ``filter`` (no calibration images): the relative kernel error ||W_l - W_hat_l||_F / ||W_l||_F,

subject to

    conv cost of the whole network (untouched convs included) <= dense conv cost / target,

exactly, by merging per-layer Pareto fronts of (cost, error).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from lrx.latency import MEMORY_FORMATS, RUNTIMES, conv_names, layer_inputs, modules_ms
from lrx.lowrank.base import ConvGeometry, DecompositionError, check_finite, is_int, method_class
from lrx.lowrank.data_recon import refit_final, relative_error
from lrx.lowrank.surgery import layer_record, select_convs
from lrx.modes import eval_mode
from lrx.modes import memory_format as in_format

log = logging.getLogger(__name__)

METRICS = ("macs", "latency")
OUTPUT_ERRORS = ("data", "kl")  # measured on calibration images; without them, the filter error


@dataclass
class Candidate:
    name: str
    method: str | None  # None: keep the dense conv
    bases: int | tuple[int, int] | None
    error: float  # e_l, as the plan's error kind defines it
    cost: float
    layer: nn.Module = field(repr=False)

    @property
    def penalty(self) -> float:
        """What the planner minimises the sum of: e_l^2."""
        return self.error**2


def _grid(conv: nn.Conv2d, methods, rank_multiple: int = 1) -> list[tuple[type, object]]:
    """Every method's candidate ranks for ``conv``, rounded to multiples of ``rank_multiple`` (a
    method whose full rank holds no multiple has none)."""
    g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size)
    grid = []
    for cls in map(method_class, methods):
        try:
            ranks = {cls.round_bases(g, b, rank_multiple) for b in cls.planner_ranks(g)}
        except DecompositionError:
            continue
        grid += [(cls, b) for b in sorted(ranks)]
    return grid


def _pareto(states: list[tuple[float, float, tuple]]) -> list[tuple[float, float, tuple]]:
    """Keep the states no other state beats in both cost and error."""
    front, best = [], float("inf")
    for cost, err, picks in sorted(states, key=lambda s: (s[0], s[1])):
        if err < best:
            front.append((cost, err, picks))
            best = err
    return front


def choose(candidates: dict[str, list[Candidate]], fixed_cost: float, budget: float) -> list[Candidate] | None:
    """One candidate per layer with total cost <= budget and least total error (None: infeasible)."""
    states = [(fixed_cost, 0.0, ())]
    for options in candidates.values():
        states = _pareto([(c + o.cost, e + o.penalty, p + (o,)) for c, e, p in states for o in options])
        states = [s for s in states if s[0] <= budget]
    return min(states, key=lambda s: s[1])[2] if states else None


def check_request(
    net: nn.Module,
    layers,
    target_speedup,
    metric: str,
    methods,
    options: dict | None = None,
    input_size: int = 32,
    rank_multiple: int = 1,
):
    """Check a planner request without solving; returns the selected ``[(name, conv)]``.
    ``options``: per method name, its solver options. A MAC target is also checked for reach on
    ``input_size`` images (:func:`check_macs_reachable`); a latency target needs timings."""
    if metric not in METRICS:
        raise DecompositionError(f"target_metric={metric!r} is unknown; valid: {', '.join(METRICS)}")
    if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) or target_speedup <= 1:
        raise DecompositionError(f"target_speedup={target_speedup!r} is invalid; valid: a number > 1")
    if not methods:
        raise DecompositionError("planner methods=[] is invalid; valid: a non-empty list of methods")
    if not is_int(rank_multiple) or rank_multiple < 1:
        raise DecompositionError(f"rank_multiple={rank_multiple!r} is invalid; valid: an integer >= 1")
    classes = [method_class(m) for m in methods]
    for name, opts in (options or {}).items():
        if method_class(name) not in classes:
            raise DecompositionError(f"planner options for {name!r}, which is not among the methods {list(methods)}")
        method_class(name).check_options(opts)
    selected = select_convs(net, layers)
    if metric == "macs":
        check_macs_reachable(net, selected, target_speedup, methods, input_size, rank_multiple)
    return selected


@torch.no_grad()
def _output_pixels(net: nn.Module, names: list[str], input_size: int) -> dict[str, int]:
    """Output pixels (H * W) of each named conv for one ``input_size`` image: one forward pass of
    zeros with hooks (a conv that does not run, such as an auxiliary head's in eval mode, has none)."""
    pixels: dict[str, int] = {}

    def hook(name: str):
        def record(_module, _args, out) -> None:  # returns None: the output is left as it is
            pixels.setdefault(name, out[0, 0].numel())

        return record

    hooks = [net.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with eval_mode(net):
            net(torch.zeros(1, 3, input_size, input_size, device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return {n: pixels.get(n, 0) for n in names}


def check_macs_reachable(
    net: nn.Module, selected, target_speedup: float, methods, input_size: int, rank_multiple: int = 1
) -> None:
    """DecompositionError naming ``planner.target_speedup``, the reachable maximum and the layers
    that limit it, if even the cheapest candidate of ``methods`` on every selected conv (untouched
    convs at their dense cost) gives fewer than ``target_speedup`` times fewer conv MACs. Costs are
    the plan's, from the layer shapes alone: nothing is solved."""
    names = conv_names(net)
    pixels = _output_pixels(net, names, input_size)
    chosen = dict(selected)
    dense = {n: net.get_submodule(n).weight.numel() * pixels[n] for n in names}
    cheapest = dict(dense)
    for name, conv in selected:
        g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size)
        costs = [dense[name] / cls.theoretical_speedup(g, b) for cls, b in _grid(conv, methods, rank_multiple)]
        cheapest[name] = min([dense[name], *costs])  # keeping the dense conv is always a candidate
    floor = sum(cheapest.values())
    if not floor or sum(dense.values()) / floor >= target_speedup:
        return
    limiting = sorted(names, key=cheapest.get, reverse=True)[:3]
    shares = ", ".join(f"{n} {cheapest[n] / floor:.0%}" + ("" if n in chosen else " (not selected)") for n in limiting)
    raise DecompositionError(
        f"planner.target_speedup={target_speedup} is out of reach: the cheapest candidates of planner.methods="
        f"{list(methods)} give at most {sum(dense.values()) / floor:.2f}x fewer conv MACs; what is left is mostly "
        f"{shares}; select more layers, add methods or lower the target"
    )


def apply(net: nn.Module, chosen: dict[str, Candidate]) -> list[dict]:
    """Install the planned layers in ``net``; one record per replaced layer, as ``decompose`` gives."""
    records = []
    for name, c in chosen.items():
        if c.method is None:
            continue
        records.append(layer_record(name, net.get_submodule(name), c.layer))
        net.set_submodule(name, c.layer)
    return records


def busy_cores(seconds: float = 0.5) -> float:
    """How many cores other work keeps busy, sampled now over ``seconds`` (this process sleeps
    meanwhile): from /proc/stat where there is one, else the 1-minute load average (which also
    counts work that ended up to a minute ago, such as the previous job of a sweep)."""

    def stat() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]  # user nice system idle iowait irq ...
        return sum(ticks), ticks[3] + ticks[4]

    try:
        total0, idle0 = stat()
        time.sleep(seconds)
        total1, idle1 = stat()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    cores = os.cpu_count() or 1
    return cores * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def warn_if_busy() -> None:
    """Latency plans need a quiet machine: other work on the CPU inflates the timings unevenly
    (docs/SOLVERS.md)."""
    busy = busy_cores()
    if busy > 0.5:
        log.warning(
            "planning by measured latency while other work keeps %.1f of %d cores busy: timings are "
            "inflated unevenly, so the plan can miss its target; plan on a quiet machine",
            busy,
            os.cpu_count() or 1,
        )


def _filter_error(_name: str, layer: nn.Module) -> float:
    return layer.report["rel_error"]


def _log_probs(net: nn.Module, images: torch.Tensor, chunk: int) -> torch.Tensor:
    """log-softmax of ``net``'s outputs (logits, (B, classes)) for ``images``, ``chunk`` at a time."""
    with eval_mode(net):
        return torch.cat([net(images[i : i + chunk]).log_softmax(1) for i in range(0, images.shape[0], chunk)])


@contextmanager
def _replaced(net: nn.Module, name: str, layer: nn.Module):
    """``net`` with the output of module ``name`` replaced by ``layer`` applied to its input."""
    handle = net.get_submodule(name).register_forward_hook(lambda _m, args, _out: layer(args[0]))
    try:
        yield net
    finally:
        handle.remove()


@torch.no_grad()
def _output_error(net: nn.Module, names: list[str], images: torch.Tensor, kind: str, chunk: int = 64):
    """``error(name, layer)`` on the calibration ``images``, of the kind ``data`` or ``kl`` (see the
    module docstring), for a copy of ``layer`` whose last pass (if it has one) is refit by least
    squares to the conv's outputs on its real inputs, as data reconstruction will start from."""
    images = images.to(next(net.parameters()).device)
    inputs = layer_inputs(net, names, images)
    targets = {n: net.get_submodule(n)(inputs[n]) for n in names}
    log_p = _log_probs(net, images, chunk) if kind == "kl" else None

    def error(name: str, layer: nn.Module) -> float:
        if hasattr(layer, "final_features"):
            layer = copy.deepcopy(layer)
            refit_final(layer, name, inputs[name], targets[name], chunk)
        layer.eval()
        if kind == "data":
            return relative_error(layer, inputs[name], targets[name], chunk)
        with _replaced(net, name, layer):
            log_q = _log_probs(net, images, chunk)
        kl = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="batchmean")  # KL(p || q)
        return math.sqrt(max(kl.item(), 0.0))

    return error


def _timed_ms(
    modules: dict[str, nn.Module], x: torch.Tensor, memory_format, warmup: int, repeats: int, runtime: str
) -> dict:
    """``modules_ms`` in ``runtime``. In torch, with the modules' weights and ``x`` in
    ``memory_format`` (weights restored to the contiguous format after), as the final timing runs
    them: the dense conv and some low-rank passes run at very different speeds in the two formats
    (docs/SOLVERS.md). In ONNX Runtime, each module as its own graph. A layer with a choice of
    executions (Scheme 1, CP) runs the one torch times fastest, in both runtimes."""
    with in_format(memory_format, *modules.values()):
        if hasattr(modules.get("lowrank"), "select_strategy"):
            modules["lowrank"].select_strategy(x, warmup, repeats)
        if runtime == "torch":
            return modules_ms(modules, x, warmup, repeats)
    return modules_ms(modules, x.contiguous(), warmup, repeats, runtime)


def plan(
    net: nn.Module,
    layers,
    target_speedup: float,
    metric: str = "macs",
    input_size: int = 32,
    batch_size: int = 32,
    methods=("scheme1", "scheme2"),
    warmup: int = 3,
    repeats: int = 10,
    progress: bool = True,
    calibration: torch.Tensor | None = None,
    error: str = "data",
    memory_format: str = "contiguous",
    options: dict | None = None,
    rank_multiple: int = 1,
    runtime: str = "torch",
) -> tuple[dict[str, Candidate], dict]:
    """Plan a decomposition of ``net``'s selected convs that reaches ``target_speedup``.

    With ``calibration`` (a batch of real TRAINING images), a candidate's error is measured on
    them, for a copy layer' of the candidate with its last pass refit to the conv's outputs by
    least squares (what data reconstruction starts from), so ranks go where the data needs them,
    not where the kernel does. ``error="data"``: the relative output error
    ‖conv(x) − layer'(x)‖ / ‖conv(x)‖; ``error="kl"``: sqrt(KL(p || q)), p the network's class
    probabilities and q the same with only this conv replaced by layer'. Without calibration
    images, the error is the filter reconstruction error ‖W − Ŵ‖ / ‖W‖. The installed layers are
    the plain filter-reconstruction solutions in every case. ``metric="latency"`` times every
    candidate against the dense conv in ``memory_format`` (as ``latency.compare`` will), in
    ``runtime`` (``"onnxruntime"``: each as its own ONNX graph; see :mod:`lrx.latency`).

    Returns the chosen candidate per selected layer (method None keeps the conv) and a report
    with the predicted conv speed-up and every candidate's (method, bases, error, cost).
    """
    if memory_format not in MEMORY_FORMATS:
        raise DecompositionError(f"memory_format={memory_format!r} is unknown; valid: {', '.join(MEMORY_FORMATS)}")
    if runtime not in RUNTIMES:
        raise DecompositionError(f"runtime={runtime!r} is unknown; valid: {', '.join(RUNTIMES)}")
    if calibration is not None and error not in OUTPUT_ERRORS:
        raise DecompositionError(f"planner error={error!r} is unknown; valid: {', '.join(OUTPUT_ERRORS)}")
    selected = check_request(net, layers, target_speedup, metric, methods, options, input_size, rank_multiple)
    options = {method_class(m).method: opts for m, opts in (options or {}).items()}
    for name, conv in selected:
        check_finite(conv, name)
    device = next(net.parameters()).device
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    all_convs = conv_names(net)
    inputs = layer_inputs(net, all_convs, x)
    with torch.inference_mode():
        outputs = {name: net.get_submodule(name)(inputs[name]) for name in all_convs}
    fmt = MEMORY_FORMATS[memory_format]
    inputs = {name: t.contiguous(memory_format=fmt) for name, t in inputs.items()}  # only timed

    def dense_cost(name: str) -> float:
        conv = net.get_submodule(name)
        if metric == "macs":
            return conv.weight.numel() * outputs[name][0, 0].numel()  # N*C*kh*kw per output pixel
        return _timed_ms({"dense": conv}, inputs[name], fmt, warmup, repeats, runtime)["dense"]

    if metric == "latency":
        warn_if_busy()
    costs = {name: dense_cost(name) for name in all_convs}
    kind = "filter" if calibration is None else error
    error_of = _filter_error if calibration is None else _output_error(net, [n for n, _ in selected], calibration, kind)
    candidates: dict[str, list[Candidate]] = {}
    bar = tqdm(selected, desc="planner", disable=not progress)
    for name, conv in bar:
        choices = [Candidate(name, None, None, 0.0, costs[name], conv)]
        for cls, bases in _grid(conv, methods, rank_multiple):
            bar.set_postfix_str(f"{name} {cls.method} {bases}")
            layer = cls.from_conv(conv, bases, **options.get(cls.method, {}))
            if metric == "macs":
                cost = costs[name] / layer.report["macs_speedup"]
            else:
                t = _timed_ms({"dense": conv, "lowrank": layer.eval()}, inputs[name], fmt, warmup, repeats, runtime)
                cost = costs[name] * t["lowrank"] / t["dense"]
            choices.append(Candidate(name, cls.method, bases, error_of(name, layer), cost, layer))
        candidates[name] = choices
    total = sum(costs.values())
    fixed = total - sum(costs[name] for name, _ in selected)
    picks = choose(candidates, fixed, total / target_speedup)
    if picks is None:
        cheapest = fixed + sum(min(o.cost for o in opts) for opts in candidates.values())
        raise DecompositionError(
            f"target_speedup={target_speedup} is out of reach for layers {[n for n, _ in selected]}: "
            f"the cheapest candidates give {total / cheapest:.2f}x ({metric}); select more layers or lower the target"
        )
    chosen = {c.name: c for c in picks}
    report = {
        "target_speedup": target_speedup,
        "metric": metric,
        "runtime": runtime if metric == "latency" else None,
        "error": kind,
        "predicted_conv_speedup": total / (fixed + sum(c.cost for c in picks)),
        "plan": {c.name: {"method": c.method, "bases": c.bases, "error": c.error} for c in picks},
        "candidates": {
            name: [{"method": o.method, "bases": o.bases, "error": o.error, "cost": o.cost} for o in opts]
            for name, opts in candidates.items()
        },
    }
    return chosen, report
