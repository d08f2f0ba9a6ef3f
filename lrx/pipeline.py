"""One lrx run: baseline -> filter reconstruction -> data reconstruction -> fine-tuning -> report.

:func:`prepare` builds everything and checks the whole config (data root, checkpoint, layers,
bases, lambda schedule, stage settings) before any training, solving or writing; :func:`run`
then does the expensive work and writes ``results.json`` atomically at the very end.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lrx.baseline import get_baseline, load_state_dict
from lrx.complexity import complexity
from lrx.evaluate import accuracy
from lrx.io import save_torch, write_json
from lrx.latency import compare, devices
from lrx.lowrank.data_recon import reconstruct
from lrx.lowrank import planner
from lrx.lowrank.guard import put_back_slower
from lrx.lowrank.execution import reset_strategies, tune
from lrx.lowrank.surgery import decompose, validate
from lrx.module import Classifier
from lrx.report import RESULTS, read_finished

log = logging.getLogger(__name__)

MODEL = "model.pt"  # the final network (the approximation, or the baseline where nothing was replaced)
PLAN_ERRORS = (*planner.OUTPUT_ERRORS, "filter")  # the planner's error: on training images (data, kl), or kernels


@dataclass
class Job:
    cfg: DictConfig
    datamodule: L.LightningDataModule
    net: torch.nn.Module


def solver_options(decomp: DictConfig) -> dict:
    """Keyword options of ``from_conv`` from the ``decomp`` config."""
    lam = decomp.lam
    return {"lam_schedule": lam.schedule, "lam_start": lam.start, "lam_end": lam.end, "lam_steps": lam.steps}


def _layers_and_bases(decomp: DictConfig):
    c = OmegaConf.to_container(decomp, resolve=True)
    return c["layers"], c["bases"]


def _planned(decomp: DictConfig) -> bool:
    return decomp.target_speedup is not None


def _decomposes(decomp: DictConfig) -> bool:
    return decomp.scheme is not None or _planned(decomp)


def _planner_layers(decomp: DictConfig):
    """The planner considers the selected layers, or every decomposable conv when none is selected."""
    layers = _layers_and_bases(decomp)[0]
    return layers if layers else "all"


def prepare(cfg: DictConfig) -> Job:
    """Build the data module and the network and validate the config; writes nothing."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")  # reads and checks every batch file (a few seconds)
    torch.manual_seed(cfg.seed)  # the initial weights of a baseline trained by this run
    net = instantiate(cfg.model.net)
    if cfg.baseline.ckpt:
        load_state_dict(copy.deepcopy(net), cfg.baseline.ckpt)
    d = cfg.decomp
    if _planned(d):
        if d.plan_error not in PLAN_ERRORS or not isinstance(d.plan_samples, int) or d.plan_samples < 1:
            raise ValueError(f"decomp.plan_error={d.plan_error!r}, decomp.plan_samples={d.plan_samples!r}; valid: "
                             f"plan_error in {', '.join(PLAN_ERRORS)} and plan_samples an integer >= 1")
        planner.check_request(net, _planner_layers(d), d.target_speedup, d.target_metric, list(d.schemes),
                              **solver_options(d))
    elif d.scheme is not None:
        layers, bases = _layers_and_bases(d)
        validate(net, layers, d.scheme, bases, d.rank_selection, **solver_options(d))
    return Job(cfg, datamodule, net)


def _filter_reconstruction(job: Job, approx: torch.nn.Module) -> tuple[list[dict], dict | None]:
    """Replace the selected convs of ``approx`` (explicit bases, or the planner's choice)."""
    d, size, lat = job.cfg.decomp, job.cfg.model.input_size, job.cfg.latency
    if not _planned(d):
        layers, bases = _layers_and_bases(d)
        return decompose(approx, layers, d.scheme, bases, d.rank_selection, **solver_options(d)), None
    calibration = None
    if d.plan_error != "filter":  # real training images, never validation or test
        loader = job.datamodule.calibration_dataloader(d.plan_samples, seed=job.cfg.seed)
        calibration = next(iter(loader))[0]
    chosen, report = planner.plan(
        approx, _planner_layers(d), d.target_speedup, d.target_metric, size, max(lat.batch_sizes),
        list(d.schemes), lat.warmup, lat.repeats, calibration=calibration, error=d.plan_error,
        memory_format=lat.memory_format, **solver_options(d),
    )
    log.info("plan (%s, predicted conv speed-up %.2fx): %s", d.target_metric,
             report["predicted_conv_speedup"], report["plan"])
    return planner.apply(approx, chosen), report


