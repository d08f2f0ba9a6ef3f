"""One lrx run: data -> baseline -> evaluate -> decompose -> evaluate -> results.json.

Everything that can be wrong with the config is checked before any training, solving or
writing starts (:func:`prepare`); :func:`run` then does the expensive work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lrx.baseline import get_baseline
from lrx.complexity import complexity
from lrx.evaluate import accuracy
from lrx.io import write_json
from lrx.latency import model_latency

log = logging.getLogger(__name__)

RESULTS = "results.json"


@dataclass
class Job:
    cfg: DictConfig
    datamodule: L.LightningDataModule
    net: torch.nn.Module


def prepare(cfg: DictConfig) -> Job:
    """Build the data module and the network and validate the config; writes nothing."""
    datamodule = instantiate(cfg.data)
    datamodule.check_root()
    net = instantiate(cfg.model.net)
    return Job(cfg, datamodule, net)


def _measure(job: Job, split_batches: dict) -> dict:
    cfg, net, dm = job.cfg, job.net, job.datamodule
    lat = cfg.latency
    return {
        "acc1": accuracy(net, dm.val_dataloader(), split_batches["val"], desc="val acc@1"),
        "acc1_test": accuracy(net, dm.test_dataloader(), split_batches["test"], desc="test acc@1"),
        **complexity(net, cfg.model.input_size),
        "latency_ms": model_latency(net, cfg.model.input_size, lat.batch_size, lat.warmup, lat.repeats),
    }


def run(job: Job, run_dir: Path, logger=None, callbacks=()) -> dict:
    """Run the pipeline and write ``run_dir/results.json`` atomically; returns its content."""
    cfg, dm, net = job.cfg, job.datamodule, job.net
    L.seed_everything(cfg.seed, workers=True)
    dm.setup("fit")
    baseline_info = get_baseline(cfg, net, dm, logger, callbacks)
    limits = {"val": cfg.trainer.get("limit_val_batches"), "test": cfg.trainer.get("limit_test_batches")}
    limits = {k: v if isinstance(v, int) else None for k, v in limits.items()}
    baseline = {**_measure(job, limits), "origin": baseline_info}
    log.info("baseline: %s", baseline)
    layers: list[dict] = []
    final = {k: v for k, v in baseline.items() if k != "origin"}
    results = {
        "status": "complete",
        "model": cfg.model.name,
        "baseline": baseline,
        "final": final,
        "layers": layers,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    for lg in logger or []:
        lg.log_metrics({"baseline/acc1": baseline["acc1"], "final/acc1": final["acc1"]})
    write_json(run_dir / RESULTS, results)
    log.info("results written to %s", run_dir / RESULTS)
    return results
