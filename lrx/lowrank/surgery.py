"""Layer surgery: choose convs of a model, check the whole request, replace them in place.

    plan = validate(model, "conv*", scheme=2, bases=32)        # everything checked, nothing solved
    records = decompose(model, ["conv2", 3], scheme=1, bases={"conv2": 8, "conv3": 4})
    records = decompose(model, "all", scheme="tucker2", bases=None, rank_selection="vbmf")

Every error is a DecompositionError (a ValueError) naming the bad value and what would be valid,
raised before any layer is solved or replaced.
"""

from collections.abc import Mapping
from fnmatch import fnmatchcase

from torch import nn

from lrx.lowrank.base import ConvGeometry, DecompositionError, LowRankConv, check_conv, check_finite, is_decomposable
from lrx.lowrank.cp import CPConv
from lrx.lowrank.scheme1 import LowRankExpConvV1
from lrx.lowrank.scheme2 import LowRankExpConvV2
from lrx.lowrank.tucker2 import Tucker2Conv
from lrx.lowrank.vbmf import tucker2_ranks

# The paper's two schemes, and two peer decompositions as baselines.
SCHEMES: dict[int | str, type[LowRankConv]] = {1: LowRankExpConvV1, 2: LowRankExpConvV2, "tucker2": Tucker2Conv,
                                               "cp": CPConv}
RANK_SELECTIONS = (None, "vbmf")


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _valid(model: nn.Module) -> str:
    names = [name for name, conv in _convs(model) if is_decomposable(conv)]
    return f"valid conv layers: {names}" if names else "the model has no decomposable conv layer"


def select_convs(model: nn.Module, layers) -> list[tuple[str, nn.Conv2d]]:
    """The convs named by ``layers``, in model order, each once.

    ``layers`` is one item or a list of items, each:
      - a module name ('conv2', 'features.3'): must be a decomposable nn.Conv2d, else an error;
      - a glob on the full dotted name ('conv*', 'features.*'): the decomposable convs it matches
        (kernel with both sides > 1, groups == 1, zero padding); others are silently skipped;
      - a 1-based index counting every nn.Conv2d in ``model.named_modules()`` order: must be
        decomposable, else an error (the count is of the model as it is now: a replaced layer is
        no longer counted, its Scheme 2 passes are);
      - 'all': every decomposable conv.
    A glob or 'all' that selects nothing is an error too.
    """
    items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if not items:
        raise DecompositionError(f"no layers given; {_valid(model)}")
    convs = _convs(model)
    modules = dict(model.named_modules())
    chosen = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 1 <= item <= len(convs):
                raise DecompositionError(
                    f"conv index {item} is out of range: the model has {len(convs)} nn.Conv2d (1-based "
                    f"indices 1..{len(convs)}); {_valid(model)}")
            name, conv = convs[item - 1]
            check_conv(conv, name)
            chosen.add(name)
        elif isinstance(item, str) and (item == "all" or any(ch in item for ch in "*?[")):
            pattern = "*" if item == "all" else item
            matched = {name for name, conv in convs if fnmatchcase(name, pattern) and is_decomposable(conv)}
            if not matched:
                raise DecompositionError(f"{item!r} selects no decomposable conv layer; {_valid(model)}")
            chosen |= matched
        elif isinstance(item, str):
            if item not in modules or item == "":
                raise DecompositionError(f"no module named {item!r}; {_valid(model)}")
            check_conv(modules[item], item)
            chosen.add(item)
        else:
            raise DecompositionError(
                f"layer selector {item!r} ({type(item).__name__}): use a name, a glob, a 1-based index or 'all'")
    return [(name, conv) for name, conv in convs if name in chosen]


