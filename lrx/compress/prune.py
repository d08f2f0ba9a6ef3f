"""Structured channel pruning, a compression method of lrx beside the low-rank expansions.

Pruning conv A's output channel n removes the filter ``W_A[n]`` (``C x kh x kw``) and everything
that carries that channel to the next layer: the matching entries of the BatchNorm after A, the
input channel n of every conv that reads A's output (``W_B[:, n]``), or the inputs of a Linear fed
through a Flatten (channel n's ``H·W`` features). On the way ReLUs, poolings, dropout and identities
pass channels through unchanged. A conv's channels that reach a residual addition, a
concatenation, the network's output or any other operation cannot be pruned without changing the
shortcut's shape: such a conv is refused, naming it and the operation (:func:`groups`).

Which channels go is decided by an importance per channel, the least important removed:

- ``l1``: ``Σ|W_A[n]|`` (Li et al., *Pruning Filters for Efficient ConvNets*, 2017);
- ``l2``: ``‖W_A[n]‖₂``;
- ``taylor``: the first-order Taylor estimate of the loss change when the channel's activation
  ``a_n`` (where the consumers read it) is zeroed, ``|Σ_{h,w} a_n ∂L/∂a_n|`` averaged over
  training images (Molchanov et al., *Importance Estimation for Neural Network Pruning*, 2019).

A conv pruned by ``ratio`` keeps ``round(N (1 - ratio) / m) · m`` of its N channels, ``m`` the
rank multiple (at least ``m``; :func:`kept_channels`). Pruned modules keep their names and types
and only change shape, so every timing, deployment and saved network reads them as it reads any
network (:func:`lrx.results.saved.save_network` records the new shapes).
"""

from __future__ import annotations

import copy
import math
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import fx, nn

from lrx.lowrank.checks import DecompositionError
from lrx.modes import eval_mode

METHOD, LABEL, LETTER = "prune", "prune", "N"  # a record's method, the report's label, and what "bases" counts
CRITERIA = ("l1", "l2", "taylor")

# Modules and functions that keep every channel where it is (N in, the same N out).
_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.SiLU,
    nn.GELU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Identity,
)
_PASS_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout)
_PASS_METHODS = ("relu", "relu_", "contiguous")
_FLATTEN = (torch.flatten,)


@dataclass(frozen=True)
class Group:
    """A prunable conv and what carries its output channels: the per-channel BatchNorms on the way
    (``norms``), the convs that read them (``convs``) and the Linears behind a Flatten
    (``linears``)."""

    conv: str
    norms: tuple[str, ...]
    convs: tuple[str, ...]
    linears: tuple[str, ...]

    @property
    def consumers(self) -> tuple[str, ...]:
        return self.convs + self.linears


