"""The config's checks before any work, beyond its schema: ranges, allowed values, the
combinations, and the options of each method (through the method registry).

The keys, types and defaults of the groups are :mod:`lrx.run.schema`'s, which Hydra applies at
composition. :func:`check` runs first in every run (nothing is read, trained, solved or written
before it). A bad value is a :class:`ConfigError` that names the full key, the value and what
would be valid. A key that has no effect in the chosen combination is an error too; in a sweep,
where one config drives several methods, it is instead one warning that lists the ignored keys
(the run keeps them in ``results.json`` as ``ignored_keys``).

Groups that are off are absent (``decomp=none`` has no ``decomp.bases``, ``data_recon`` and
``finetune`` are absent unless selected, ``planner`` comes only with ``decomp=plan``), so Hydra
itself refuses a key set for them; the checks here catch what gets in through ``+key=value``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import asdict, fields

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lrx.compress.data_recon import MODES, OPTIMIZERS
from lrx.compress.planner import PRUNE, Pruning, valid_speedups
from lrx.compress.prune import CRITERIA
from lrx.deploy.compare import targets_of
from lrx.deploy.targets import AUTO, TARGETS, TargetError, servable
from lrx.lowrank import METHODS, method_class
from lrx.lowrank.checks import DecompositionError, is_int
from lrx.measure.estimator import FIELDS as ESTIMATOR_KEYS
from lrx.measure.latency import MEMORY_FORMATS, PRECISIONS, RUNTIMES, thread_counts, unsupported
from lrx.measure.load import cores
from lrx.run import schema
from lrx.run.callbacks import ModelCost
from lrx.run.module import LOSSES
from lrx.runtime import RUNTIME_PRECISIONS, extras
from lrx.runtime.onnxruntime import require_onnx
from lrx.runtime.openvino import require_openvino

SERVING_CHOICES = ("default", "auto")  # deploy.serving
KEEP, PLAN = "none", "plan"  # decomp.method values that are not methods: keep the baseline, plan
PRUNE_ENGINES = ("lrx", "torch_pruning")  # decomp=prune: lrx's own pruning, or the Torch-Pruning peer
PLAN_ERRORS = ("data", "kl", "filter")
PLAN_METRICS = ("macs", "latency")
MIN_OPSET = 18  # the dynamo exporter's lowest
MODEL_COST = f"{ModelCost.__module__}.{ModelCost.__qualname__}"  # the callback that times the network, as latency.*
MODEL_COST_KEYS = {"_target_", *inspect.signature(ModelCost).parameters}
TRAINER_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")


class ConfigError(ValueError):
    """A config value that is invalid, or has no effect in this combination."""


def _bad(key: str, value, valid: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is invalid; valid: {valid}")


def _int(node: Mapping, group: str, key: str, low: int) -> None:
    value = node[key]
    if not is_int(value) or value < low:
        raise _bad(f"{group}.{key}", value, f"an integer >= {low}")


def _number(node: Mapping, group: str, key: str, low: float, strict: bool = False) -> None:
    value = node[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value > low if strict else value >= low)
    if not ok:
        raise _bad(f"{group}.{key}", value, f"a number {'>' if strict else '>='} {low:g}")


def _choice(node: Mapping, group: str, key: str, valid) -> None:
    if node[key] not in valid:
        raise _bad(f"{group}.{key}", node[key], ", ".join(map(str, valid)))


def _names(dataclass: type) -> set[str]:
    """The keys of a schema (:mod:`lrx.run.schema`)."""
    return {f.name for f in fields(dataclass)}


def _keys(node: Mapping, group: str, allowed: set, why: str = "") -> None:
    """Every key present and none unknown: one added with ``+`` would be silently ignored, and a
    group assembled from ``+`` keys misses the others."""
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise ConfigError(
            f"{group}.{unknown[0]} is not a setting of {group}{why}; valid keys: {', '.join(sorted(allowed))}"
        )
    missing = sorted(allowed - set(node))
    if missing:
        raise ConfigError(
            f"{group}.{missing[0]} is missing (select the group, e.g. {group}=default, "
            f"instead of setting single keys with +)"
        )


def flat_options(node: Mapping, prefix: str) -> tuple[dict, dict]:
    """A method's config options as solver keywords (``lam.schedule`` -> ``lam_schedule``), and
    each keyword's full config key for error messages."""
    options, names = {}, {}

    def walk(sub: Mapping, path: list[str]) -> None:
        for k, v in sub.items():
            if isinstance(v, Mapping):
                walk(v, [*path, k])
            else:
                keyword = "_".join([*path, k])
                options[keyword], names[keyword] = v, ".".join([prefix, *path, k])

    walk(node, [])
    return options, names


