"""results.json, built in one place from what the stages recorded (:func:`results_of`), and the
points at which the final network is measurably slower than the baseline."""

from __future__ import annotations

import datetime
import logging
import shlex
from dataclasses import dataclass, field

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lrx.compress.prune import METHOD as PRUNE
from lrx.lowrank.surgery import skipped_convs
from lrx.measure.complexity import complexity
from lrx.measure.latency import decide_point, machine, points
from lrx.results.files import MODEL
from lrx.run.job import Job
from lrx.runtime import cpu
from lrx.runtime.serving import openmp_env

log = logging.getLogger(__name__)


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
    deployed: dict | None = None  # deploy.onnx's exported graphs; deploy.targets' table (lrx.deploy.compare)
    load: dict = field(default_factory=dict)  # per timing stage, the other work's load (measure.load)
    reference: torch.nn.Module | None = None  # the baseline with the plan's prunings: what the guard puts back
    where: dict | None = None  # the runtime and precision the guard and the planner timed in (and why)

    @property
    def kept(self) -> list[str]:
        return [r["name"] for r in self.records if r.get("kept", True)]

    @property
    def fitted(self) -> list[str]:
        """The kept low-rank layers: what data reconstruction refits (a pruned conv has no last pass)."""
        return [r["name"] for r in self.records if r.get("kept", True) and r.get("method") != PRUNE]


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


def _vs_best_dense(deployed: dict | None) -> dict:
    """The headline against the best dense deployment (deploy.targets), None where there is none."""
    best = (deployed or {}).get("best")
    return {"vs_best_dense": best and best["speedup"], "vs_best_dense_iqr": best and best["speedup_iqr"]}


def command() -> str | None:
    """The ``python -m lrx.train`` command that makes this run again (a sweep job: its own
    overrides, without ``-m``), None outside Hydra."""
    if not HydraConfig.initialized():
        return None
    return shlex.join(["python", "-m", "lrx.train", *HydraConfig.get().overrides.task])


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
            **_vs_best_dense(s.deployed),
        },
        "latency": timings,
        "timed_in": s.where,  # where the guard and the planner timed candidates
        "load": s.load,
        "command": command(),
        "code": s.job.code,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "cpu_flags": cpu.flags(),  # the features that decide int8 and bf16 speed (lrx.runtime.cpu)
        "latency_env": openmp_env(),  # the OpenMP wait variables every torch timing above ran under
        "deploy": s.deployed,
        "layers": s.records,
        "skipped": skipped_convs(s.net),
        "plan": s.plan,
        "ignored_keys": s.job.ignored_keys,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model_file": MODEL,
    }