class _Tracer(fx.Tracer):
    """Convs, BatchNorms and Linears are leaves, and so is every module lrx does not look into."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) or super().is_leaf_module(m, qualname)


def _trace(net: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(net)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the same to the user
        raise DecompositionError(
            f"pruning: torch.fx cannot trace {type(net).__name__} ({type(e).__name__}); "
            "valid: a network whose forward torch.fx can trace"
        ) from None


def _describe(node: fx.Node) -> str:
    name = getattr(node.target, "__name__", str(node.target))
    return "the network's output" if node.op == "output" else f"{node.op} {name!r} (node {node.name})"


def _follow(node: fx.Node, modules: Mapping[str, nn.Module], flattened: bool = False):
    """Walk the users of ``node``; yield ("norm" | "conv" | "linear", module name) for what the
    channels reach, or raise DecompositionError with the operation they cannot pass."""
    for user in node.users:
        m = modules.get(user.target) if user.op == "call_module" else None
        if isinstance(m, nn.Conv2d) and not flattened and user.args[0] is node and m.groups == 1:
            yield "conv", user.target
        elif isinstance(m, nn.Linear) and flattened:
            yield "linear", user.target
        elif isinstance(m, nn.BatchNorm2d) and not flattened:
            yield "norm", user.target
            yield from _follow(user, modules, flattened)
        elif (
            isinstance(m, _PASS_MODULES)
            or (user.op == "call_function" and user.target in _PASS_FUNCTIONS)
            or (user.op == "call_method" and user.target in _PASS_METHODS)
        ):
            yield from _follow(user, modules, flattened)
        elif isinstance(m, nn.Flatten) or (user.op == "call_function" and user.target in _FLATTEN):
            yield from _follow(user, modules, True)
        else:
            reason = "a grouped conv" if isinstance(m, nn.Conv2d) else _describe(user)
            if user.op == "call_function" and user.target in (operator.add, torch.add, torch.cat):
                reason = f"a residual addition or concatenation ({_describe(user)})"
            raise DecompositionError(reason)


def groups(net: nn.Module) -> dict[str, Group | str]:
    """Every nn.Conv2d of ``net`` by name: its :class:`Group`, or why its output channels cannot be
    pruned (they reach an operation that channel pruning cannot follow)."""
    graph, modules = _trace(net), dict(net.named_modules())
    out: dict[str, Group | str] = {}
    for node in graph.nodes:
        m = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(m, nn.Conv2d):
            continue
        if m.groups != 1:
            out[node.target] = f"{node.target!r} is a grouped conv (groups={m.groups})"
            continue
        try:
            reached = list(_follow(node, modules))
        except DecompositionError as e:
            out[node.target] = f"the output channels of {node.target!r} feed {e}, which pruning cannot follow"
            continue
        kinds = {k: tuple(dict.fromkeys(n for kind, n in reached if kind == k)) for k in ("norm", "conv", "linear")}
        if not kinds["conv"] and not kinds["linear"]:
            out[node.target] = f"the output channels of {node.target!r} reach no conv or Linear"
            continue
        out[node.target] = Group(node.target, kinds["norm"], kinds["conv"], kinds["linear"])
    return out


def group_of(net: nn.Module, name: str, found: Mapping[str, Group | str] | None = None) -> Group:
    """The :class:`Group` of conv ``name``, or a one-line DecompositionError naming it."""
    found = groups(net) if found is None else found
    if name not in found:
        raise DecompositionError(f"pruning: {name!r} is not an nn.Conv2d of the model; valid: {list(found)}")
    g = found[name]
    if isinstance(g, str):
        prunable = [n for n, v in found.items() if isinstance(v, Group)]
        raise DecompositionError(f"cannot prune {name!r}: {g}; prunable convs: {prunable}")
    return g


def kept_channels(channels: int, ratio: float, multiple: int = 1, name: str = "conv") -> int:
    """The channels a conv of ``channels`` keeps when pruned by ``ratio``:
    ``round(channels (1 - ratio) / multiple) · multiple``, at least ``multiple``; a
    DecompositionError if ``multiple`` exceeds ``channels``."""
    if multiple > channels:
        raise DecompositionError(
            f"decomp.rank_multiple={multiple} is larger than the {channels} channels of {name!r}; "
            f"valid: rank_multiple <= {channels}"
        )
    return min(channels, max(multiple, round(channels * (1 - ratio) / multiple) * multiple))


def check_ratio(ratio, key: str = "decomp.ratio") -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise DecompositionError(f"{key}={ratio!r} is invalid; valid: a fraction in (0, 1) of a conv's channels")


def check_criterion(criterion) -> None:
    if criterion not in CRITERIA:
        raise DecompositionError(f"decomp.criterion={criterion!r} is unknown; valid: {', '.join(CRITERIA)}")


def weight_importance(conv: nn.Conv2d, criterion: str) -> torch.Tensor:
    """Per output channel: the L1 or L2 norm of its filter."""
    w = conv.weight.detach().flatten(1)
    return w.abs().sum(1) if criterion == "l1" else w.norm(dim=1)


def taylor_importance(
    net: nn.Module, names: list[str], batches, loss_fn: Callable = F.cross_entropy
) -> dict[str, torch.Tensor]:
    """Per conv in ``names`` and output channel: ``|Σ_{h,w} a ∂L/∂a|`` averaged over the images of
    ``batches`` ((images, labels) pairs), ``a`` the channel's activation where its consumers read
    it (after its BatchNorm and activation). The network runs in eval mode (BatchNorm statistics
    do not move) and its gradients are left as they were."""
    found = groups(net)
    acts: dict[str, torch.Tensor] = {}
    sums = {n: 0.0 for n in names}
    hooks = []
    for n in names:
        first = group_of(net, n, found).consumers[0]

        def grab(_m, args, n=n):
            args[0].retain_grad()
            acts[n] = args[0]

        hooks.append(net.get_submodule(first).register_forward_pre_hook(grab))
    count = 0
    try:
        with eval_mode(net), torch.enable_grad():
            for images, labels in batches:
                acts.clear()
                x = images.requires_grad_(False)
                loss = loss_fn(net(x), labels, reduction="sum")
                grads = torch.autograd.grad(loss, [acts[n] for n in names])
                for n, g in zip(names, grads):
                    a = acts[n]
                    score = (a * g).flatten(2).sum(2) if a.dim() > 2 else a * g
                    sums[n] = sums[n] + score.abs().sum(0).detach()
                count += images.shape[0]
    finally:
        for h in hooks:
            h.remove()
    if not count:
        raise DecompositionError("decomp.criterion=taylor needs training images; the loader gave none")
    return {n: sums[n] / count for n in names}


def top_channels(importance: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` most important channels, in their original order."""
    return importance.topk(k).indices.sort().values