def _checked_options(node: Mapping, prefix: str) -> tuple[dict, list[str]]:
    """The solver options of the method ``node`` configures (its keys but those of the schema
    every method shares), checked by the method itself (errors name the config keys), and those
    of them that have no effect given the others (each with the reason)."""
    cls = method_class(node["method"])
    shared = _names(schema.DecompMethod)
    options, names = flat_options({k: v for k, v in node.items() if k not in shared}, prefix)
    try:
        merged = cls.check_options(options, names)
    except DecompositionError as e:
        raise ConfigError(str(e)) from None
    return options, [f"{names[k]} ({why})" for k, why in cls.unused_options(merged).items()]


def method_options(node: Mapping, prefix: str = "decomp") -> dict:
    """The checked solver options of the method ``node`` configures (see :func:`_checked_options`)."""
    return _checked_options(node, prefix)[0]


def _changed_from_defaults(node: Mapping, group: str, defaults: type, keys, why: str) -> list[str]:
    """``group.key (why)`` for each of ``keys`` whose value differs from its default in the schema
    ``defaults``: a key somebody set, in a combination where it has no effect."""
    default = defaults()
    return [f"{group}.{k} ({why})" for k in keys if node[k] != getattr(default, k)]


def _check_decomp(c: dict, ignored: list[str]) -> None:
    d = c["decomp"]
    method = d.get("method")
    valid = f"{', '.join(METHODS)}, {PRUNE}, {PLAN} or {KEEP}"
    if method == KEEP:
        _keys(d, "decomp", _names(schema.Decomp), " with decomp=none (the baseline is kept, nothing is replaced)")
        return
    if method == PLAN:
        _keys(d, "decomp", _names(schema.DecompPlan), " with decomp=plan (the planner chooses methods and bases)")
        _int(d, "decomp", "rank_multiple", 1)
        if c.get("planner") is None:  # absent, or emptied by a file that states `planner:` alone
            raise ConfigError("decomp=plan needs the planner group (select decomp=plan, which adds it)")
        return
    if method == PRUNE:
        _keys(d, "decomp", _names(schema.DecompPrune), " with decomp=prune")
        _int(d, "decomp", "rank_multiple", 1)
        _int(d, "decomp", "samples", 1)
        _choice(d, "decomp", "criterion", CRITERIA)
        _choice(d, "decomp", "engine", PRUNE_ENGINES)
        if d["criterion"] != "taylor" and d["samples"] != schema.DecompPrune.samples:
            ignored.append("decomp.samples (only decomp.criterion=taylor reads training images)")
        if d["engine"] == "torch_pruning":
            try:
                extras.require(extras.missing(["torch_pruning"]), "prune", "decomp.engine=torch_pruning")
            except ImportError as e:
                raise ConfigError(str(e)) from None
            if d["layers"] != "all" or not isinstance(d["ratio"], (int, float)) or d["criterion"] != "l1":
                raise ConfigError(
                    f"decomp.engine=torch_pruning prunes every conv by one ratio ranked by the L1 norm; valid with it: "
                    f"decomp.layers=all, one decomp.ratio and decomp.criterion=l1 (got {d['layers']!r}, "
                    f"{d['ratio']!r}, {d['criterion']!r})"
                )
        return
    try:
        method_class(method)
    except DecompositionError:
        raise _bad("decomp.method", method, valid) from None
    missing = sorted(_names(schema.DecompMethod) - set(d))
    if missing:
        raise ConfigError(f"decomp.{missing[0]} is missing for decomp.method={method}")
    _int(d, "decomp", "rank_multiple", 1)
    ignored += _checked_options(d, "decomp")[1]


