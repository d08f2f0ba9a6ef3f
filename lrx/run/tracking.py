"""What a run tells its loggers (W&B, CSV, or none): a readable run name, the summary metrics
(their names are defined here, once) and one table row per replaced layer.

A logger never takes a run down: every call to one is guarded, and a failure becomes a warning
while the run goes on and still writes ``results.json``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lrx.lowrank import method_class
from lrx.results.text import lambda_text, rank_text

log = logging.getLogger(__name__)

LAYER_COLUMNS = [
    "name",
    "shape",
    "method",
    "bases",
    "lambda",
    "rel_error",
    "rel_error_data",
    "macs_speedup",
    "measured_speedup_cpu",
    "measured_speedup_cuda",
    "solve_time_s",
]


def _short_layer(layer) -> str:
    """``conv2`` -> ``2``, ``3`` -> ``3``; anything else as written."""
    m = re.fullmatch(r"conv(\d+)", str(layer))
    return m.group(1) if m else str(layer)


def _layers_label(layers) -> str:
    if layers in ("all", None) or layers == []:
        return "all"
    items = [_short_layer(x) for x in (layers if isinstance(layers, list) else [layers])]
    if all(i.isdigit() for i in items) and len(items) > 2:
        nums = sorted(map(int, items))
        if nums == list(range(nums[0], nums[-1] + 1)):
            return f"{nums[0]}-{nums[-1]}"
    return ",".join(items)


def _bases_label(bases) -> str:
    """The config's ``decomp.bases``: ``8``, per layer ``16/32``, Tucker-2 pairs ``64x32``."""
    values = bases.values() if isinstance(bases, dict) else bases if isinstance(bases, list) else [bases]
    return "/".join(map(rank_text, values))


def run_name(cfg: DictConfig) -> str:
    """A name a dashboard reader understands, e.g. ``alexnet cifar10 s1 M8 l2``, ``alexnet_cifar
    cifar100 s2 K16/32 l2,3``, ``resnet20_cifar cifar10 plan 2x latency lall`` or ``alexnet_cifar
    cifar10 baseline``: the model, the dataset, then what was done."""
    d = OmegaConf.to_container(cfg.decomp, resolve=True)
    model = f"{cfg.model.name} {cfg.data.get('name', 'cifar10')}"
    if d["method"] == "plan":
        p = cfg.planner
        return f"{model} plan {p.target_speedup:g}x {p.metric} l{_layers_label(d['layers'])}"
    if d["method"] == "none":
        return f"{model} baseline"
    bases = f"{method_class(d['method']).letter}{_bases_label(d['bases'])}"
    return f"{model} {method_class(d['method']).label} {bases} l{_layers_label(d['layers'])}"


def summary_metrics(results: dict) -> dict[str, float]:
    """The run's summary, flat, with the names used on every dashboard and in every CSV:

    ``{baseline,final}/{acc1, acc1_test, macs_m, params_m, latency_ms/<device>}``,
    ``speedup/macs``, ``speedup/{conv,model}/<device>`` (measured), ``stage/<stage>/{acc1,
    acc1_test}`` for each stage that ran (filter, data, finetune, guard) and, where the run was
    deployed to targets, ``speedup/vs_best_dense`` (where there is a best dense) and
    ``deploy/<target>/{baseline,final}/{ms,acc1}``."""
    out: dict[str, float] = {}
    for side in ("baseline", "final"):
        r = results[side]
        out[f"{side}/acc1"] = r["acc1"]
        out[f"{side}/acc1_test"] = r["acc1_test"]
        out[f"{side}/macs_m"] = r["macs"] / 1e6
        out[f"{side}/params_m"] = r["params"] / 1e6
        for dev, ms in r.get("latency_ms", {}).items():
            out[f"{side}/latency_ms/{dev}"] = ms
    sp = results["speedup"]
    out["speedup/macs"] = sp["macs"]
    for kind in ("conv", "model"):
        for dev, v in sp[kind].items():
            out[f"speedup/{kind}/{dev}"] = v
    if sp.get("vs_best_dense") is not None:
        out["speedup/vs_best_dense"] = sp["vs_best_dense"]
    for stage, accs in results["stages"].items():
        for key, v in accs.items():
            out[f"stage/{stage}/{key}"] = v
    for target, sides in ((results.get("deploy") or {}).get("targets") or {}).items():
        for side in ("baseline", "final"):
            for key in ("ms", "acc1"):
                out[f"deploy/{target}/{side}/{key}"] = sides[side][key]
    return out


