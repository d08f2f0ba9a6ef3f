"""Layer surgery: choose convs of a model, check the whole request, replace them in place.

    plan = validate(model, "conv*", "scheme2", bases=32)        # everything checked, nothing solved
    records = decompose(model, ["conv2", 3], "scheme1", bases={"conv2": 8, "conv3": 4})
    records = decompose(model, "all", "tucker2", bases="vbmf")

Every error is a DecompositionError (a ValueError) naming the bad value and what would be valid,
raised before any layer is solved or replaced.
"""

import logging
from collections.abc import Mapping
from fnmatch import fnmatchcase

from torch import nn
from tqdm.auto import tqdm

from lrx.lowrank.base import method_class
from lrx.lowrank.checks import DecompositionError, check_conv, check_finite, is_decomposable
from lrx.lowrank.geometry import ConvGeometry

log = logging.getLogger(__name__)


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _valid(model: nn.Module) -> str:
    names = [name for name, conv in _convs(model) if is_decomposable(conv)]
    return f"valid conv layers: {names}" if names else "the model has no decomposable conv layer"


def skipped_convs(model: nn.Module) -> dict[str, str]:
    """Every nn.Conv2d that no method can decompose, with the reason (grouped or depthwise, 1x1,
    a kernel side of 1, non-zero padding mode)."""
    skipped = {}
    for name, conv in _convs(model):
        try:
            check_conv(conv, name)
        except DecompositionError as e:
            skipped[name] = str(e)
    return skipped


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
                    f"indices 1..{len(convs)}); {_valid(model)}"
                )
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
                f"layer selector {item!r} ({type(item).__name__}): use a name, a glob, a 1-based index or 'all'"
            )
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
                f"unknown: {unknown}, missing: {missing}"
            )
        return [bases[name] for name in selected_names]
    if isinstance(bases, (list, tuple)):
        if len(bases) != len(selected_names):
            raise DecompositionError(
                f"bases list has length {len(bases)} but {len(selected_names)} layers are selected "
                f"{selected_names}: give one value per layer, a single int, or a mapping"
            )
        return list(bases)
    return [bases] * len(selected_names)


def validate(
    model: nn.Module, layers, method, bases, rank_multiple: int = 1, **options
) -> list[tuple[str, nn.Conv2d, object]]:
    """Check a whole decomposition request without solving anything: the method, the layer
    selection, every layer's bases against its full rank (the method's ``valid_bases``) and the
    method's options; the bases are rounded to multiples of ``rank_multiple``. Returns the plan
    [(name, conv, bases)]."""
    cls = method_class(method)
    cls.check_options(options)
    selected = select_convs(model, layers)
    names = [name for name, _ in selected]
    plan = []
    for (name, conv), b in zip(selected, resolve_bases(names, bases)):
        g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size)
        plan.append((name, conv, cls.round_bases(g, cls.valid_bases(g, b, name), rank_multiple, name)))
    return plan


def decompose(model: nn.Module, layers, method, bases, rank_multiple: int = 1, **options) -> list[dict]:
    """Validate the request, then replace each selected conv of ``model`` in place by a layer of
    the registered ``method`` (lrx.lowrank.METHODS) fitted to its weight.

    Returns one JSON-serialisable record per replaced layer: name, shape [N, C, kh, kw], method,
    bases, rel_error, macs_speedup, solve_time_s, and the method's solver info (Scheme 1: lambda,
    rank1_energy, init, refine_iters; Tucker-2: hooi_iters; CP: iters). The per-round objective
    history stays in the new layer's ``report``. A NaN/Inf in a selected layer's weight or bias is
    a DecompositionError naming the layer, raised before any layer is replaced.
    """
    plan = validate(model, layers, method, bases, rank_multiple, **options)
    for name, conv, _ in plan:
        check_finite(conv, name)
    cls = method_class(method)
    records = []
    for name, conv, b in tqdm(plan, desc=f"filter reconstruction ({cls.method})", unit="layer", leave=False):
        layer = cls.from_conv(conv, b, **options)
        model.set_submodule(name, layer)
        records.append(layer_record(name, conv, layer))
        r = records[-1]
        log.info(
            "filter reconstruction of %s: %s %s, relative error %.3f, %.2fx fewer MACs, %.2f s",
            name,
            cls.method,
            r["bases"],
            r["rel_error"],
            r["macs_speedup"],
            r["solve_time_s"],
        )
    return records


def layer_record(name: str, conv: nn.Conv2d, layer) -> dict:
    """What results.json keeps of a replaced layer: its name, the conv's shape and the layer's
    report without the per-round history."""
    return {"name": name, "shape": list(conv.weight.shape), **{k: v for k, v in layer.report.items() if k != "history"}}