def _check_planner(c: dict, ignored: list[str]) -> None:
    p = c.get("planner")
    if p is None:
        return
    if c["decomp"].get("method") != PLAN:
        raise ConfigError(
            f"planner.* is set but decomp={c['decomp'].get('method')}: the planner runs with decomp=plan only"
        )
    _keys(p, "planner", _names(schema.Planner))
    _number(p, "planner", "target_speedup", 1, strict=True)
    _choice(p, "planner", "metric", PLAN_METRICS)
    _int(p, "planner", "closed_loop_rounds", 0)
    if p["metric"] != "latency":
        ignored += _changed_from_defaults(
            p, "planner", schema.Planner, ["closed_loop_rounds"], "only a latency plan is measured and re-aimed"
        )
    _choice(p, "planner", "error", PLAN_ERRORS)
    _int(p, "planner", "samples", 1)
    methods = p["methods"]
    if not methods or not all(m == PRUNE or _is_method(m) for m in methods):
        raise _bad("planner.methods", methods, f"a non-empty list of {', '.join(METHODS)} or {PRUNE}")
    if not valid_speedups(p.get("speedups")):
        raise _bad("planner.speedups", p["speedups"], "null or a non-empty list of numbers > 1")
    chosen = {method_class(m).method for m in methods if m != PRUNE}
    try:
        Pruning(tuple(p["prune"]["ratios"]), p["prune"]["criterion"]).check()
    except DecompositionError as e:
        raise ConfigError(str(e)) from None
    if PRUNE not in methods and p["prune"] != asdict(schema.PlannerPrune()):
        ignored.append(f"planner.prune ({PRUNE} is not among planner.methods={methods})")
    for name, opts in p["options"].items():
        if not _is_method(name):
            raise _bad("planner.options", name, f"options keyed by method: {', '.join(METHODS)}")
        ignored += _checked_options({"method": name, **opts}, f"planner.options.{name}")[1]
        if method_class(name).method not in chosen:
            ignored.append(f"planner.options.{name} ({name} is not among planner.methods={methods})")
    if p["error"] == "filter":
        ignored += _changed_from_defaults(
            p, "planner", schema.Planner, ["samples"], "planner.error=filter uses no images"
        )


def _is_method(name) -> bool:
    """Whether the registry knows ``name`` (a method or an alias of one)."""
    try:
        method_class(name)
    except DecompositionError:
        return False
    return True


def _check_data_recon(c: dict, ignored: list[str]) -> None:
    r = c.get("data_recon")
    if r is None:
        return
    _keys(r, "data_recon", _names(schema.DataRecon))
    _choice(r, "data_recon", "mode", MODES)
    if r["mode"] == "symmetric" and PRUNE in (c.get("planner") or {}).get("methods", []):
        raise _bad(
            "data_recon.mode",
            "symmetric",
            "asymmetric with prune among planner.methods (a layer whose input channels are pruned reads the "
            "approximated network's narrower input)",
        )
    _choice(r, "data_recon", "optimizer", OPTIMIZERS)
    _int(r, "data_recon", "batches", 1)
    _int(r, "data_recon", "holdout_batches", 0)
    if r["holdout_batches"] >= r["batches"]:
        raise ConfigError(
            f"data_recon.holdout_batches={r['holdout_batches']} leaves no fitting batch of "
            f"data_recon.batches={r['batches']}; valid: holdout_batches < batches"
        )
    _int(r, "data_recon", "batch_size", 1)
    _int(r, "data_recon", "steps", 0)
    _number(r, "data_recon", "lr", 0, strict=True)
    if not r["lstsq"] and r["steps"] == 0:
        raise ConfigError(
            "data_recon.lstsq=false with data_recon.steps=0 does nothing; valid: lstsq=true or steps >= 1"
        )
    if r["steps"] == 0:
        ignored += _changed_from_defaults(
            r, "data_recon", schema.DataRecon, ["lr", "optimizer"], "data_recon.steps=0: no gradient steps"
        )


