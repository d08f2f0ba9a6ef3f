"""The planner: per layer, the method and number of bases that reach a conv speed-up target with
the least total reconstruction error.

For every selected conv it solves filter reconstruction for a grid of candidates of the methods
asked for (each method's ``planner_ranks``: for most, the ranks that give 1.25x .. 16x theoretical
speed-up) and prices each candidate either in MACs (its theoretical cost) or in measured latency (timed on the
layer's real input shape against the dense conv, interleaved, in the runtime and precision the
network will be served in: :class:`Timed`). Keeping the dense conv is always
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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from lrx.compress import prune
from lrx.compress.data_recon import refit_final, relative_error
from lrx.compress.execution import has_choice, select
from lrx.lowrank.base import method_class
from lrx.lowrank.checks import DecompositionError, check_finite, is_int
from lrx.lowrank.geometry import ConvGeometry
from lrx.lowrank.surgery import layer_record, select_convs
from lrx.measure.estimator import DEFAULT_ESTIMATOR, Estimator, Timing
from lrx.measure.latency import (
    MEMORY_FORMATS,
    call_of,
    check_runtime,
    conv_names,
    dense_vs_lowrank,
    layer_inputs,
    time_modules,
)
from lrx.measure.load import timing_conditions
from lrx.modes import eval_mode
from lrx.modes import memory_format as in_format

log = logging.getLogger(__name__)

METRICS = ("macs", "latency")
PRUNE = prune.METHOD  # among the methods: channel pruning at each of ``Pruning.ratios``
OUTPUT_ERRORS = ("data", "kl")  # measured on calibration images; without them, the filter error


@dataclass
class Candidate:
    name: str
    method: str | None  # None: keep the dense conv
    bases: int | tuple[int, int] | None
    error: float  # e_l, as the plan's error kind defines it
    cost: float
    layer: nn.Module | None = field(repr=False)  # the low-rank layer; None for pruning
    keep: torch.Tensor | None = field(default=None, repr=False)  # pruning: the output channels kept
    ratio: float | None = None  # pruning: the ratio asked for
    criterion: str | None = None  # pruning: how channels were ranked

    @property
    def penalty(self) -> float:
        """What the planner minimises the sum of: e_l^2."""
        return self.error**2


@dataclass(frozen=True)
class Pruning:
    """Pruning candidates (with ``prune`` among the methods): each prunable conv at each of
    ``ratios``, channels ranked by ``criterion`` (:mod:`lrx.compress.prune`)."""

    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    criterion: str = "l1"

    def check(self) -> None:
        if not self.ratios:
            raise DecompositionError(
                "planner.prune.ratios=[] is invalid; valid: a non-empty list of fractions in (0, 1)"
            )
        for r in self.ratios:
            prune.check_ratio(r, "planner.prune.ratios")
        if self.criterion not in ("l1", "l2"):
            raise DecompositionError(
                f"planner.prune.criterion={self.criterion!r} is unknown; valid: l1, l2 (the planner ranks channels "
                "by their filters' norm)"
            )


def _lowrank(methods) -> list:
    return [m for m in methods if m != PRUNE]


def _grid(conv: nn.Conv2d, methods, rank_multiple: int = 1, speedups=None) -> list[tuple[type, object]]:
    """Every method's candidate ranks for ``conv`` (those of the theoretical ``speedups``, default
    each method's own), rounded to multiples of ``rank_multiple`` (a method whose full rank holds
    no multiple has none)."""
    g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size)
    grid = []
    for cls in map(method_class, _lowrank(methods)):
        try:
            ranks = {cls.round_bases(g, b, rank_multiple) for b in cls.planner_ranks(g, speedups)}
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


def valid_speedups(speedups) -> bool:
    """Whether ``speedups`` is None (each method's own ladder) or a non-empty list of numbers > 1."""
    return speedups is None or (bool(speedups) and all(isinstance(s, (int, float)) and s > 1 for s in speedups))


def check_request(
    net: nn.Module,
    layers,
    target_speedup,
    metric: str,
    methods,
    options: dict | None = None,
    input_size: int = 32,
    rank_multiple: int = 1,
    speedups=None,
):
    """Check a planner request without solving; returns the selected ``[(name, conv)]``.
    ``options``: per method name, its solver options; ``speedups``: the theoretical speed-ups
    whose ranks are tried (None: each method's own). A MAC target is also checked for reach on
    ``input_size`` images (:func:`check_macs_reachable`); a latency target needs timings."""
    if metric not in METRICS:
        raise DecompositionError(f"target_metric={metric!r} is unknown; valid: {', '.join(METRICS)}")
    if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) or target_speedup <= 1:
        raise DecompositionError(f"target_speedup={target_speedup!r} is invalid; valid: a number > 1")
    if not methods:
        raise DecompositionError("planner methods=[] is invalid; valid: a non-empty list of methods")
    if not is_int(rank_multiple) or rank_multiple < 1:
        raise DecompositionError(f"rank_multiple={rank_multiple!r} is invalid; valid: an integer >= 1")
    if not valid_speedups(speedups):
        raise DecompositionError(f"speedups={speedups!r} is invalid; valid: a non-empty list of numbers > 1")
    classes = [method_class(m) for m in _lowrank(methods)]
    for name, opts in (options or {}).items():
        if method_class(name) not in classes:
            raise DecompositionError(f"planner options for {name!r}, which is not among the methods {list(methods)}")
        method_class(name).check_options(opts)
    selected = select_convs(net, layers)
    if metric == "macs" and PRUNE not in methods:  # pruning's reach depends on its ratios: the plan says
        check_macs_reachable(net, selected, target_speedup, methods, input_size, rank_multiple, speedups)
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
    net: nn.Module, selected, target_speedup: float, methods, input_size: int, rank_multiple: int = 1, speedups=None
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
        costs = [
            dense[name] / cls.theoretical_speedup(g, b) for cls, b in _grid(conv, methods, rank_multiple, speedups)
        ]
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