def resolve_bases(selected_names: list[str], bases) -> list[int]:
    """Bases per selected layer, from an int (every layer), a list aligned with ``selected_names``
    or a mapping name -> bases that covers exactly the selected layers (a Tucker-2 pair
    (R_in, R_out) for every layer therefore goes in that list or mapping). Values are range-checked
    by ``validate``."""
    if isinstance(bases, Mapping):
        unknown = sorted(set(bases) - set(selected_names))
        missing = [name for name in selected_names if name not in bases]
        if unknown or missing:
            raise DecompositionError(
                f"bases mapping must name exactly the selected layers {selected_names}; "
                f"unknown: {unknown}, missing: {missing}")
        return [bases[name] for name in selected_names]
    if isinstance(bases, (list, tuple)):
        if len(bases) != len(selected_names):
            raise DecompositionError(
                f"bases list has length {len(bases)} but {len(selected_names)} layers are selected "
                f"{selected_names}: give one value per layer, a single int, or a mapping")
        return list(bases)
    return [bases] * len(selected_names)


def validate(model: nn.Module, layers, scheme: int | str, bases, rank_selection: str | None = None,
             **solver_options) -> list[tuple[str, nn.Conv2d, int | tuple[int, int] | None]]:
    """Check a whole decomposition request without solving anything: the layer selection, the
    scheme, every layer's bases against its full rank (Scheme 1: kh*kw; Scheme 2: min(C*kh, N*kw);
    Tucker-2: an int or a pair (R_in, R_out) up to (C, N); CP: the smallest product of all kernel
    sizes but one) and the solver options. Returns the plan [(name, conv, bases)].

    ``rank_selection='vbmf'`` (Tucker-2 only) ignores ``bases``: each layer's ranks are chosen by
    VBMF from its weight when it is decomposed, so the plan holds None for them."""
    if scheme not in SCHEMES:
        raise DecompositionError(f"scheme={scheme!r}; valid: {', '.join(map(repr, SCHEMES))}")
    if rank_selection not in RANK_SELECTIONS:
        raise DecompositionError(f"rank_selection={rank_selection!r}; valid: None (use bases) or 'vbmf'")
    if rank_selection == "vbmf" and scheme != "tucker2":
        raise DecompositionError(f"rank_selection='vbmf' chooses Tucker-2 ranks; it needs scheme='tucker2', "
                                 f"not scheme={scheme!r}")
    cls = SCHEMES[scheme]
    cls.check_options(**solver_options)
    selected = select_convs(model, layers)
    if rank_selection == "vbmf":
        return [(name, conv, None) for name, conv in selected]
    names = [name for name, _ in selected]
    plan = []
    for (name, conv), b in zip(selected, resolve_bases(names, bases)):
        g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size)
        plan.append((name, conv, cls.valid_bases(g, b, name)))
    return plan


def decompose(model: nn.Module, layers, scheme: int | str, bases, rank_selection: str | None = None,
              **solver_options) -> list[dict]:
    """Validate the request, then replace each selected conv of ``model`` in place by a layer of
    ``SCHEMES[scheme]`` (Scheme 1 LowRankExpConvV1, Scheme 2 LowRankExpConvV2, 'tucker2'
    Tucker2Conv, 'cp' CPConv) fitted to its weight, with ranks from VBMF if ``rank_selection``
    is 'vbmf'.

    Returns one JSON-serialisable record per replaced layer: name, shape [N, C, kh, kw], scheme,
    bases, rel_error, macs_speedup, solve_time_s, and the scheme's solver info: lambda (Scheme 1
    schedule info, None for Scheme 2), for Scheme 1 rank1_energy, init and refine_iters, for
    Tucker-2 hooi_iters, for CP iters. The per-round objective history stays in the new layer's
    ``report``. A NaN/Inf in a selected layer's weight or bias is a DecompositionError naming the
    layer, raised before any layer is replaced.
    """
    plan = validate(model, layers, scheme, bases, rank_selection, **solver_options)
    for name, conv, _ in plan:
        check_finite(conv, name)
    records = []
    for name, conv, b in plan:
        if rank_selection == "vbmf":
            b = tucker2_ranks(conv.weight)
        layer = SCHEMES[scheme].from_conv(conv, b, **solver_options)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
        report = {k: v for k, v in layer.report.items() if k != "history"}
        records.append({"name": name, "shape": list(conv.weight.shape), **report})
    return records