def _check_finetune(c: dict) -> None:
    f = c.get("finetune")
    if f is None:
        return
    _choice(f, "finetune", "loss", LOSSES)
    kd = f["loss"] == "kd"
    _keys(f, "finetune", _names(schema.FinetuneKD if kd else schema.Finetune), "" if kd else " with finetune.loss=ce")
    _int(f, "finetune", "epochs", 1)
    if kd:
        _number(f, "finetune", "temperature", 0, strict=True)
        if not 0 <= f["kd_alpha"] <= 1:
            raise _bad("finetune.kd_alpha", f["kd_alpha"], "a number in [0, 1]")
    for key in ("optimizer", "scheduler"):
        optional = key == "scheduler" and f[key] is None
        if not optional and (not isinstance(f[key], Mapping) or "_target_" not in f[key]):
            raise _bad(f"finetune.{key}", f[key], "a Hydra partial with _target_ (or null for the scheduler)")


def _check_latency(c: dict, ignored: list[str]) -> None:
    lat = c["latency"]
    _keys(lat, "latency", _names(schema.Latency))
    sizes = lat["batch_sizes"]
    if not sizes or min(sizes) < 1:
        raise _bad("latency.batch_sizes", sizes, "a non-empty list of integers >= 1, e.g. [1, 32]")
    threads = lat["threads"]
    if threads is not None and (not threads or min(threads) < 1 or max(threads) > cores()):
        raise _bad(
            "latency.threads", threads, f"null (torch's threads) or a non-empty list of integers from 1 to {cores()}"
        )
    _check_decide_at(lat)
    _choice(lat, "latency", "memory_format", tuple(MEMORY_FORMATS))
    _check_estimator(lat["estimator"], "latency.estimator")
    _number(lat, "latency", "quiet_wait_s", 0)
    _choice(lat, "latency", "runtime", (*RUNTIMES, AUTO))
    _choice(lat, "latency", "precision", (*PRECISIONS, AUTO))
    runtime, precision = lat["runtime"], lat["precision"]
    if AUTO not in (runtime, precision) and precision not in RUNTIME_PRECISIONS[runtime]:
        valid = ", ".join(RUNTIME_PRECISIONS[runtime])
        raise _bad("latency.precision", precision, f"{valid} or auto (the precisions of latency.runtime={runtime})")
    if not decides(c):
        ignored += _changed_from_defaults(
            lat,
            "latency",
            schema.Latency,
            ["runtime", "precision"],
            "neither the guard nor a latency plan times candidates",
        )
        return
    if runtime == "onnxruntime":
        _require_onnx("latency.runtime=onnxruntime")
    if runtime == "openvino":
        try:
            require_openvino("latency.runtime=openvino")
        except ImportError as e:
            raise ConfigError(str(e)) from None
    if AUTO in (runtime, precision):
        return  # chosen among deploy.targets: _check_where
    why = unsupported(runtime, precision)
    if why:
        here = ", ".join(p for p in RUNTIME_PRECISIONS[runtime] if not unsupported(runtime, p))
        raise ConfigError(
            f"latency.precision={precision!r} is not run natively by latency.runtime={runtime} on this CPU ({why}); "
            f"valid here: {here}"
        )


def _check_decide_at(lat: Mapping) -> None:
    """``latency.decide_at``: each of its values null or one of the measured points."""
    at = lat["decide_at"]
    _keys(at, "latency.decide_at", _names(schema.DecideAt))
    measured = {
        "batch_size": ("batch_sizes", lat["batch_sizes"]),
        "threads": ("threads", thread_counts(lat["threads"])),
    }
    for key, (name, values) in measured.items():
        if at[key] is not None and at[key] not in values:
            raise _bad(f"latency.decide_at.{key}", at[key], f"null or one of the measured latency.{name}: {values}")
    if not is_int(at["busy"]) or not 0 <= at["busy"] < cores():
        raise _bad("latency.decide_at.busy", at["busy"], f"an integer from 0 to {cores() - 1} (fewer than the cores)")