def layer_rows(results: dict) -> list[list]:
    """One row per replaced layer, in :data:`LAYER_COLUMNS` order."""
    rows = []
    for r in results["layers"]:
        measured = r.get("measured_speedup", {})
        rows.append(
            [
                r["name"],
                "x".join(map(str, r["shape"])),
                r["method"],
                rank_text(r["bases"]),
                lambda_text(r.get("lambda")),
                r["rel_error"],
                r.get("data_recon", {}).get("rel_error_after"),
                r["macs_speedup"],
                measured.get("cpu"),
                measured.get("cuda"),
                r["solve_time_s"],
            ]
        )
    return rows


def run_kind(cfg: DictConfig) -> str:
    """``baseline``, ``plan`` or the method's label (``s1``, ``s2``, ``cp``, ...): a tag, and part
    of :func:`run_name`."""
    method = cfg.decomp.method
    return {"none": "baseline", "plan": "plan"}.get(method) or method_class(method).label


def make_loggers(cfg: DictConfig, group: str | None) -> list:
    """Instantiate the configured loggers. W&B gets :func:`run_name` (unless ``logger.wandb.name``
    is set), the sweep as its group (unless set), the model, the dataset and :func:`run_kind` as tags,
    and the resolved config. A logger that cannot start is dropped with a warning."""
    loggers = []
    for key, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        extra = {}
        if "name" in node and node.name is None:
            extra["name"] = run_name(cfg)
        if "group" in node and node.group is None:
            extra["group"] = group
        if "tags" in node:
            extra["tags"] = [*node.tags, cfg.model.name, cfg.data.get("name", "cifar10"), run_kind(cfg)]
        try:
            lg = instantiate(node, **extra)
            if type(lg).__name__ == "WandbLogger":
                _ = lg.experiment  # start the run now, so a failure shows here and not mid-training
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        except Exception as e:  # noqa: BLE001 - a logger must never take the run down
            log.warning("logger %r could not start (%s: %s); going on without it", key, type(e).__name__, e)
            continue
        loggers.append(lg)
    return loggers


def finish(loggers: Iterable) -> None:
    """Close W&B runs, so that the next job of a sweep in the same process starts its own."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            guarded(lg, "finish", lambda lg=lg: lg.experiment.finish())


def guarded(logger, what: str, call: Callable[[], object]) -> None:
    """Run ``call``; a failure of the logger becomes a warning."""
    try:
        call()
    except Exception as e:  # noqa: BLE001 - any logger failure must leave the run going
        log.warning(
            "logger %s failed to %s (%s: %s); the run goes on, results.json is unaffected",
            type(logger).__name__,
            what,
            type(e).__name__,
            e,
        )


def log_results(loggers: Iterable, results: dict) -> None:
    """Log the summary metrics to every logger; W&B also gets them as its run summary and the
    per-layer table as ``layers``."""
    summary = summary_metrics(results)
    for lg in loggers:
        guarded(lg, "log the summary metrics", lambda lg=lg: lg.log_metrics(summary))
        if type(lg).__name__ == "WandbLogger":
            guarded(lg, "write the W&B summary", lambda lg=lg: lg.experiment.summary.update(summary))
            guarded(
                lg,
                "log the layer table",
                lambda lg=lg: lg.log_table("layers", columns=LAYER_COLUMNS, data=layer_rows(results)),
            )
