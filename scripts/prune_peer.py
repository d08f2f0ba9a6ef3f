"""The structured channel pruning peer: what a user would pick instead of a low-rank expansion,
measured the same way. Prunes the same fraction of every conv's output channels of the trained
network with Torch-Pruning (L1 norm of the filters, :mod:`lrx.compress.torch_pruning_peer`), fine-tunes it with
the run's recipe, times both networks, deploys both to every target and writes a run directory:

    python scripts/prune_peer.py --ratio 0.3 [--round-to 16] [--name NAME] [--out DIR] [OVERRIDE ...]

OVERRIDEs are ``lrx.train``'s (e.g. ``data.root=../shared/data``). The config is lrx.train's with
``decomp=none finetune=kd finetune.epochs=2 logger=none`` before them, so the baseline (the model's
shipped checkpoint), the data, the fine-tuning (distillation from the baseline, weights that lower
validation acc@1 not kept), the timing and the deployment (``deploy.targets``, every target by
default, BatchNorm folded, int8 calibrated on training images) are those of a run. The model's
``net`` must take ``widths``, one per conv (``model=alexnet_cifar``): the pruned network is that
model with smaller widths. Needs the ``prune`` extra (``pip install -e ".[prune]"``).

Writes ``OUT/NAME/`` (default ``outputs/prune/<model>_ratio<ratio>_round<round-to>``):
``results.json`` in a run's shape (``method: prune``, one layer record per conv, ``prune``: the
flags and widths), ``model.pt`` (:mod:`lrx.results.saved`, the model's ``net`` node with the pruned
widths), ``deployed/`` and ``prune.log``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import sys
import time
from importlib.metadata import version
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import lrx.run.schema  # noqa: F401  (the ConfigStore schemas that conf/ extends)
from lrx.compress.torch_pruning_peer import IMPORTANCE, METHOD, prune_channels
from lrx.io import PROJECT, check_writable, write_json
from lrx.measure.complexity import count_macs
from lrx.measure.latency import machine
from lrx.measure.load import timing_conditions
from lrx.results.files import MODEL, RESULTS
from lrx.results.saved import save_network
from lrx.run.baseline import check_finite_network
from lrx.run.job import Job, first_val_images, prepare
from lrx.run.stages import _accuracies, _baseline, _deploy_targets, _finetune, _timings
from lrx.run.summary import State, results_of
from lrx.run.train import RUN_FAULTS
from lrx.runtime.extras import missing, require

log = logging.getLogger("prune_peer")

PROG = "prune_peer.py"
DEFAULTS = ("decomp=none", "finetune=kd", "finetune.epochs=2", "logger=none")  # before the user's overrides


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, required=True, help="fraction of each conv's output channels removed")
    parser.add_argument("--round-to", type=int, default=16, help="channels kept: rounded down to a multiple of this")
    parser.add_argument("--name", help="the run directory's name (default: <model>_ratio<ratio>_round<round-to>)")
    parser.add_argument("--out", type=Path, default=PROJECT / "outputs" / "prune", help="where the run directory goes")
    parser.add_argument("overrides", nargs="*", help="lrx.train config overrides, key=value")
    return parser.parse_intermixed_args(argv)


def check_flags(args: argparse.Namespace) -> None:
    """A ValueError naming the flag, its value and what is valid; an ImportError without the extra."""
    if not 0 < args.ratio < 1:
        raise ValueError(f"--ratio={args.ratio:g}: valid: a fraction in (0, 1) of each conv's output channels")
    if args.round_to < 1:
        raise ValueError(f"--round-to={args.round_to}: valid: an integer >= 1 (1: no rounding)")
    require(missing(["torch_pruning"]), "prune", PROG)


def compose_config(overrides: list[str]) -> DictConfig:
    """lrx.train's config (conf/train.yaml) with :data:`DEFAULTS`, then ``overrides``."""
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*DEFAULTS, *overrides])


