"""One lrx run: baseline -> filter reconstruction -> guard -> data reconstruction -> fine-tuning
-> measurement -> results.

:func:`prepare` checks the whole config (:mod:`lrx.config`), then builds the data module and the
network and checks what needs them (data root, checkpoint and its NaN/Inf, layers, bases, the reach
of a MAC target), before any training, solving or writing; :func:`run` then does the expensive
work, stage by stage, and writes ``model.pt`` and ``results.json`` atomically at the very end. A
baseline or final network with NaN/Inf in its weights, buffers or logits stops the run before
anything is written.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.benchmark.utils.common import set_torch_threads

from lrx import config, export, fold
from lrx.baseline import check_finite_network, get_baseline, load_state_dict
from lrx.complexity import complexity
from lrx.estimator import Estimator
from lrx.evaluate import accuracy
from lrx.io import save_torch, write_json
from lrx.latency import compare_at, decide_point, devices, point_label, points
from lrx.load import wait_for_quiet
from lrx.lowrank import DecompositionError, method_class, planner
from lrx.lowrank.data_recon import reconstruct
from lrx.lowrank.execution import reset_strategies, tune
from lrx.lowrank.guard import put_back_slower
from lrx.lowrank.surgery import decompose, skipped_convs, validate
from lrx.module import Classifier
from lrx.report import RESULTS, read_finished

log = logging.getLogger(__name__)

MODEL = "model.pt"  # the final network (the approximation, or the baseline where nothing was replaced)


@dataclass
class Job:
    """A checked run: its config, data module and (untrained) network, and the keys that have
    no effect in it (a sweep's warning)."""

    cfg: DictConfig
    datamodule: L.LightningDataModule
    net: torch.nn.Module
    ignored_keys: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.cfg.decomp.method

    @property
    def decomposes(self) -> bool:
        return self.method != config.KEEP

    @property
    def plans(self) -> bool:
        return self.method == config.PLAN

    @property
    def rank_multiple(self) -> int:
        return self.cfg.decomp.get("rank_multiple", 1)

    def layers_and_bases(self):
        d = OmegaConf.to_container(self.cfg.decomp, resolve=True)
        return d["layers"], d.get("bases")

    def options(self) -> dict:
        """The chosen method's solver options, from its decomp keys."""
        return config.method_options(OmegaConf.to_container(self.cfg.decomp, resolve=True))

    def planner_options(self) -> dict:
        """Solver options of the planner's methods (those of other methods: a sweep's ignored keys)."""
        p = OmegaConf.to_container(self.cfg.planner, resolve=True)
        chosen = {method_class(m).method for m in p["methods"]}
        return {
            m: config.method_options({"method": m, **opts}, f"planner.options.{m}")
            for m, opts in p["options"].items()
            if method_class(m).method in chosen
        }


def _instantiate(node: DictConfig):
    """Hydra's instantiate, with a constructor's own error (a bad argument, named by the
    constructor) raised as itself rather than wrapped in Hydra's InstantiationException."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, OSError)):
            raise e.__cause__ from None
        raise


def prepare(cfg: DictConfig, sweep: bool = False) -> Job:
    """Check the config, build the data module and the network, check the request against them;
    writes nothing. Keys without effect are an error, or (``sweep``) a warning kept in results."""
    ignored = config.check(cfg)
    if ignored and not sweep:
        raise config.ConfigError(
            f"{ignored[0]}: this key has no effect here; remove it"
            + (f" (and {len(ignored) - 1} more: {', '.join(ignored[1:])})" if ignored[1:] else "")
        )
    if ignored:
        log.warning("keys without effect in this job of the sweep: %s", "; ".join(ignored))
    datamodule = _instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")  # reads and checks every data file
    torch.manual_seed(cfg.seed)  # the initial weights of a baseline trained by this run
    net = _instantiate(cfg.model.net)
    if cfg.baseline.ckpt:
        loaded = copy.deepcopy(net)
        load_state_dict(loaded, cfg.baseline.ckpt, "baseline.ckpt")
        check_finite_network(loaded, f"baseline (baseline.ckpt={cfg.baseline.ckpt})")
    job = Job(cfg, datamodule, net, ignored)
    if cfg.latency.fold_bn:
        fold.foldable(net)  # a network torch.fx cannot read is refused now, not after the work
    if job.decomposes:
        _check_request(job)
    return job


def _check_request(job: Job) -> None:
    """The layers and bases (or the planner's target) against the network, before any solving;
    an error names the decomp keys."""
    layers, bases = job.layers_and_bases()
    keys = f"decomp.layers={layers!r}" + ("" if job.plans else f", decomp.bases={bases!r}")
    try:
        if job.plans:
            p, options = job.cfg.planner, job.planner_options()
            size = job.cfg.model.input_size
            planner.check_request(
                job.net, layers, p.target_speedup, p.metric, list(p.methods), options, size, job.rank_multiple
            )
        else:
            validate(job.net, layers, job.method, bases, job.rank_multiple, **job.options())
    except DecompositionError as e:
        raise DecompositionError(f"{keys}: {e}") from None


def _first_val_images(job: Job) -> torch.Tensor:
    """The first validation batch's images: the logits a broken network gives are checked on them."""
    return next(iter(job.datamodule.val_dataloader()))[0]


@dataclass
class State:
    """What the stages hand on: the baseline network, its approximation and what was recorded."""

    job: Job
    net: torch.nn.Module
    approx: torch.nn.Module
    baseline: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    stages: dict[str, dict] = field(default_factory=dict)
    plan: dict | None = None
    finetune_reverted: bool = False
    deployed: dict | None = None  # deploy.onnx: the exported graphs (their timings join the others)
    load: dict = field(default_factory=dict)  # per timing stage, the other work's load (lrx.load.wait_for_quiet)

    @property
    def kept(self) -> list[str]:
        return [r["name"] for r in self.records if r.get("kept", True)]


def _limit(value) -> int | None:
    return value if isinstance(value, int) else None


def _accuracies(job: Job, net: torch.nn.Module, tag: str) -> dict:
    dm, t = job.datamodule, job.cfg.trainer
    return {
        "acc1": accuracy(net, dm.val_dataloader(), _limit(t.get("limit_val_batches")), desc=f"{tag} val acc@1"),
        "acc1_test": accuracy(net, dm.test_dataloader(), _limit(t.get("limit_test_batches")), desc=f"{tag} test acc@1"),
    }


def _baseline(s: State, logger, callbacks) -> None:
    """Train, load or reuse the baseline; stop if it is broken (NaN/Inf); evaluate it."""
    origin = get_baseline(s.job.cfg, s.net, s.job.datamodule, logger, callbacks)
    check_finite_network(s.net, f"baseline ({origin['source']} {origin['path']})", _first_val_images(s.job))
    s.net.eval()
    s.baseline = {
        **_accuracies(s.job, s.net, "baseline"),
        **complexity(s.net, s.job.cfg.model.input_size),
        "origin": origin,
    }


def _filter_reconstruction(s: State) -> None:
    """Replace the selected convs of the approximation: explicit bases, or the planner's choice."""
    job, lat = s.job, s.job.cfg.latency
    s.approx = copy.deepcopy(s.net)
    layers, bases = job.layers_and_bases()
    if not job.plans:
        s.records = decompose(s.approx, layers, job.method, bases, job.rank_multiple, **job.options())
    else:
        p, lat = job.cfg.planner, job.cfg.latency
        batch_size, threads = decide_point(lat)
        calibration = None
        if p.error != "filter":  # real training images, never validation or test
            calibration = next(iter(job.datamodule.calibration_dataloader(p.samples, seed=job.cfg.seed)))[0]
        chosen, s.plan = planner.plan(
            s.approx,
            layers,
            p.target_speedup,
            p.metric,
            job.cfg.model.input_size,
            batch_size,
            list(p.methods),
            calibration=calibration,
            error=p.error if calibration is not None else "data",
            options=job.planner_options(),
            rank_multiple=job.rank_multiple,
            timed=planner.Timed(Estimator.of(lat.estimator), threads, lat.runtime, lat.memory_format, lat.quiet_wait_s),
            closed_loop_rounds=p.closed_loop_rounds,
        )
        log.info(
            "plan (%s, predicted conv speed-up %.2fx): %s", p.metric, s.plan["predicted_conv_speedup"], s.plan["plan"]
        )
        s.records = planner.apply(s.approx, chosen)
    s.stages["filter"] = _accuracies(job, s.approx, "filter")


def _timings(
    job: Job,
    baseline: torch.nn.Module,
    approx: torch.nn.Module,
    on=None,
    batch_sizes=None,
    threads=None,
    runtime: str = "torch",
    folded: bool = False,
) -> dict:
    """``{device: {threads: {batch size: compare(...)}}}`` for the devices ``on`` (default: every
    device), the ``batch_sizes`` and ``threads`` (default: every configured one), in ``runtime``;
    with ``folded``, also both networks with their BatchNorms folded (:mod:`lrx.fold`), under
    ``"<device> (BN folded)"``. Scheme 1's and CP's executions are chosen on each device at the
    decide_at point."""
    lat, size = job.cfg.latency, job.cfg.model.input_size
    estimator, (decide_bs, decide_threads) = Estimator.of(lat.estimator), decide_point(lat)
    out = {}
    for d in on or devices():
        x = torch.randn(decide_bs, 3, size, size, device=d)
        with set_torch_threads(decide_threads):
            tune(approx.to(d), x, estimator, lat.memory_format)
        at = (batch_sizes or lat.batch_sizes, threads or lat.threads, d, estimator, lat.memory_format, runtime)
        out[d.type] = compare_at(baseline, approx, size, *at)
        if folded:
            out[f"{d.type}{fold.FOLDED}"] = compare_at(fold.fold_bn(baseline), fold.fold_bn(approx), size, *at)
    approx.to("cpu", memory_format=torch.contiguous_format)
    return out


def _guard(s: State) -> None:
    """The latency guard, right after filter reconstruction (a layer's speed depends on its shape,
    not its weights), so that the fitting stages fit the layers that stay: every replaced layer
    that is not faster where the model would run gets its original conv back. That is
    ``latency.runtime``: torch (on CUDA when present, else the CPU) or ONNX Runtime on the CPU,
    each layer as its own graph; at ``latency.decide_at``. A layer stays only if the lower
    quartile of its measured speed-up is above 1."""
    lat = s.job.cfg.latency
    if not lat.guard:
        return
    device = devices()[-1] if lat.runtime == "torch" else torch.device("cpu")
    batch_size, threads = decide_point(lat)
    s.load["guard"] = wait_for_quiet(lat.quiet_wait_s, "the guard's layers")
    timed = _timings(s.job, s.net, s.approx, [device], [batch_size], [threads], lat.runtime)
    timings = timed[device.type][threads][batch_size]
    where = point_label(device.type if lat.runtime == "torch" else export.RUNTIME, threads, batch_size)
    put_back = put_back_slower(s.approx, s.net, s.records, timings["layers"], where)
    reset_strategies(s.approx)  # timing chose the executions; fitting computes the same numbers in every run
    if put_back:
        log.warning("put back the original conv of %s: not faster at %s", put_back, where)
        s.stages["guard"] = _accuracies(s.job, s.approx, "guard")
    if not s.kept:
        log.warning(
            "no replaced layer is left: the model is the baseline; data reconstruction and fine-tuning are skipped"
        )


def _data_reconstruction(s: State) -> None:
    dr, job = s.job.cfg.get("data_recon"), s.job
    if dr is None or not s.kept:
        return
    loader = job.datamodule.calibration_dataloader(dr.batch_size, seed=job.cfg.seed)
    batches = [x for (x, _), _ in zip(loader, range(dr.batches))]
    fitted = reconstruct(
        s.net,
        s.approx,
        s.kept,
        batches,
        mode=dr.mode,
        lstsq=dr.lstsq,
        steps=dr.steps,
        lr=dr.lr,
        optimizer=dr.optimizer,
        holdout_batches=dr.holdout_batches,
        batch_size=dr.batch_size,
        seed=job.cfg.seed,
    )
    by_name = {r["name"]: r for r in fitted}
    for rec in s.records:
        if rec["name"] in by_name:
            rec["data_recon"] = by_name[rec["name"]]
    s.stages["data"] = _accuracies(job, s.approx, "data")


def _fit_approximation(job: Job, teacher: torch.nn.Module, approx: torch.nn.Module, logger, callbacks) -> None:
    """Lightning fit of the approximation with the finetune group's recipe."""
    ft = job.cfg.finetune
    module = Classifier(
        approx,
        optimizer=instantiate(ft.optimizer),
        scheduler=instantiate(ft.scheduler) if ft.get("scheduler") else None,
        channels_last=job.cfg.model.get("channels_last", False),
        loss=ft.loss,
        teacher=teacher if ft.loss == "kd" else None,
        temperature=ft.get("temperature", 1.0),
        kd_alpha=ft.get("kd_alpha", 0.0),
    )
    trainer = instantiate(
        job.cfg.trainer, max_epochs=ft.epochs, logger=logger or False, callbacks=list(callbacks), num_sanity_val_steps=0
    )
    trainer.fit(module, datamodule=job.datamodule)
    approx.to(memory_format=torch.contiguous_format)


def _finetune(s: State, logger, callbacks) -> None:
    """Fine-tune the approximation; weights that lower validation acc@1 are not kept."""
    if s.job.cfg.get("finetune") is None or not s.kept:
        return
    before, before_acc1 = copy.deepcopy(s.approx.state_dict()), list(s.stages.values())[-1]["acc1"]
    _fit_approximation(s.job, s.net, s.approx, logger, callbacks)
    s.stages["finetune"] = _accuracies(s.job, s.approx, "finetune")
    if s.stages["finetune"]["acc1"] < before_acc1:  # validation is the selection split
        s.approx.load_state_dict(before)
        s.finetune_reverted = True
        log.warning(
            "fine-tuning lowered validation acc@1 from %.2f to %.2f: the weights from before it are kept",
            before_acc1,
            s.stages["finetune"]["acc1"],
        )


def _slower(iqr: list[float]) -> bool:
    return iqr[1] < 1  # measurably slower: even the upper quartile of the speed-up is below 1


def slower_than_baseline(timings: dict) -> list[str]:
    """Every timed point (device or runtime, threads, batch size) at which the final model, its
    convs or any replaced layer is measurably slower than the baseline (the whole IQR of the
    speed-up below 1), e.g. ``"cpu, 2 threads, batch 1: conv 0.84x, model 1.00x; layers slower:
    conv3 0.90x"``: the guard decides at one point only, so a model faster at batch 32 can be
    slower at batch 1, and the user must be told."""
    out = []
    for where, t in points(timings):
        layers = [
            f"{n} {v['speedup']:.2f}x" for n, v in t["layers"].items() if v["replaced"] and _slower(v["speedup_iqr"])
        ]
        if _slower(t["conv_speedup_iqr"]) or _slower(t["model_speedup_iqr"]) or layers:
            text = f"{where}: conv {t['conv_speedup']:.2f}x, model {t['model_speedup']:.2f}x"
            out.append(text + (f"; layers slower: {', '.join(layers)}" if layers else ""))
    return out


def _deploy(s: State, run_dir: Path, images: torch.Tensor, timings: dict) -> None:
    """deploy.onnx: both networks exported and checked on validation images, then timed in ONNX
    Runtime, under its own key of ``timings``."""
    dep, lat = s.job.cfg.deploy, s.job.cfg.latency
    if not dep.onnx:
        return
    images = images[: dep.check_images]
    exported, timings[export.RUNTIME] = export.deploy(
        s.net,
        s.approx,
        run_dir,
        images,
        s.job.cfg.model.input_size,
        lat.batch_sizes,
        lat.threads,
        Estimator.of(lat.estimator),
        dep.opset,
    )
    s.deployed = {"onnx": exported}
    for record in exported.values():
        log.info(
            "%s: %s exporter, opset %d, max relative error %.1e against torch",
            record["file"],
            record["exporter"],
            record["opset"],
            record["max_rel_error"],
        )


def results_of(s: State, timings: dict) -> dict:
    """The one place results.json is built. Its headline figures (``speedup``, ``latency_ms``,
    each layer's ``measured_speedup``) are at ``latency.decide_at``; ``latency`` holds every
    measured point."""
    cfg = s.job.cfg
    bs, threads = decide_point(cfg.latency)
    at = {dev: t[threads][bs] for dev, t in timings.items()}  # the decide_at point, per device or runtime
    slower = slower_than_baseline(timings) if s.records else []
    if slower:
        log.warning("the final model is measurably slower than the baseline at %s", "; ".join(slower))
    for rec in s.records:
        rec["measured_speedup"] = {dev: t["layers"][rec["name"]]["speedup"] for dev, t in at.items()}
        rec["measured_speedup_iqr"] = {dev: t["layers"][rec["name"]]["speedup_iqr"] for dev, t in at.items()}
    kept_stages = [v for k, v in s.stages.items() if not (k == "finetune" and s.finetune_reverted)]
    last = kept_stages[-1] if kept_stages else s.baseline  # the final model is the last kept stage's
    baseline = {**s.baseline, "latency_ms": {dev: t["model_ms"]["baseline"] for dev, t in at.items()}}
    final = {
        "acc1": last["acc1"],
        "acc1_test": last["acc1_test"],
        **complexity(s.approx, cfg.model.input_size),
        "latency_ms": {dev: t["model_ms"]["approx"] for dev, t in at.items()},
    }
    return {
        "status": "complete",
        "model": cfg.model.name,
        "dataset": cfg.data.get("name", "cifar10"),
        "method": s.job.method,
        "baseline": baseline,
        "final": final,
        "stages": s.stages,
        "finetune_reverted": s.finetune_reverted,
        "slower_than_baseline": slower,
        "speedup": {
            "macs": baseline["macs"] / final["macs"],
            "conv": {dev: t["conv_speedup"] for dev, t in at.items()},
            "model": {dev: t["model_speedup"] for dev, t in at.items()},
            "conv_iqr": {dev: t["conv_speedup_iqr"] for dev, t in at.items()},
            "model_iqr": {dev: t["model_speedup_iqr"] for dev, t in at.items()},
            "unstable": {dev: t["conv_unstable"] or t["model_unstable"] for dev, t in at.items()},
            "at": {"batch_size": bs, "threads": threads},
        },
        "latency": timings,
        "load": s.load,
        "deploy": s.deployed,
        "layers": s.records,
        "skipped": skipped_convs(s.net),
        "plan": s.plan,
        "ignored_keys": s.job.ignored_keys,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model_file": MODEL,
    }


def run(job: Job, run_dir: Path, logger=None, callbacks=()) -> dict:
    """Run the stages; write the final network to ``run_dir/model.pt`` (the whole module, see
    :func:`load_models`), then ``run_dir/results.json``, both atomically; returns the results."""
    L.seed_everything(job.cfg.seed, workers=True)
    s = State(job, job.net, job.net)
    _baseline(s, logger, callbacks)
    if job.decomposes:
        _filter_reconstruction(s)
        _guard(s)
        _data_reconstruction(s)
        _finetune(s, logger, callbacks)
    images = _first_val_images(job)
    check_finite_network(s.approx, "final network", images)  # never timed, reported or saved if broken
    s.load["final"] = wait_for_quiet(job.cfg.latency.quiet_wait_s, "the final networks")
    timings = _timings(job, s.net, s.approx, folded=job.cfg.latency.fold_bn)
    _deploy(s, run_dir, images, timings)
    results = results_of(s, timings)
    save_torch(run_dir / MODEL, s.approx.eval())  # before results.json: a results.json that exists has its model
    write_json(run_dir / RESULTS, results)
    log.info(
        "final acc@1 %.2f (baseline %.2f); conv speed-up %s; results in %s",
        results["final"]["acc1"],
        results["baseline"]["acc1"],
        results["speedup"]["conv"],
        run_dir / RESULTS,
    )
    return results


def load_models(run_dir: str | Path) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """``(baseline, final, results)`` of a finished run directory, both networks in eval mode on the
    CPU: the final network from ``model.pt``, the baseline rebuilt from the run's model config and
    the checkpoint it came from (``results["baseline"]["origin"]["path"]``).

    The final network's layers run their default executions: the fastest one depends on the
    machine, so call :func:`lrx.lowrank.execution.tune` to choose this machine's. ``model.pt`` is
    a pickled module (``torch.load(..., weights_only=False)``): load only files you made or trust.
    """
    run_dir = Path(run_dir)
    results, why = read_finished(run_dir / RESULTS)
    if results is None:
        raise ValueError(f"{run_dir} holds no finished run: {why}")
    if not (run_dir / MODEL).is_file():
        raise ValueError(f"{run_dir} has no {MODEL} (runs made before lrx saved the final network have none)")
    checkpoint = Path(results["baseline"]["origin"]["path"])
    if not checkpoint.is_file():
        raise ValueError(
            f"the baseline of {run_dir}, {str(checkpoint)!r}, is not there; a relative path is "
            f"relative to the directory the run was started in: run from there"
        )
    final = torch.load(run_dir / MODEL, map_location="cpu", weights_only=False)
    reset_strategies(final)
    baseline = instantiate(OmegaConf.create(results["config"]["model"]["net"]))
    load_state_dict(baseline, checkpoint)
    return baseline.eval(), final.eval(), results
