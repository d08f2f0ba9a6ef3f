"""The baseline network: a supplied checkpoint, a cached copy, or a freshly trained one.

A baseline is trained once per recipe (model, data split and augmentation, trainer settings,
seed) and cached under ``baseline.cache_dir/<model>-<hash>/baseline.pt``; every later run and
every job of a sweep with the same recipe loads it instead of retraining. A file lock keeps
parallel sweep jobs from training the same baseline twice.

Every checkpoint is read by :func:`load_state_dict`, which answers any file that is not a
state_dict with one :class:`CheckpointMismatchError`; :func:`check_finite_network` refuses a
network with NaN/Inf (a diverged training is never cached).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from filelock import FileLock
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lrx.io import save_torch
from lrx.modes import eval_mode
from lrx.results.saved import load_state_dict
from lrx.run.callbacks import TrainingEstimate
from lrx.run.module import Classifier
from lrx.run.schema import project_path

log = logging.getLogger(__name__)

# Keys that do not change the trained weights, left out of the cache key.
_MODEL_NON_RECIPE = {"default_layers", "checkpoints"}
_DATA_NON_RECIPE = {"root", "num_workers", "download", "eval_batch_size"}
_TRAINER_NON_RECIPE = {
    "accelerator",
    "devices",
    "enable_checkpointing",
    "log_every_n_steps",
    "limit_val_batches",
    "limit_test_batches",
}


def recipe(cfg: DictConfig) -> dict:
    """Everything that determines the baseline's trained weights."""
    c = OmegaConf.to_container(cfg, resolve=True)
    return {
        "model": {k: v for k, v in c["model"].items() if k not in _MODEL_NON_RECIPE},
        "data": {k: v for k, v in c["data"].items() if k not in _DATA_NON_RECIPE},
        "trainer": {k: v for k, v in c["trainer"].items() if k not in _TRAINER_NON_RECIPE},
        "seed": c["seed"],
    }


def recipe_key(cfg: DictConfig) -> str:
    blob = json.dumps(recipe(cfg), sort_keys=True, default=str)
    return f"{cfg.model.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


class NonFiniteError(FloatingPointError):
    """A network whose weights, buffers or logits hold NaN/Inf: broken, so nothing it computes is
    evaluated, reported or saved."""


def non_finite(net: nn.Module) -> list[tuple[str, int]]:
    """``(name, count)`` of every parameter and buffer of ``net`` (BatchNorm's running statistics
    included) that holds NaN/Inf values."""
    tensors = [*net.named_parameters(), *net.named_buffers()]
    counts = [(name, int((~t.detach().isfinite()).sum())) for name, t in tensors if t.is_floating_point()]
    return [(name, n) for name, n in counts if n]


def check_finite_network(net: nn.Module, what: str, images: torch.Tensor | None = None) -> None:
    """NonFiniteError naming ``what`` and its first tensor that holds NaN/Inf, or, with
    ``images``, its logits on them (in eval mode) when those do."""
    bad = non_finite(net)
    if bad:
        (name, n), rest = bad[0], [b for b, _ in bad[1:]]
        more = f" (and {len(rest)} more tensor(s): {', '.join(rest[:5])}{', ...' if rest[5:] else ''})" if rest else ""
        raise NonFiniteError(f"{what}: {name} holds {n} NaN/Inf value(s){more}; the network is broken")
    if images is None:
        return
    with eval_mode(net), torch.inference_mode():
        logits = net(images.to(next(net.parameters()).device))
    n = int((~logits.isfinite()).sum())
    if n:
        raise NonFiniteError(
            f"{what}: its logits on {len(images)} validation images hold {n} NaN/Inf value(s), although every "
            "weight and buffer is finite; the network is broken"
        )


def _load_cached(net: nn.Module, path: Path, key: str) -> dict | None:
    """The cached checkpoint's metadata, or None when it is absent, partial or stale."""
    if not path.is_file():
        return None
    try:
        obj = load_state_dict(net, path)
    except Exception as e:  # a partial or corrupt file is rebuilt, never trusted
        log.warning("cached baseline %s is unusable (%s); retraining", path, e)
        return None
    if obj.get("key") != key:
        log.warning("cached baseline %s belongs to another recipe; retraining", path)
        return None
    return obj.get("meta", {})


RESUME = "last.ckpt"  # Lightning's checkpoint of the last finished epoch, beside the cached baseline


def train(cfg: DictConfig, net: nn.Module, datamodule, logger, callbacks, checkpoint_dir: Path) -> dict:
    """Fit ``net`` with the model's optimiser recipe and the Lightning trainer config.

    Every epoch ends with ``checkpoint_dir/last.ckpt``; a training that was interrupted resumes
    from it (the folder is keyed by the recipe, so it only ever holds this recipe's training).
    The file is removed once the training is complete.
    """
    module = Classifier(
        net,
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        label_smoothing=cfg.model.get("label_smoothing", 0.0),
        channels_last=cfg.model.get("channels_last", False),
    )
    last = ModelCheckpoint(
        dirpath=checkpoint_dir, filename=Path(RESUME).stem, save_on_train_epoch_end=True, enable_version_counter=False
    )  # no monitor: overwrites RESUME after every epoch
    estimate = TrainingEstimate("the baseline", "to skip it, pass trained weights: baseline.ckpt=PATH")
    trainer = instantiate(
        cfg.trainer, logger=logger or False, callbacks=[*callbacks, last, estimate], enable_checkpointing=True
    )
    resume = checkpoint_dir / RESUME
    if resume.is_file():
        log.info("resuming the baseline's training from %s", resume)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume.is_file() else None)
    resume.unlink(missing_ok=True)
    net.to(memory_format=torch.contiguous_format)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"train_time_s": time.perf_counter() - start, "epochs": trainer.current_epoch, "metrics": metrics}


def get_baseline(cfg: DictConfig, net: nn.Module, datamodule, logger=None, callbacks=()) -> dict:
    """Fill ``net`` with baseline weights; returns where they came from (``path``: relative to the
    project when inside it, else absolute) and how they were made."""
    if cfg.baseline.ckpt:
        load_state_dict(net, cfg.baseline.ckpt, "baseline.ckpt")
        return {"source": "checkpoint", "path": project_path(cfg.baseline.ckpt)}
    key = recipe_key(cfg)
    folder = Path(cfg.baseline.cache_dir) / key
    path = folder / "baseline.pt"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        meta = _load_cached(net, path, key)
        if meta is not None:
            log.info("baseline loaded from cache %s", path)
            return {"source": "cache", "path": project_path(path), **meta}
        log.info("training baseline %s (cached at %s)", key, path)
        torch.manual_seed(cfg.seed)
        meta = train(cfg, net, datamodule, logger, list(callbacks), folder)
        check_finite_network(net, f"baseline {key}, just trained (not cached)")  # a diverged training is not kept
        save_torch(path, {"key": key, "recipe": recipe(cfg), "meta": meta, "state_dict": net.state_dict()})
    return {"source": "trained", "path": project_path(path), **meta}