def pruned_copy(net: torch.nn.Module, cfg: DictConfig, args) -> tuple[torch.nn.Module, dict, list[dict]]:
    """``net`` pruned (a copy) and rebuilt from the model's ``net`` node with the pruned widths:
    ``(network, its net node, the layer records)``. A ValueError names the flags or the model where
    that cannot be done."""
    pruned = copy.deepcopy(net)
    try:
        records = prune_channels(pruned, args.ratio, args.round_to, cfg.model.input_size)
    except ValueError as e:
        raise ValueError(f"--ratio={args.ratio:g} --round-to={args.round_to}: {e}; valid: a smaller ratio") from None
    node = {**OmegaConf.to_container(cfg.model.net, resolve=True), "widths": [r["bases"] for r in records]}
    try:
        rebuilt = instantiate(node)
        rebuilt.load_state_dict(pruned.state_dict())
    except (InstantiationException, RuntimeError) as e:
        raise ValueError(
            f"model={cfg.model.name}: the pruned network is not {node['_target_']} with widths={node['widths']} "
            f"({str(e).splitlines()[0]}); valid: a model whose net takes widths, one per conv (alexnet_cifar)"
        ) from None
    return rebuilt.eval(), node, records


def run(job: Job, args, run_dir: Path, started: float) -> dict:
    """Baseline, pruning, fine-tuning, timing and deployment, as :func:`lrx.run.stages.run` does a
    run's; writes ``model.pt`` then ``results.json``; returns the results."""
    cfg = job.cfg
    callbacks = [instantiate(v) for v in (cfg.get("callbacks") or {}).values() if v is not None and "_target_" in v]
    L.seed_everything(cfg.seed, workers=True)
    s = State(job, job.net, job.net)
    _baseline(s, None, callbacks)
    s.approx, node, s.records = pruned_copy(s.net, cfg, args)
    macs = s.baseline["macs"] / count_macs(s.approx, cfg.model.input_size)
    log.info("pruned to widths %s: %.2fx fewer MACs", node["widths"], macs)
    s.stages[METHOD] = _accuracies(job, s.approx, METHOD)
    _finetune(s, None, callbacks)
    images = first_val_images(job)
    check_finite_network(s.approx, "pruned network", images)
    lat = cfg.latency
    with timing_conditions(lat.quiet_wait_s, lat.decide_at.busy, "the final networks") as s.load["final"]:
        measured = _timings(job, s.net, s.approx, folded=lat.fold_bn)
    _deploy_targets(s, run_dir, images)
    results = results_of(s, measured)
    results |= {
        "method": METHOD,
        "prune": {
            "ratio": args.ratio,
            "round_to": args.round_to,
            "importance": IMPORTANCE,
            "widths": node["widths"],
            "torch_pruning": version("torch-pruning"),
        },
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    save_network(run_dir / MODEL, s.approx, node)  # before results.json: a results.json that exists has its model
    write_json(run_dir / RESULTS, results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    try:
        check_flags(args)
        cfg = compose_config(args.overrides)
        job = prepare(cfg)
        pruned_copy(job.net, cfg, args)  # the flags and the model, checked on the untrained network
        run_dir = check_writable(args.out / (args.name or f"{cfg.model.name}_ratio{args.ratio:g}_round{args.round_to}"))
    except (ValueError, OSError, ImportError, HydraException) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(run_dir / "prune.log", mode="w")],
    )
    try:
        results = run(job, args, run_dir, started)
    except RUN_FAULTS as e:
        log.error("%s", e)
        return 1
    best = results["deploy"] and results["deploy"]["best"]
    log.info(
        "acc@1 %.2f (baseline %.2f), %.2fx fewer MACs; against the best dense deployment: %s; results in %s",
        results["final"]["acc1"],
        results["baseline"]["acc1"],
        results["speedup"]["macs"],
        f"{best['speedup']:.2f}x ({best['dense']} -> {best['final']})" if best else "none",
        run_dir / RESULTS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