def _limit(value) -> int | None:
    return value if isinstance(value, int) else None


def _accuracies(job: Job, net: torch.nn.Module, tag: str) -> dict:
    dm, t = job.datamodule, job.cfg.trainer
    return {
        "acc1": accuracy(net, dm.val_dataloader(), _limit(t.get("limit_val_batches")), desc=f"{tag} val acc@1"),
        "acc1_test": accuracy(net, dm.test_dataloader(), _limit(t.get("limit_test_batches")), desc=f"{tag} test acc@1"),
    }


def _data_reconstruction(job: Job, baseline: torch.nn.Module, approx: torch.nn.Module, names: list[str]) -> list[dict]:
    dr = job.cfg.decomp.data_recon
    loader = job.datamodule.calibration_dataloader(dr.batch_size, seed=job.cfg.seed)
    batches = [x for (x, _), _ in zip(loader, range(dr.batches))]
    return reconstruct(
        baseline, approx, names, batches, mode=dr.mode, lstsq=dr.lstsq, steps=dr.steps, lr=dr.lr,
        optimizer=dr.optimizer, holdout_batches=dr.holdout_batches, batch_size=dr.batch_size, seed=job.cfg.seed,
    )


def _finetune(job: Job, baseline: torch.nn.Module, approx: torch.nn.Module, logger, callbacks) -> None:
    ft = job.cfg.decomp.finetune
    module = Classifier(
        approx,
        optimizer=instantiate(ft.optimizer),
        scheduler=instantiate(ft.scheduler) if ft.get("scheduler") else None,
        channels_last=job.cfg.model.get("channels_last", False),
        loss=ft.loss,
        teacher=baseline if ft.loss == "kd" else None,
        temperature=ft.temperature,
        kd_alpha=ft.kd_alpha,
    )
    trainer = instantiate(job.cfg.trainer, max_epochs=ft.epochs, logger=logger or False, callbacks=list(callbacks),
                          num_sanity_val_steps=0)
    trainer.fit(module, datamodule=job.datamodule)
    approx.to(memory_format=torch.contiguous_format)


def _timings(job: Job, baseline: torch.nn.Module, approx: torch.nn.Module, on=None, batch_sizes=None) -> dict:
    """``{device: {batch size: compare(...)}}`` for the devices ``on`` (default: every device) and
    the ``batch_sizes`` (default: every configured one)."""
    lat, size = job.cfg.latency, job.cfg.model.input_size
    batch_sizes = batch_sizes or lat.batch_sizes
    out = {}
    for d in on or devices():
        x = torch.randn(max(lat.batch_sizes), 3, size, size, device=d)
        tune(approx.to(d), x, lat.warmup, lat.repeats, lat.memory_format)  # Scheme 1's and CP's execution, this device
        out[d.type] = {
            bs: compare(baseline, approx, size, bs, d, lat.warmup, lat.repeats, lat.memory_format)
            for bs in batch_sizes
        }
    approx.to("cpu", memory_format=torch.contiguous_format)
    return out


def _guard(job: Job, baseline: torch.nn.Module, approx: torch.nn.Module, records: list[dict]) -> list[str]:
    """The latency guard, run right after filter reconstruction (a layer's speed depends on its
    shape, not its weights), so that the fitting stages fit the layers that stay: every replaced
    layer that is not faster where the model would run (CUDA when present) gets its original conv
    back. Returns the names put back."""
    device, batch_size = devices()[-1], max(job.cfg.latency.batch_sizes)
    timings = _timings(job, baseline, approx, on=[device], batch_sizes=[batch_size])[device.type][batch_size]
    put_back = put_back_slower(approx, baseline, records, timings["layers"])
    reset_strategies(approx)  # timing chose the executions; fitting computes the same numbers in every run
    if put_back:
        log.warning("put back the original conv of %s: not faster on this device", put_back)
    return put_back


def slower_than_baseline(timings: dict) -> list[str]:
    """Every timed setting (device, batch size) at which the final model's conv or model speed-up
    is below 1, e.g. ``"cpu, batch 1: conv 0.84x, model 1.00x"``: the guard decides at one setting
    only, so a model faster at batch 32 can be slower at batch 1, and the user must be told."""
    return [f"{dev}, batch {bs}: conv {t['conv_speedup']:.2f}x, model {t['model_speedup']:.2f}x"
            for dev, by_bs in timings.items() for bs, t in by_bs.items()
            if min(t["conv_speedup"], t["model_speedup"]) < 1]