def _solved_again(conv: nn.Conv2d, layer: nn.Module, options: dict) -> nn.Module:
    """``layer``'s method at its bases (each clamped to the full rank of ``conv``) solved for
    ``conv``, a conv that lost input channels to a pruning since ``layer`` was solved."""
    cls = type(layer)
    full = cls.full_rank(ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size))
    bases = tuple(map(min, layer.bases, full)) if isinstance(full, tuple) else min(layer.bases, full)
    return cls.from_conv(conv, bases, **options.get(cls.method, {})).eval()


def apply(net: nn.Module, chosen: dict[str, Candidate], options: dict | None = None) -> list[dict]:
    """Install the plan in ``net``: first every pruning (which narrows the inputs of the convs that
    read the pruned channels), then every low-rank layer; one whose conv lost input channels is
    solved again for the conv as it now is (:func:`_solved_again`, with the methods' ``options``).
    One record per pruned or replaced layer, as ``decompose`` and ``prune`` give."""
    picks = [c for c in chosen.values() if c.method is not None]
    found = prune.groups(net) if any(c.method == PRUNE for c in picks) else {}
    records = []
    for c in picks:
        if c.method == PRUNE:
            weight = net.get_submodule(c.name).weight
            prune.remove_channels(net, found[c.name], c.keep)
            # the channels were ranked while planning: pruning itself takes no solving
            records.append(prune.record(c.name, weight, c.keep, c.criterion, found[c.name], c.ratio, 0.0))
    for c in picks:
        if c.method != PRUNE:
            conv, layer = net.get_submodule(c.name), c.layer
            if conv.in_channels != layer.geometry.in_channels:
                layer = _solved_again(conv, layer, options or {})
            records.append(layer_record(c.name, conv, layer))
            net.set_submodule(c.name, layer)
    return records


def _filter_error(_name: str, layer: nn.Module) -> float:
    return layer.report["rel_error"]