def _check_estimator(node, group: str) -> None:
    """The estimator's settings (lrx.measure.estimator.Estimator): times > 0, rounds >= 2 and ordered."""
    if not isinstance(node, Mapping):
        raise _bad(group, node, f"a mapping with the keys {', '.join(ESTIMATOR_KEYS)}")
    _keys(node, group, set(ESTIMATOR_KEYS))
    for key in ("warmup_s", "block_s", "max_s", "rel_iqr"):
        _number(node, group, key, 0, strict=key != "warmup_s")
    _int(node, group, "min_rounds", 2)
    _int(node, group, "max_rounds", 2)
    if node["max_rounds"] < node["min_rounds"]:
        raise _bad(f"{group}.max_rounds", node["max_rounds"], f"an integer >= {group}.min_rounds={node['min_rounds']}")


def _require_onnx(key: str) -> None:
    try:
        require_onnx(key)
    except ImportError as e:
        raise ConfigError(str(e)) from None


def _check_callbacks(c: dict) -> None:
    """Every callback is off (null) or a Hydra node; the ModelCost callback times the network like
    latency.*, so its settings follow the same rules (they interpolate latency.* by default)."""
    for name, node in (c.get("callbacks") or {}).items():
        if node is None:
            continue
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise _bad(f"callbacks.{name}", node, "null, or a node with _target_")
        if node["_target_"] == MODEL_COST:
            group = f"callbacks.{name}"
            _keys(node, group, MODEL_COST_KEYS)
            _int(node, group, "input_size", 1)
            _int(node, group, "batch_size", 1)
            _choice(node, group, "memory_format", tuple(MEMORY_FORMATS))
            _check_estimator(node["estimator"], f"{group}.estimator")


def _check_model(c: dict) -> None:
    """What the pipeline reads of the model group; the network's own arguments are checked by its
    constructor, the first thing :func:`lrx.run.job.prepare` does after the data module."""
    m = c["model"]
    _int(m, "model", "input_size", 1)
    _int(m, "model", "epochs", 1)


def _check_trainer(c: dict) -> None:
    """The baseline's epochs, and the batch limits the pipeline's evaluation reads too: null (all),
    a number of batches, or a fraction of them."""
    t = c["trainer"]
    _int(t, "trainer", "max_epochs", 1)
    for key in TRAINER_LIMITS:
        v = t.get(key)
        fraction = isinstance(v, float) and 0 < v <= 1
        if not (v is None or fraction or (is_int(v) and v >= 1)):
            raise _bad(f"trainer.{key}", v, "null (all batches), an integer >= 1 or a fraction in (0, 1]")


def _check_run(c: dict) -> None:
    """The seed and the baseline group (a checkpoint to use, or where trained baselines are cached)."""
    if not is_int(c["seed"]) or c["seed"] < 0:
        raise _bad("seed", c["seed"], "an integer >= 0")
    b = c["baseline"]
    _keys(b, "baseline", _names(schema.Baseline))
    if b["ckpt"] == "":
        raise _bad("baseline.ckpt", b["ckpt"], "null (train or reuse the cached one) or the path of a state_dict")
    if not b["cache_dir"]:
        raise _bad("baseline.cache_dir", b["cache_dir"], "a folder path")


def _check_deploy(c: dict, ignored: list[str]) -> None:
    dep = c.get("deploy")
    if dep is None:
        return
    _keys(dep, "deploy", _names(schema.Deploy))
    _int(dep, "deploy", "opset", MIN_OPSET)
    _int(dep, "deploy", "check_images", 1)
    _check_targets(dep, ignored)
    _choice(dep, "deploy", "serving", SERVING_CHOICES)
    if not is_int(dep["serving_busy"]) or not 0 <= dep["serving_busy"] < cores():
        raise _bad(
            "deploy.serving_busy", dep["serving_busy"], f"an integer from 0 to {cores() - 1} (fewer than the cores)"
        )
    if dep["serving"] == "auto" and dep["targets"] == []:
        raise _bad("deploy.serving", "auto", "default, or auto with deploy.targets (it times the best of them)")
    if dep["onnx"]:
        _require_onnx("deploy.onnx=true")
        return
    if not any(t.runtime == "onnxruntime" for t in targets_of(dep["targets"])):
        ignored += _changed_from_defaults(
            dep, "deploy", schema.Deploy, ["opset"], "no ONNX graph: deploy.onnx=false and no onnxruntime target"
        )
    if dep["targets"] == []:  # every deployment target checks its graphs on deploy.check_images
        ignored += _changed_from_defaults(
            dep, "deploy", schema.Deploy, ["check_images"], "nothing is exported or deployed"
        )