def run(job: Job, run_dir: Path, logger=None, callbacks=()) -> dict:
    """Run the pipeline; write the final network to ``run_dir/model.pt`` (the whole module, see
    :func:`load_models`), then ``run_dir/results.json``, both atomically; returns the results."""
    cfg, dm, net = job.cfg, job.datamodule, job.net
    L.seed_everything(cfg.seed, workers=True)
    origin = get_baseline(cfg, net, dm, logger, callbacks)
    net.eval()
    size = cfg.model.input_size
    baseline = {**_accuracies(job, net, "baseline"), **complexity(net, size), "origin": origin}
    stages: dict[str, dict] = {}
    records: list[dict] = []
    plan_report = None
    finetune_reverted = False
    approx = net
    if _decomposes(cfg.decomp):
        approx = copy.deepcopy(net)
        records, plan_report = _filter_reconstruction(job, approx)
        stages["filter"] = _accuracies(job, approx, "filter")
        if not cfg.decomp.keep_slower:  # before data reconstruction: that fits each layer to the ones before it
            if _guard(job, net, approx, records):
                stages["guard"] = _accuracies(job, approx, "guard")
        names = [r["name"] for r in records if r.get("kept", True)]
        if not names:
            log.warning("no replaced layer is left: the model is the baseline; data reconstruction and "
                        "fine-tuning are skipped")
        if names and cfg.decomp.data_recon.enabled:
            by_name = {r["name"]: r for r in _data_reconstruction(job, net, approx, names)}
            for rec in records:
                if rec["name"] in by_name:
                    rec["data_recon"] = by_name[rec["name"]]
            stages["data"] = _accuracies(job, approx, "data")
        if names and cfg.decomp.finetune.epochs > 0:
            before, before_acc1 = copy.deepcopy(approx.state_dict()), list(stages.values())[-1]["acc1"]
            _finetune(job, net, approx, logger, callbacks)
            stages["finetune"] = _accuracies(job, approx, "finetune")
            if stages["finetune"]["acc1"] < before_acc1:  # validation is the selection split
                approx.load_state_dict(before)
                finetune_reverted = True
                log.warning("fine-tuning lowered validation acc@1 from %.2f to %.2f: the weights from before "
                            "it are kept", before_acc1, stages["finetune"]["acc1"])
    timings = _timings(job, net, approx)
    slower = slower_than_baseline(timings) if records else []
    if slower:
        log.warning("the final model is slower than the baseline at %s", "; ".join(slower))
    main_bs = max(cfg.latency.batch_sizes)
    for rec in records:
        rec["measured_speedup"] = {dev: t[main_bs]["layers"][rec["name"]]["speedup"] for dev, t in timings.items()}
    kept_stages = [v for k, v in stages.items() if not (k == "finetune" and finetune_reverted)]
    last = kept_stages[-1] if kept_stages else baseline  # the final model is the last kept stage's
    final = {"acc1": last["acc1"], "acc1_test": last["acc1_test"], **complexity(approx, size)}
    baseline["latency_ms"] = {dev: t[main_bs]["model_ms"]["baseline"] for dev, t in timings.items()}
    final["latency_ms"] = {dev: t[main_bs]["model_ms"]["approx"] for dev, t in timings.items()}
    results = {
        "status": "complete",
        "model": cfg.model.name,
        "baseline": baseline,
        "final": final,
        "stages": stages,
        "finetune_reverted": finetune_reverted,
        "slower_than_baseline": slower,
        "speedup": {
            "macs": baseline["macs"] / final["macs"],
            "conv": {dev: t[main_bs]["conv_speedup"] for dev, t in timings.items()},
            "model": {dev: t[main_bs]["model_speedup"] for dev, t in timings.items()},
        },
        "latency": timings,
        "layers": records,
        "plan": plan_report,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model_file": MODEL,
    }
    save_torch(run_dir / MODEL, approx.eval())  # before results.json: a results.json that exists has its model
    write_json(run_dir / RESULTS, results)
    log.info("final acc@1 %.2f (baseline %.2f); conv speed-up %s; results in %s",
             final["acc1"], baseline["acc1"], results["speedup"]["conv"], run_dir / RESULTS)
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
        raise ValueError(f"the baseline of {run_dir}, {str(checkpoint)!r}, is not there; a relative path is "
                         f"relative to the directory the run was started in: run from there")
    final = torch.load(run_dir / MODEL, map_location="cpu", weights_only=False)
    reset_strategies(final)
    baseline = instantiate(OmegaConf.create(results["config"]["model"]["net"]))
    load_state_dict(baseline, checkpoint)
    return baseline.eval(), final.eval(), results