@torch.no_grad()
def _prune_output_error(net: nn.Module, images: torch.Tensor, kind: str, chunk: int = 64):
    """``error(group, keep)`` for pruning ``group.conv`` to the channels ``keep``, on the
    calibration ``images``: ``data``, the relative error of its readers' outputs (the next layers',
    as a low-rank candidate's is of its own output) once the other channels are zeroed in their
    inputs; ``kl``, sqrt(KL(p || q)) with q the network's predictions with those channels zeroed."""
    images = images.to(next(net.parameters()).device)
    log_p = _log_probs(net, images, chunk) if kind == "kl" else None

    @torch.no_grad()
    def error(group: prune.Group, keep: torch.Tensor) -> float:
        channels = net.get_submodule(group.conv).out_channels
        if kind == "kl":
            mask = lambda _m, args: (prune.masked(args[0], keep, channels),)
            hooks = [net.get_submodule(n).register_forward_pre_hook(mask) for n in group.consumers]
            try:
                log_q = _log_probs(net, images, chunk)
            finally:
                for h in hooks:
                    h.remove()
            kl = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
            return math.sqrt(max(kl.item(), 0.0))
        inputs = layer_inputs(net, list(group.consumers), images)
        diff = total = 0.0
        for n in group.consumers:
            reader = net.get_submodule(n)
            for i in range(0, images.shape[0], chunk):
                x = inputs[n][i : i + chunk]
                t = reader(x)
                diff += float((reader(prune.masked(x, keep, channels)) - t).square().sum())
                total += float(t.square().sum())
        return math.sqrt(diff / total)

    return error


class _ReadingKept(nn.Module):
    """A reader conv narrowed to the channels ``keep`` of its full input, for timing it paired
    with the dense conv on the same input (the selection counts against the pruning)."""

    def __init__(self, conv: nn.Conv2d, keep: torch.Tensor):
        super().__init__()
        self.conv = conv
        self.register_buffer("keep", keep.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.index_select(1, self.keep))


def _prune_candidates(net, group, ratios, criterion, multiple, cost_of, error_of) -> list[Candidate]:
    """Pruning ``group.conv`` at each of ``ratios`` (each channel count once; none that keeps all)."""
    conv = net.get_submodule(group.conv)
    scores = prune.weight_importance(conv, criterion)
    out, seen = [], set()
    for ratio in ratios:
        k = prune.kept_channels(conv.out_channels, ratio, multiple, group.conv)
        if k in seen or k == conv.out_channels:
            continue
        seen.add(k)
        keep = prune.top_channels(scores, k)
        error, cost = error_of(group, keep), cost_of(group, keep)
        out.append(Candidate(group.conv, PRUNE, k, error, cost, None, keep, ratio, criterion))
    return out


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


@dataclass(frozen=True)
class Timed:
    """How the planner times (metric=latency): at ``threads`` in ``runtime`` and ``precision``
    (each candidate and its dense conv converted on their own; int8: quantized on the layer's real
    input), by ``estimator``, with weights and inputs in ``memory_format`` as the final timing runs
    them; before timing it waits up to ``quiet_wait_s`` for other work to stop, and times next to
    ``busy`` neighbour processes that each keep a core busy, for a network served on a shared CPU
    (:func:`lrx.measure.load.timing_conditions`)."""

    estimator: Estimator = DEFAULT_ESTIMATOR
    threads: int | None = None
    runtime: str = "torch"
    memory_format: str = "contiguous"
    quiet_wait_s: float = 0.0
    precision: str = "fp32"
    busy: int = 0
    _dense_calls: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def fresh(self) -> Timed:
        """The same settings, no dense call kept (one per plan: a kept call holds its conv)."""
        return replace(self)

    def _dense_built(self, conv: nn.Module, x: torch.Tensor, contiguous_x: torch.Tensor) -> dict:
        """``{"dense": conv's call on x}`` outside torch, made once and kept: in ONNX Runtime and
        OpenVINO each candidate is timed against the same dense conv, whose conversion (int8:
        quantization) would otherwise be made again for each (``{}`` in torch, where a call costs
        nothing to make)."""
        if self.runtime == "torch":
            return {}
        key = (id(conv), id(x))
        if key not in self._dense_calls:  # conv and x kept with the call, so that their ids stay theirs
            self._dense_calls[key] = (conv, x, call_of(conv, contiguous_x, self.runtime, self.threads, self.precision))
        return {"dense": self._dense_calls[key][2]}

    def _run(self, modules: dict[str, nn.Module], x: torch.Tensor, timing) -> Timing:
        """``timing(x)`` with the modules' weights and ``x`` in ``memory_format`` in torch (weights
        restored to the contiguous format after): the dense conv and some low-rank passes run at
        very different speeds in the two formats (docs/SOLVERS.md). In ONNX Runtime and OpenVINO each
        module is its own graph. A layer with a choice of executions (Scheme 1, CP) runs the one
        torch times fastest, in every runtime."""
        fmt = MEMORY_FORMATS[self.memory_format]
        with in_format(fmt, *modules.values()):
            x = x.contiguous(memory_format=fmt)
            if has_choice(modules.get("lowrank")):
                select(modules["lowrank"], x, self.estimator)
            if self.runtime == "torch":
                return timing(x)
        return timing(x.contiguous())

    def dense_ms(self, conv: nn.Module, x: torch.Tensor) -> float:
        def run(xf: torch.Tensor) -> Timing:
            built = self._dense_built(conv, x, xf)
            return time_modules(
                {"dense": conv}, xf, self.estimator, self.runtime, self.threads, None, self.precision, built
            )

        return self._run({"dense": conv}, x, run).ms["dense"]

    def speedup(self, conv: nn.Module, layer: nn.Module, x: torch.Tensor) -> Timing:
        def run(xf: torch.Tensor) -> Timing:
            built = self._dense_built(conv, x, xf)
            return dense_vs_lowrank(conv, layer, xf, self.estimator, self.runtime, self.threads, self.precision, built)

        return self._run({"dense": conv, "lowrank": layer}, x, run)