def decides(c: Mapping) -> bool:
    """Whether the run times candidates: the guard, or a latency plan."""
    plan = (c.get("planner") or {}).get("metric") == "latency"
    return c["decomp"].get("method") != KEEP and (c["latency"]["guard"] or plan)


def _check_where(c: dict) -> None:
    """``latency.runtime`` or ``latency.precision`` ``auto``, where candidates are timed: some target
    of ``deploy.targets`` must match the other (with no target at all, torch fp32)."""
    lat, names = c["latency"], c["deploy"]["targets"]
    runtime, precision = lat["runtime"], lat["precision"]
    if AUTO not in (runtime, precision) or names == [] or not decides(c):
        return
    targets = targets_of(names)
    if not any(t.matches(runtime, precision) for t in targets):
        raise ConfigError(
            f"latency.runtime={runtime} latency.precision={precision}: no target of deploy.targets="
            f"{[t.name for t in targets]} matches, so there is nowhere to time the candidates; valid: a runtime "
            "and precision among them, or auto"
        )


def _check_targets(dep: Mapping, ignored: list[str]) -> None:
    """``deploy.targets``: "auto" or a list of distinct targets that this installation and CPU serve;
    int8 needs ``deploy.calibration_images`` >= 1, which nothing else reads."""
    targets, valid = dep["targets"], f'"auto", [] (none) or a list of distinct names of {", ".join(TARGETS)}'
    if targets == AUTO:
        names = []
    elif isinstance(targets, list) and all(isinstance(t, str) for t in targets) and len(set(targets)) == len(targets):
        names = targets
    else:
        raise _bad("deploy.targets", targets, valid)
    try:
        chosen = servable(names)
    except TargetError as e:
        raise ConfigError(str(e)) from None
    int8 = [t.name for t in chosen if t.precision == "int8"] or (["int8 targets"] if targets == AUTO else [])
    if int8 and (not is_int(dep["calibration_images"]) or dep["calibration_images"] < 1):
        raise _bad(
            "deploy.calibration_images",
            dep["calibration_images"],
            f"an integer >= 1: {', '.join(int8)} calibrate NNCF's quantization on that many training images",
        )
    if not int8:
        ignored += _changed_from_defaults(
            dep, "deploy", schema.Deploy, ["calibration_images"], "no int8 target in deploy.targets to calibrate"
        )


def resolved(cfg: DictConfig) -> dict:
    """The job's config as plain values, interpolations resolved (Hydra's own node left out); an
    interpolation that cannot be resolved is a ConfigError naming its key."""
    try:
        return {
            k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg
            if k != "hydra"
        }
    except OmegaConfBaseException as e:
        reason = str(getattr(e, "msg", None) or e).splitlines()[0]
        raise ConfigError(f"{getattr(e, 'full_key', None) or 'the config'} cannot be resolved: {reason}") from None


def check(cfg: DictConfig) -> list[str]:
    """Check the whole config; returns the keys that have no effect in this combination (the
    caller decides: an error in a single run, a warning in a sweep)."""
    c = resolved(cfg)
    ignored: list[str] = []
    _check_run(c)
    _check_model(c)
    _check_trainer(c)
    _check_decomp(c, ignored)
    _check_planner(c, ignored)
    _check_data_recon(c, ignored)
    _check_finetune(c)
    _check_latency(c, ignored)
    _check_deploy(c, ignored)
    _check_where(c)
    _check_callbacks(c)
    return ignored
