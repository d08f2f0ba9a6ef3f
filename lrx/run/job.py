"""A checked job: :func:`prepare` checks the whole config (:mod:`lrx.run.config`), then builds the
data module and the network and checks what needs them (data root, checkpoint and its NaN/Inf,
layers, bases, the reach of a MAC target), before any training, solving or writing."""

from __future__ import annotations

import copy
import logging
import subprocess
from dataclasses import dataclass, field

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lrx.compress import fold, planner, prune, torch_pruning_peer
from lrx.compress.planner import PRUNE
from lrx.deploy.compare import targets_of
from lrx.deploy.targets import Target
from lrx.io import PROJECT
from lrx.lowrank import DecompositionError, method_class
from lrx.lowrank.surgery import validate
from lrx.modes import eval_mode
from lrx.run import config
from lrx.run.baseline import check_finite_network, load_state_dict

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A checked run: its config, data module and (untrained) network, and the keys that have
    no effect in it (a sweep's warning)."""

    cfg: DictConfig
    datamodule: L.LightningDataModule
    net: torch.nn.Module
    ignored_keys: list[str] = field(default_factory=list)
    code: str | None = None  # the code that runs it (code_version), as this process loaded it

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
    def decides(self) -> bool:
        """Whether candidates are timed: by the guard, or by a latency plan."""
        return config.decides(self.cfg)

    def deploy_targets(self) -> list[Target]:
        """``deploy.targets``: every target this installation and CPU serve (``auto``), or those named."""
        return targets_of(self.cfg.deploy.targets)

    @property
    def prunes(self) -> bool:
        return self.method == PRUNE

    def prune_ratios(self, net: torch.nn.Module) -> dict[str, float]:
        """decomp=prune: ``{conv name: ratio}`` for ``net``, checked (:func:`lrx.compress.prune.ratios_for`)."""
        d = OmegaConf.to_container(self.cfg.decomp, resolve=True)
        return prune.ratios_for(net, d["layers"], d["ratio"], self.rank_multiple)

    @property
    def rank_multiple(self) -> int:
        return self.cfg.decomp.get("rank_multiple", 1)

    def layers_and_bases(self):
        d = OmegaConf.to_container(self.cfg.decomp, resolve=True)
        return d["layers"], d.get("bases")

    def options(self) -> dict:
        """The chosen method's solver options, from its decomp keys."""
        return config.method_options(OmegaConf.to_container(self.cfg.decomp, resolve=True))

    @property
    def speedups(self) -> tuple | None:
        """planner.speedups as a tuple (None: each method's own ladder)."""
        s = self.cfg.planner.get("speedups")
        return None if s is None else tuple(s)

    def planner_options(self) -> dict:
        """Solver options of the planner's methods (those of other methods: a sweep's ignored keys)."""
        p = OmegaConf.to_container(self.cfg.planner, resolve=True)
        chosen = {method_class(m).method for m in p["methods"] if m != PRUNE}
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


def code_version() -> str | None:
    """The project's git commit, ``-dirty`` appended where files differ from it (``git describe
    --always --dirty``); None outside a git checkout or without git."""
    try:
        res = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=PROJECT, capture_output=True, text=True
        )
    except OSError:
        return None
    return res.stdout.strip() if res.returncode == 0 else None


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
    if cfg.data.get("num_classes") is None:  # counted from the data (ImageFolder's class folders)
        _set_up(datamodule)
        with open_dict(cfg):
            cfg.data.num_classes = datamodule.num_classes
    torch.manual_seed(cfg.seed)  # the initial weights of a baseline trained by this run
    net = _instantiate(cfg.model.net)
    check_input_size(net, cfg.model.get("name", "the model"), cfg.model.input_size)
    _set_up(datamodule)
    if cfg.baseline.ckpt:
        loaded = copy.deepcopy(net)
        load_state_dict(loaded, cfg.baseline.ckpt, "baseline.ckpt")
        check_finite_network(loaded, f"baseline (baseline.ckpt={cfg.baseline.ckpt})")
    job = Job(cfg, datamodule, net, ignored, code_version())
    if cfg.latency.fold_bn:
        fold.foldable(net)  # a network torch.fx cannot read is refused now, not after the work
    if job.decomposes:
        _check_request(job)
    return job


def _set_up(datamodule: L.LightningDataModule) -> None:
    """Read and check every data file (once)."""
    if datamodule.train_set is None:
        datamodule.prepare_data()
        datamodule.setup("fit")


def check_input_size(net: torch.nn.Module, name: str, input_size: int) -> None:
    """One forward pass of one blank image: a network that cannot take ``input_size`` (too small
    for its pooling, a classifier sized for another input) is refused in one line now, not after
    the data is loaded."""
    try:
        with eval_mode(net), torch.no_grad():
            net(torch.zeros(1, 3, input_size, input_size))
    except RuntimeError as e:
        raise config.ConfigError(
            f"model.input_size={input_size}: model {name!r} cannot take {input_size}x{input_size} images "
            f"({str(e).splitlines()[0]}); valid: an input size the architecture accepts"
        ) from None


def _check_request(job: Job) -> None:
    """The layers and bases (or the planner's target) against the network, before any solving;
    an error names the decomp keys."""
    layers, bases = job.layers_and_bases()
    if job.prunes and job.cfg.decomp.engine == "torch_pruning":
        torch_pruning_peer.check(job.net, job.cfg.decomp.ratio, job.rank_multiple)
        return
    if job.prunes:
        job.prune_ratios(job.net)
        return
    keys = f"decomp.layers={layers!r}" + ("" if job.plans else f", decomp.bases={bases!r}")
    try:
        if job.plans:
            p, options = job.cfg.planner, job.planner_options()
            size = job.cfg.model.input_size
            planner.check_request(
                job.net,
                layers,
                p.target_speedup,
                p.metric,
                list(p.methods),
                options,
                size,
                job.rank_multiple,
                job.speedups,
            )
        else:
            validate(job.net, layers, job.method, bases, job.rank_multiple, **job.options())
    except DecompositionError as e:
        raise DecompositionError(f"{keys}: {e}") from None


def first_val_images(job: Job) -> torch.Tensor:
    """The first validation batch's images: the logits a broken network gives are checked on them."""
    return next(iter(job.datamodule.val_dataloader()))[0]
