"""The config's schema: the keys, types and defaults of the groups whose keys are fixed, as Hydra
structured configs that the YAML files of conf/ extend (``defaults: [/schema/<group>@_here_, _self_]``).

Importing this module registers them in Hydra's ConfigStore (under ``schema/``), and the resolver
``${lrx.root:}``: the project folder (``paths.root``), against which the paths resolve whatever
the working directory. Hydra then refuses an unknown key or a value of the wrong type at
composition, naming the full key; the ranges, choices and combinations are :mod:`lrx.run.config`'s.

The YAML files state the same values (they are what users read); the decomp group's shared keys
live here alone. The groups with ``_target_`` nodes (data, model, trainer, callbacks, logger) are
not typed: their constructors check their arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from lrx.io import PROJECT
from lrx.measure.estimator import Estimator
from lrx.runtime.calibration import CALIBRATION_IMAGES


def project_path(path: str | Path) -> str:
    """``path`` relative to the project when inside it (a result stays valid in another checkout),
    else absolute."""
    p = Path(path).resolve()
    return str(p.relative_to(PROJECT)) if p.is_relative_to(PROJECT) else str(p)


@dataclass
class Decomp:
    """decomp=none: the baseline is kept, nothing is replaced (and no other decomp key exists)."""

    method: str = MISSING


@dataclass
class DecompPlan(Decomp):
    """decomp=plan: the planner chooses the methods and bases (its settings: the planner group)."""

    layers: Any = "all"  # names, globs, 1-based indices or all: the convs that may be replaced
    rank_multiple: int = 1  # round every rank to a multiple of this (hardware-friendly channel counts)


@dataclass
class DecompMethod(DecompPlan):
    """decomp=<method>: the keys every method shares. A method's yaml lists ``_self_`` before this
    schema, so that its own options (scheme1's ``lam``) extend it; they are checked by the method
    class (``check_options``)."""

    # Module names, glob patterns (conv*), 1-based conv indices (2 = the second conv) or "all";
    # by default the model's own (model.default_layers), or every decomposable conv.
    layers: Any = "${oc.select:model.default_layers,all}"
    # An int, a list aligned with layers, or {name: bases}; what a basis is: conf/decomp/<method>.yaml.
    bases: Any = 8


@dataclass
class DecompPrune(DecompPlan):
    """decomp=prune: channel pruning (lrx.compress.prune) of the selected convs."""

    ratio: Any = 0.5  # a fraction in (0, 1) of each conv's output channels, or {name: ratio}
    criterion: str = "l1"  # l1 | l2 (the filters' norm) | taylor (first-order, on training batches)
    samples: int = 256  # criterion=taylor: training images it averages over
    engine: str = "lrx"  # lrx | torch_pruning (the peer: the same ratio on every conv, L1, Torch-Pruning's tracing)


@dataclass
class PlannerPrune:
    """planner.prune: the pruning candidates, when prune is among planner.methods."""

    ratios: list[float] = field(default_factory=lambda: [0.25, 0.375, 0.5, 0.625, 0.75])
    criterion: str = "l1"


@dataclass
class Planner:
    """planner (with decomp=plan): which convs to replace by which method, with how many bases."""

    target_speedup: float = 2.0
    metric: str = "latency"
    closed_loop_rounds: int = 5
    error: str = "data"
    samples: int = 256
    methods: list[str] = field(default_factory=lambda: ["scheme2"])
    speedups: list[float] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    prune: PlannerPrune = field(default_factory=PlannerPrune)


@dataclass
class DataRecon:
    """data_recon: layer-by-layer output matching on training batches."""

    mode: str = "asymmetric"
    batches: int = 9
    holdout_batches: int = 1
    lstsq: bool = True
    batch_size: int = 128
    steps: int = 300
    lr: float = 1.0e-3
    optimizer: str = "adam"


@dataclass
class Finetune:
    """finetune=ce: fine-tuning by cross-entropy; optimizer and scheduler are Hydra partials."""

    epochs: int = 1
    loss: str = "ce"
    optimizer: Any = MISSING
    scheduler: Any = MISSING


@dataclass
class FinetuneKD(Finetune):
    """finetune=kd: distillation from the baseline's logits."""

    loss: str = "kd"
    temperature: float = 4.0
    kd_alpha: float = 0.9


@dataclass
class DecideAt:
    """latency.decide_at: the deployment point (null: the largest batch size / thread count); busy:
    neighbour processes, each keeping a core busy, beside every timing that decides or is reported,
    for a network served on a shared CPU."""

    batch_size: int | None = None
    threads: int | None = None
    busy: int = 0


# latency.estimator: lrx.measure.estimator.Estimator's fields, types and defaults (a frozen
# dataclass would make the node read-only, so the same fields in a mutable one)
EstimatorSchema = make_dataclass(
    "Estimator", [(f.name, get_type_hints(Estimator)[f.name], field(default=f.default)) for f in fields(Estimator)]
)


@dataclass
class Latency:
    """latency: what is timed, how, and where the guard and the latency planner decide."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    threads: list[int] | None = None
    decide_at: DecideAt = field(default_factory=DecideAt)
    memory_format: str = "channels_last"
    estimator: EstimatorSchema = field(default_factory=EstimatorSchema)
    quiet_wait_s: float = 60.0
    guard: bool = True
    fold_bn: bool = True
    runtime: str = "auto"
    precision: str = "auto"


@dataclass
class Deploy:
    """deploy: the deployment targets both networks are served in, and ONNX export with ONNX
    Runtime timings per conv."""

    targets: Any = "auto"  # "auto" (every target this installation and CPU serve), or a list of names
    calibration_images: int = CALIBRATION_IMAGES
    serving: str = "default"  # "default" (each runtime's own), or "auto": chosen by measurement after the run
    serving_busy: int = 1
    onnx: bool = False
    opset: int = 18
    check_images: int = 16


@dataclass
class Baseline:
    """baseline: a checkpoint to use (default: the model's shipped one for this data, if any), or
    where trained baselines are cached."""

    ckpt: str | None = "${oc.select:model.checkpoints.${data.name},null}"
    cache_dir: str = "${paths.baseline_cache}"


SCHEMAS = {
    "decomp/none": Decomp,
    "decomp/plan": DecompPlan,
    "decomp/method": DecompMethod,
    "decomp/prune": DecompPrune,
    "planner": Planner,
    "data_recon": DataRecon,
    "finetune/ce": Finetune,
    "finetune/kd": FinetuneKD,
    "latency": Latency,
    "deploy": Deploy,
    "baseline": Baseline,
}


def _register() -> None:
    store = ConfigStore.instance()
    for path, schema in SCHEMAS.items():
        group, _, name = f"schema/{path}".rpartition("/")
        store.store(group=group, name=name, node=schema)
    OmegaConf.register_new_resolver("lrx.root", lambda: str(PROJECT), replace=True)


_register()