@torch.no_grad()
def _slice(module: nn.Module, keep: torch.Tensor, dim: int, attr: str) -> None:
    """Keep entries ``keep`` of ``dim`` in every parameter and buffer of ``module`` that has it."""
    for pname in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(module, pname, None)
        if t is None or (pname != "weight" and dim != 0) or t.dim() <= dim:
            continue
        new = t.index_select(dim, keep.to(t.device)).clone()
        if isinstance(t, nn.Parameter):
            setattr(module, pname, nn.Parameter(new, requires_grad=t.requires_grad))
        else:
            module.register_buffer(pname, new)
    setattr(module, attr, len(keep))


def narrowed(module: nn.Module, keep: torch.Tensor, dim: int) -> nn.Module:
    """A copy of the conv ``module`` with only the output (``dim=0``) or input (``dim=1``) channels
    ``keep``."""
    copied = copy.deepcopy(module)
    _slice(copied, keep, dim, ("out_channels", "in_channels")[dim])
    return copied


def masked(x: torch.Tensor, keep: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` (a conv's input ``(B, channels, H, W)``, or a Linear's ``(B, channels·H·W)`` after a
    Flatten) with every channel but ``keep`` zeroed: what its reader computes once they are pruned."""
    mask = torch.zeros(channels, dtype=x.dtype, device=x.device)
    mask[keep] = 1
    return (x.reshape(x.shape[0], channels, -1) * mask[:, None]).reshape(x.shape)


@torch.no_grad()
def remove_channels(net: nn.Module, group: Group, keep: torch.Tensor) -> None:
    """Keep only the output channels ``keep`` (indices) of ``group.conv``, in place, in it and in
    every module of its group (a Linear keeps each kept channel's block of ``H·W`` inputs)."""
    conv = net.get_submodule(group.conv)
    channels = conv.out_channels
    _slice(conv, keep, 0, "out_channels")
    for n in group.norms:
        _slice(net.get_submodule(n), keep, 0, "num_features")
    for n in group.convs:
        _slice(net.get_submodule(n), keep, 1, "in_channels")
    for n in group.linears:
        lin = net.get_submodule(n)
        per = lin.in_features // channels  # the features of one channel after the Flatten
        features = (keep[:, None] * per + torch.arange(per)).flatten()
        _slice(lin, features, 1, "in_features")


def filter_error(weight: torch.Tensor, keep: torch.Tensor) -> float:
    """||W[removed filters]||_F / ||W||_F: the relative kernel error of keeping only ``keep``."""
    w = weight.detach()
    return math.sqrt(max(0.0, 1 - float(w[keep].square().sum() / w.square().sum())))


def record(
    name: str, weight: torch.Tensor, keep: torch.Tensor, criterion: str, group: Group, ratio: float, seconds: float
) -> dict:
    """What results.json keeps of a conv of weight ``weight`` pruned to its channels ``keep``, as of
    a replaced layer: ``bases`` the channels kept, ``rel_error`` the :func:`filter_error`,
    ``macs_speedup`` the conv's own MAC ratio (its readers' are not counted here), ``solve_time_s``
    the seconds its pruning took (ranking included)."""
    shape, kept = list(weight.shape), len(keep)
    return {
        "name": name,
        "shape": shape,
        "method": METHOD,
        "label": LABEL,
        "letter": LETTER,
        "bases": kept,
        "ratio": ratio,
        "criterion": criterion,
        "consumers": list(group.consumers),
        "rel_error": filter_error(weight, keep),
        "macs_speedup": shape[0] / kept,
        "solve_time_s": seconds,
        "kept": True,
    }


def ratios_for(net: nn.Module, layers, ratio, multiple: int = 1) -> dict[str, float]:
    """The request of ``decomp=prune`` checked against ``net``, as ``{conv name: ratio}``, nothing
    pruned. ``layers``: conv names, glob patterns over the prunable convs, or ``all`` (every prunable
    conv); ``ratio``: one fraction in (0, 1) for all, or ``{name: ratio}``. Each error is one line
    naming the key, the bad value and what would be valid."""
    found = groups(net)
    prunable = [n for n, g in found.items() if isinstance(g, Group)]
    items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if isinstance(ratio, Mapping):
        items = items if layers != "all" else list(ratio)
        unknown = [n for n in ratio if n not in items]
        if unknown:
            raise DecompositionError(f"decomp.ratio names {unknown[0]!r}, which decomp.layers does not select")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise DecompositionError(
                f"decomp.layers={item!r} is invalid for pruning; valid: conv names, globs or 'all' of {prunable}"
            )
        if item == "all" or any(ch in item for ch in "*?["):
            matched = [n for n in prunable if fnmatchcase(n, "*" if item == "all" else item)]
            if not matched:
                raise DecompositionError(f"decomp.layers={item!r} selects no prunable conv; prunable: {prunable}")
            names += matched
        else:
            group_of(net, item, found)
            names.append(item)
    out = {}
    for name in dict.fromkeys(names):
        r = ratio.get(name) if isinstance(ratio, Mapping) else ratio
        if r is None:
            raise DecompositionError(f"decomp.ratio has no ratio for {name!r}; valid: one ratio, or one per layer")
        check_ratio(r, "decomp.ratio" if not isinstance(ratio, Mapping) else f"decomp.ratio.{name}")
        kept_channels(net.get_submodule(name).out_channels, r, multiple, name)
        out[name] = r
    return out


def prune(
    net: nn.Module,
    ratios: Mapping[str, float],
    criterion: str = "l1",
    multiple: int = 1,
    batches=None,
) -> list[dict]:
    """Prune each conv of ``ratios`` (name -> ratio) in ``net``, in place; everything is checked
    before anything changes. ``batches``: (images, labels) training batches, for ``taylor``.
    Returns one record per pruned conv, as a run keeps its replaced layers' (``bases``: the
    channels kept, ``macs_speedup``: the conv's own MAC ratio)."""
    check_criterion(criterion)
    found = groups(net)
    plan = {}
    for name, ratio in ratios.items():
        check_ratio(ratio, f"decomp.ratio[{name}]")
        g = group_of(net, name, found)
        n = net.get_submodule(name).out_channels
        plan[name] = (g, kept_channels(n, ratio, multiple, name))
    start = time.perf_counter()
    if criterion == "taylor":
        if batches is None:
            raise DecompositionError("decomp.criterion=taylor needs training batches")
        scores = taylor_importance(net, list(plan), batches)
    else:
        scores = {n: weight_importance(net.get_submodule(n), criterion) for n in plan}
    records = []
    for name, (g, k) in plan.items():
        keep, weight = top_channels(scores[name], k), net.get_submodule(name).weight
        remove_channels(net, g, keep)
        seconds = (time.perf_counter() - start) / len(plan)
        records.append(record(name, weight, keep, criterion, g, ratios[name], seconds))
    return records


_RESIZABLE = {
    nn.Conv2d: ("out_channels", "in_channels"),
    nn.BatchNorm2d: ("num_features",),
    nn.Linear: (None, "in_features"),
}


def _sizes(m: nn.Module) -> list[int] | None:
    attrs = next((a for t, a in _RESIZABLE.items() if type(m) is t), None)
    return None if attrs is None else [getattr(m, a) if a else m.weight.shape[0] for a in attrs]


def pruned_shapes(net: nn.Module, reference: nn.Module) -> dict[str, list[int]]:
    """The convs, BatchNorms and Linears of ``net`` whose channel counts differ from those of the
    same module in ``reference`` (the network as its model config builds it): name -> sizes
    (a conv's ``[out, in]``, a BatchNorm's ``[features]``, a Linear's ``[out, in]``)."""
    ref = dict(reference.named_modules())
    out = {}
    for name, m in net.named_modules():
        sizes = _sizes(m)
        if sizes is not None and name in ref and type(ref[name]) is type(m) and sizes != _sizes(ref[name]):
            out[name] = sizes
    return out


def resize(net: nn.Module, shapes: Mapping[str, list[int]]) -> None:
    """Give the modules of ``net`` the channel counts of :func:`pruned_shapes` (their first entries
    kept: the weights are loaded afterwards), in place."""
    for name, sizes in shapes.items():
        m = net.get_submodule(name)
        for dim, (attr, size) in enumerate(zip(_RESIZABLE[type(m)], sizes)):
            if attr is not None:
                _slice(m, torch.arange(size), dim, attr)