def plan(
    net: nn.Module,
    layers,
    target_speedup: float,
    metric: str = "latency",
    input_size: int = 32,
    batch_size: int = 32,
    methods=("scheme2",),
    progress: bool = True,
    calibration: torch.Tensor | None = None,
    error: str = "data",
    options: dict | None = None,
    rank_multiple: int = 1,
    timed: Timed = Timed(),
    closed_loop_rounds: int = 0,
    pruning: Pruning = Pruning(),
    speedups=None,
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
    candidate against the dense conv on its real input at ``batch_size`` as ``timed`` says
    (a candidate's cost: the dense conv's ms / its paired speed-up; once a method's rank is timed
    slower than the dense conv, its larger ranks are not tried), and with
    ``closed_loop_rounds`` > 0 then measures the assembled network (:func:`close_loop`); a target
    out of reach of the summed timings then starts the loop from the cheapest plan (the network
    whole can be faster than its convs' sum), where without the loop it is an error.

    With ``prune`` among ``methods``, every selected conv whose channels can be pruned
    (:func:`lrx.compress.prune.groups`) also has a candidate per ratio of ``pruning``. Its cost
    counts what the pruning saves in the convs that read the channels too; its error is that of
    their outputs (``data``), of the predictions (``kl``) or of the removed filters (``filter``).
    The costs of the layers are added as if each choice were alone: the closed loop measures them
    together. ``speedups``: the theoretical speed-ups whose ranks each method tries (None: the
    method's own ladder).

    Returns the chosen candidate per selected layer (method None keeps the conv) and a report
    with the predicted conv speed-up and every candidate's (method, bases, error, cost).
    """
    timed = timed.fresh()
    if timed.memory_format not in MEMORY_FORMATS:
        raise DecompositionError(
            f"memory_format={timed.memory_format!r} is unknown; valid: {', '.join(MEMORY_FORMATS)}"
        )
    try:
        check_runtime(timed.runtime, torch.device("cpu"), timed.precision)
    except ValueError as e:
        raise DecompositionError(str(e)) from None
    if calibration is not None and error not in OUTPUT_ERRORS:
        raise DecompositionError(f"planner error={error!r} is unknown; valid: {', '.join(OUTPUT_ERRORS)}")
    selected = check_request(net, layers, target_speedup, metric, methods, options, input_size, rank_multiple, speedups)
    options = {method_class(m).method: opts for m, opts in (options or {}).items()}
    if PRUNE in methods:
        pruning.check()
    found = prune.groups(net) if PRUNE in methods else {}
    for name, conv in selected:
        check_finite(conv, name)
    device = next(net.parameters()).device
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    all_convs = conv_names(net)
    inputs = layer_inputs(net, all_convs, x)
    with torch.inference_mode():
        outputs = {name: net.get_submodule(name)(inputs[name]) for name in all_convs}
    timing = timing_conditions(timed.quiet_wait_s, timed.busy, "the planner's candidates")
    with timing if metric == "latency" else nullcontext() as load:

        def dense_cost(name: str) -> float:
            conv = net.get_submodule(name)
            if metric == "macs":
                return conv.weight.numel() * outputs[name][0, 0].numel()  # N*C*kh*kw per output pixel
            return timed.dense_ms(conv, inputs[name])

        costs = {name: dense_cost(name) for name in all_convs}
        kind = "filter" if calibration is None else error
        names = [n for n, _ in selected]
        error_of = _filter_error if calibration is None else _output_error(net, names, calibration, kind)
        prune_error = None
        if found:
            prune_error = _prune_output_error(net, calibration, kind) if calibration is not None else None
            prune_error = prune_error or (
                lambda group, keep: prune.filter_error(net.get_submodule(group.conv).weight, keep)
            )

        def prune_cost(group: prune.Group, keep: torch.Tensor) -> float:
            """The pruned conv's cost plus what its reading convs save: each conv's dense cost over
            its paired speed-up once narrowed (the reader on its real input, narrowed inside)."""
            frac = len(keep) / net.get_submodule(group.conv).out_channels
            if metric == "macs":
                return costs[group.conv] * frac + sum(costs[b] * (frac - 1) for b in group.convs)

            def narrowed_cost(name: str, layer: nn.Module) -> float:
                ratio = timed.speedup(net.get_submodule(name), layer.eval(), inputs[name]).ratios["speedup"].median
                return costs[name] / ratio

            own = narrowed_cost(group.conv, prune.narrowed(net.get_submodule(group.conv), keep, 0))
            readers = {b: _ReadingKept(prune.narrowed(net.get_submodule(b), keep, 1), keep) for b in group.convs}
            return own + sum(narrowed_cost(b, reader) - costs[b] for b, reader in readers.items())

        candidates: dict[str, list[Candidate]] = {}
        bar = tqdm(selected, desc="planner", disable=not progress)
        for name, conv in bar:
            choices, slower = [Candidate(name, None, None, 0.0, costs[name], conv)], set()
            for cls, bases in _grid(conv, methods, rank_multiple, speedups):
                if cls in slower:  # a larger rank of a method already timed slower than the dense conv
                    continue
                bar.set_postfix_str(f"{name} {cls.method} {bases}")
                layer = cls.from_conv(conv, bases, **options.get(cls.method, {}))
                if metric == "macs":
                    cost = costs[name] / layer.report["macs_speedup"]
                else:
                    cost = costs[name] / timed.speedup(conv, layer.eval(), inputs[name]).ratios["speedup"].median
                    if cost > costs[name]:
                        slower.add(cls)
                choices.append(Candidate(name, cls.method, bases, error_of(name, layer), cost, layer))
            if isinstance(found.get(name), prune.Group):
                bar.set_postfix_str(f"{name} prune")
                choices += _prune_candidates(
                    net, found[name], pruning.ratios, pruning.criterion, rank_multiple, prune_cost, prune_error
                )
            candidates[name] = choices
        total = sum(costs.values())
        fixed = total - sum(costs[name] for name, _ in selected)
        closing = metric == "latency" and closed_loop_rounds > 0
        picks, aim = choose(candidates, fixed, total / target_speedup), target_speedup
        if picks is None:
            cheapest = fixed + sum(min(o.cost for o in opts) for opts in candidates.values())
            if not closing:
                raise DecompositionError(
                    f"target_speedup={target_speedup} is out of reach for layers {names}: the cheapest candidates "
                    f"give {total / cheapest:.2f}x ({metric}); select more layers or lower the target"
                )
            aim = total / cheapest
            log.warning(
                "target %.2fx is out of reach of the per-conv timings (the cheapest candidates add up to %.2fx); "
                "the closed loop measures the cheapest plan whole, where the runtime's fusions count",
                target_speedup,
                aim,
            )
            picks = choose(candidates, fixed, cheapest * (1 + 1e-9))
        rounds = []
        if closing:
            loop = (candidates, fixed, total, target_speedup, picks, timed, closed_loop_rounds, options, aim)
            picks, rounds = close_loop(net, x, *loop)
    chosen = {c.name: c for c in picks}
    report = {
        "target_speedup": target_speedup,
        "metric": metric,
        "runtime": timed.runtime if metric == "latency" else None,
        "precision": timed.precision if metric == "latency" else None,
        "threads": (timed.threads or torch.get_num_threads()) if metric == "latency" else None,
        "load": load,
        "error": kind,
        "predicted_conv_speedup": total / (fixed + sum(c.cost for c in picks)),
        "closed_loop": rounds,
        "plan": {
            c.name: {"method": c.method, "bases": c.bases, "error": c.error, "cost": c.cost, "dense": costs[c.name]}
            for c in picks
        },
        "candidates": {
            name: [{"method": o.method, "bases": o.bases, "error": o.error, "cost": o.cost} for o in opts]
            for name, opts in candidates.items()
        },
    }
    return chosen, report


TOLERANCE = 0.05  # the closed loop stops once the network's measured speed-up is within 5% of the target


def measured_speedup(
    net: nn.Module, x: torch.Tensor, picks: list[Candidate], timed: Timed, options: dict | None = None
) -> dict:
    """The speed-up of ``net`` with ``picks`` installed (:func:`apply` on a copy; ``net`` is
    untouched) over ``net``, both whole, timed as a pair by ``timed`` on the network input ``x`` in
    its runtime and precision (int8: each network quantized on ``x``), so that what the runtime
    fuses across layers counts as a deployment measures it: ``speedup``, ``speedup_iqr``,
    ``unstable``."""
    approx = copy.deepcopy(net)
    apply(approx, {c.name: c for c in picks}, options)
    return timed.speedup(net, approx, x).ratios["speedup"].record()


def next_aim(rounds: list[dict], target: float) -> float:
    """The next round's aim. Once rounds measured on both sides of ``target``: where the line through
    the closest of each side, (aim, measured), crosses it (the measured speed-up rises with the aim,
    not in proportion, so a ratio step can jump over the target again and again); before: the last
    round's aim x target / measured."""
    below = [r for r in rounds if r["measured"] < target]
    above = [r for r in rounds if r["measured"] > target]
    if below and above:
        lo = max(below, key=lambda r: r["measured"])
        hi = min(above, key=lambda r: r["measured"])
        return lo["aim"] + (target - lo["measured"]) * (hi["aim"] - lo["aim"]) / (hi["measured"] - lo["measured"])
    return rounds[-1]["aim"] * target / rounds[-1]["measured"]


def close_loop(
    net: nn.Module,
    x: torch.Tensor,
    candidates: dict[str, list[Candidate]],
    fixed: float,
    total: float,
    target: float,
    picks: list[Candidate],
    timed: Timed,
    max_rounds: int,
    options: dict | None = None,
    aim: float | None = None,
) -> tuple[list[Candidate], list[dict]]:
    """Measure the assembled network's speed-up, whole (:func:`measured_speedup`); while it misses
    ``target`` by more than TOLERANCE, re-aim the choice (:func:`next_aim`: a plan that measures
    slower than the target asks for cheaper candidates, one that measures faster for better ones)
    and measure again, for at most ``max_rounds`` measurements, never the same candidates twice.
    ``aim``: what ``picks`` were chosen for (default ``target``). Each round is logged and
    returned (``aim``, ``predicted``, ``measured`` with its IQR, the plan); the picks are the
    round measured closest to the target."""
    rounds, aim = [], aim or target
    for i in range(max_rounds):
        whole = measured_speedup(net, x, picks, timed, options)
        measured = whole["speedup"]
        rounds.append(
            {
                "aim": aim,
                "predicted": total / (fixed + sum(c.cost for c in picks)),
                "measured": measured,
                "measured_iqr": whole["speedup_iqr"],
                "measures": "network",
                "plan": {c.name: [c.method, c.bases] for c in picks},
                "picks": picks,
            }
        )
        log.info(
            "closed loop, round %d: aimed at %.2fx, predicted %.2fx, measured %.2fx (target %.2fx)",
            i + 1,
            aim,
            rounds[-1]["predicted"],
            measured,
            target,
        )
        if abs(measured / target - 1) <= TOLERANCE:
            break
        aim = next_aim(rounds, target)
        next_picks = choose(candidates, fixed, total / aim)
        if next_picks is None or any(next_picks == r["picks"] for r in rounds):
            why = "no cheaper candidates" if next_picks is None else "candidates already measured"
            log.warning("closed loop stops after round %d: aiming at %.2fx gives %s", i + 1, aim, why)
            break
        picks = next_picks
    best = min(rounds, key=lambda r: abs(r["measured"] / target - 1))
    if abs(best["measured"] / target - 1) > TOLERANCE:
        log.warning(
            "closed loop: no plan measured within %.0f%% of %.2fx; keeping the closest, %.2fx",
            TOLERANCE * 100,
            target,
            best["measured"],
        )
    return best["picks"], [{k: v for k, v in r.items() if k != "picks"} for r in rounds]
