"""One lrx run, stage by stage: baseline -> filter reconstruction -> guard -> data reconstruction
-> fine-tuning -> measurement -> results. :func:`run` does the expensive work of a job that
:func:`lrx.run.job.prepare` checked, and writes ``model.pt`` and ``results.json`` atomically at the
very end. A baseline or final network with NaN/Inf in its weights, buffers or logits stops the run
before anything is written.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.benchmark.utils.common import set_torch_threads

from lrx.compress import fold, planner, prune, torch_pruning_peer
from lrx.compress.data_recon import reconstruct
from lrx.compress.execution import reset_strategies, tune
from lrx.compress.guard import put_back_slower
from lrx.deploy import onnx_export as export
from lrx.deploy.compare import WITHIN, compare_deployments, fastest_dense
from lrx.deploy.targets import AUTO, Target
from lrx.io import write_json
from lrx.lowrank.surgery import decompose
from lrx.measure.accuracy import accuracy
from lrx.measure.complexity import complexity
from lrx.measure.estimator import Estimator
from lrx.measure.latency import compare_at, decide_point, devices, memory_format_of, point_label
from lrx.measure.load import timing_conditions
from lrx.results.files import DEPLOYED_DIR, FOLDED, MODEL, ORT, RESULTS
from lrx.results.saved import save_network
from lrx.run import serving_choice
from lrx.run.baseline import check_finite_network, get_baseline
from lrx.run.job import Job, first_val_images
from lrx.run.module import Classifier
from lrx.run.summary import State, results_of
from lrx.runtime.serving import Serving

log = logging.getLogger(__name__)


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
    check_finite_network(s.net, f"baseline ({origin['source']} {origin['path']})", first_val_images(s.job))
    s.net.eval()
    s.baseline = {
        **_accuracies(s.job, s.net, "baseline"),
        **complexity(s.net, s.job.cfg.model.input_size),
        "origin": origin,
    }


def _where_to_time(s: State) -> None:
    """Where the guard and the latency planner time their candidates (``s.where``): the configured
    ``latency.runtime`` and ``latency.precision``; where either is ``auto``, the deployment target
    among ``deploy.targets`` (those matching the other) that serves the dense network fastest on
    this machine, each timed alone at ``latency.decide_at``: plan where you serve."""
    job, lat, dep = s.job, s.job.cfg.latency, s.job.cfg.deploy
    s.where = {"runtime": lat.runtime, "precision": lat.precision}
    if AUTO not in (lat.runtime, lat.precision):
        return
    targets = [t for t in job.deploy_targets() if t.matches(lat.runtime, lat.precision)] if job.decides else []
    if len(targets) < 2:  # one target: nothing to choose; none (nothing timed, or no deployment): torch
        t = targets[0] if targets else Target("torch", "fp32")
        s.where = {"runtime": t.runtime, "precision": t.precision}
        return
    batch_size, threads = decide_point(lat)
    size, dm = job.cfg.model.input_size, job.datamodule
    calibration = None
    if any(t.precision == "int8" for t in targets):
        calibration = dm.calibration_dataloader(dep.calibration_images, seed=job.cfg.seed)
    with timing_conditions(lat.quiet_wait_s, lat.decide_at.busy, "the dense network in each target") as s.load["where"]:
        best, ms = fastest_dense(
            s.net,
            targets,
            torch.randn(batch_size, 3, size, size),
            first_val_images(job)[: dep.check_images],
            threads,
            Estimator.of(lat.estimator),
            memory_format_of(lat.memory_format),
            calibration,
            dep.calibration_images,
            dep.opset,
        )
    s.where = {"runtime": best.runtime, "precision": best.precision, "dense_ms": ms}
    log.info(
        "the guard and the planner time in %s, where the dense network is served fastest (%s)",
        best.name,
        ", ".join(f"{t} {v:.2f} ms" for t, v in sorted(ms.items(), key=lambda kv: kv[1])),
    )


def _filter_reconstruction(s: State) -> None:
    """Replace the selected convs of the approximation: explicit bases, or the planner's choice."""
    job, lat = s.job, s.job.cfg.latency
    s.approx = copy.deepcopy(s.net)
    layers, bases = job.layers_and_bases()
    if job.prunes and job.cfg.decomp.engine == "torch_pruning":
        d = job.cfg.decomp
        s.records = torch_pruning_peer.prune_channels(s.approx, d.ratio, job.rank_multiple, job.cfg.model.input_size)
    elif job.prunes:
        d, batches = job.cfg.decomp, None
        if d.criterion == "taylor":  # one batch of training images
            batches = [next(iter(job.datamodule.calibration_dataloader(d.samples, seed=job.cfg.seed)))]
        s.records = prune.prune(s.approx, job.prune_ratios(s.approx), d.criterion, job.rank_multiple, batches)
        log.info("pruned %s", {r["name"]: f"{r['shape'][0]} -> {r['bases']}" for r in s.records})
    elif not job.plans:
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
            timed=planner.Timed(
                Estimator.of(lat.estimator),
                threads,
                s.where["runtime"],
                lat.memory_format,
                lat.quiet_wait_s,
                s.where["precision"],
                lat.decide_at.busy,
            ),
            closed_loop_rounds=p.closed_loop_rounds,
            pruning=planner.Pruning(tuple(p.prune.ratios), p.prune.criterion),
            speedups=job.speedups,
        )
        log.info(
            "plan (%s, predicted conv speed-up %.2fx): %s", p.metric, s.plan["predicted_conv_speedup"], s.plan["plan"]
        )
        s.records = planner.apply(s.approx, chosen, job.planner_options())
        pruned = {n: c for n, c in chosen.items() if c.method == planner.PRUNE}
        if pruned:  # the guard puts back these dense convs, their channels pruned as in the plan
            s.reference = copy.deepcopy(s.net)
            planner.apply(s.reference, pruned)
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
    precision: str = "fp32",
) -> dict:
    """``{device: {threads: {batch size: compare(...)}}}`` for the devices ``on`` (default: every
    device), the ``batch_sizes`` and ``threads`` (default: every configured one), in ``runtime``
    and ``precision``;
    with ``folded``, also both networks with their BatchNorms folded (:mod:`lrx.compress.fold`), under
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
        out[d.type] = compare_at(baseline, approx, size, *at, precision=precision)
        if folded:
            out[f"{d.type}{FOLDED}"] = compare_at(
                fold.fold_bn(baseline), fold.fold_bn(approx), size, *at, precision=precision
            )
    approx.to("cpu", memory_format=torch.contiguous_format)
    return out


def _guard(s: State) -> None:
    """The latency guard, right after filter reconstruction (a layer's speed depends on its shape,
    not its weights), so that the fitting stages fit the layers that stay: every replaced layer
    that is not faster where the model would run gets its original conv back. That is
    ``latency.runtime`` in ``latency.precision``: torch (on CUDA when present, else the CPU), or
    ONNX Runtime or OpenVINO on the CPU, each layer as its own graph (OpenVINO int8: quantized on
    its real input); at ``latency.decide_at``. A layer stays only if the lower quartile of its
    measured speed-up is above 1. Its records name where it decided (``at``: runtime, precision,
    threads, batch size)."""
    lat, runtime, precision = s.job.cfg.latency, s.where["runtime"], s.where["precision"]
    if not lat.guard:
        return
    device = devices()[-1] if runtime == "torch" else torch.device("cpu")
    batch_size, threads = decide_point(lat)
    with timing_conditions(lat.quiet_wait_s, lat.decide_at.busy, "the guard's layers") as s.load["guard"]:
        at = ([device], [batch_size], [threads], runtime)
        timed = _timings(s.job, s.net, s.approx, *at, precision=precision)
    timings = timed[device.type][threads][batch_size]
    where = device.type if runtime == "torch" else ORT  # fp32 in torch or ONNX Runtime
    if precision != "fp32" or runtime == "openvino":
        where = f"{runtime}-{precision}-{device.type}"  # e.g. openvino-int8-cpu
    where = point_label(where, threads, batch_size)
    put_back = put_back_slower(s.approx, s.reference or s.net, s.records, timings["layers"], where)
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
    if not s.fitted:
        return
    fitted = reconstruct(
        s.net,
        s.approx,
        s.fitted,
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


def _deploy(s: State, run_dir: Path, images: torch.Tensor, timings: dict) -> None:
    """deploy.onnx: both networks exported and checked on validation images, then timed in ONNX
    Runtime, under its own key of ``timings``."""
    dep, lat = s.job.cfg.deploy, s.job.cfg.latency
    if not dep.onnx:
        return
    images = images[: dep.check_images]
    exported, timings[ORT] = export.export_and_time(
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


def _deploy_targets(s: State, run_dir: Path, images: torch.Tensor) -> None:
    """deploy.targets: both networks served by every target (:mod:`lrx.deploy.compare`) at
    ``latency.decide_at``, their graphs kept under ``run_dir/deployed/``; the table joins
    ``s.deployed``."""
    job, dep, lat = s.job, s.job.cfg.deploy, s.job.cfg.latency
    targets = job.deploy_targets()
    if not targets:
        return
    batch_size, threads = decide_point(lat)
    size, dm = job.cfg.model.input_size, job.datamodule
    int8 = any(t.precision == "int8" for t in targets)
    log.info("deploying both networks to %s", ", ".join(t.name for t in targets))
    table = compare_deployments(
        {"baseline": s.net, "final": s.approx},
        targets,
        torch.randn(batch_size, 3, size, size),
        images[: dep.check_images],
        dm.val_dataloader(),
        s.baseline["acc1"],
        threads,
        Estimator.of(lat.estimator),
        memory_format_of(lat.memory_format),
        dm.calibration_dataloader(dep.calibration_images, seed=job.cfg.seed) if int8 else None,
        dep.calibration_images,
        lat.quiet_wait_s,
        lat.decide_at.busy,
        run_dir / DEPLOYED_DIR,
        _limit(job.cfg.trainer.get("limit_val_batches")),
        dep.opset,
    )
    s.deployed = {**(s.deployed or {}), **table}
    best = table["best"]
    if best:
        log.info(
            "best dense deployment %s %.2f ms (%.2f%%), best final %s %.2f ms (%.2f%%): %.2fx",
            best["dense"],
            best["dense_ms"],
            best["dense_acc1"],
            best["final"],
            best["final_ms"],
            best["final_acc1"],
            best["speedup"],
        )
    else:
        log.warning("no dense deployment kept its acc@1 within %.1f point: no speed-up against one", WITHIN)


def _choose_serving(job: Job, run_dir: Path, results: dict) -> None:
    """deploy.serving=auto: the best dense and best final targets timed in every serving setting,
    each in its own process (:mod:`lrx.run.serving_choice`), into ``serving.json``."""
    dep, best = job.cfg.deploy, (results["deploy"] or {}).get("best")
    if dep.serving != "auto" or not best:
        return
    targets = [Target.of(name) for name in dict.fromkeys([best["dense"], best["final"]])]
    batch_size, _ = decide_point(job.cfg.latency)
    out = serving_choice.choose(
        run_dir, targets, dep.serving_busy, batch_size, dep.calibration_images, job.cfg.data.get("root")
    )
    for name, t in out["targets"].items():
        log.info("serve %s with %s", name, Serving(**t["recommended"]["serving"]).how())


def run(job: Job, run_dir: Path, logger=None, callbacks=()) -> dict:
    """Run the stages; write the final network to ``run_dir/model.pt`` (:mod:`lrx.results.saved`),
    then ``run_dir/results.json``, both atomically; returns the results."""
    L.seed_everything(job.cfg.seed, workers=True)
    s = State(job, job.net, job.net)
    _baseline(s, logger, callbacks)
    if job.decomposes:
        _where_to_time(s)
        _filter_reconstruction(s)
        _guard(s)
        _data_reconstruction(s)
        _finetune(s, logger, callbacks)
    images = first_val_images(job)
    check_finite_network(s.approx, "final network", images)  # never timed, reported or saved if broken
    lat = job.cfg.latency
    with timing_conditions(lat.quiet_wait_s, lat.decide_at.busy, "the final networks") as s.load["final"]:
        timings = _timings(job, s.net, s.approx, folded=lat.fold_bn)
    _deploy(s, run_dir, images, timings)
    _deploy_targets(s, run_dir, images)
    results = results_of(s, timings)
    # before results.json: a results.json that exists has its model
    save_network(run_dir / MODEL, s.approx.eval(), OmegaConf.to_container(job.cfg.model.net, resolve=True))
    write_json(run_dir / RESULTS, results)
    _choose_serving(job, run_dir, results)
    log.info(
        "final acc@1 %.2f (baseline %.2f); conv speed-up %s; results in %s",
        results["final"]["acc1"],
        results["baseline"]["acc1"],
        results["speedup"]["conv"],
        run_dir / RESULTS,
    )
    return results
