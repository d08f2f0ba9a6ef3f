"""The baseline and the final network deployed to every target, side by side: each deployed graph
checked against its torch network, its acc@1 measured where it runs, each target's two graphs
timed in paired rounds of their own, and the headline speed-up against the best dense deployment.

The best dense deployment is the fastest baseline target whose acc@1 is within ``within`` points
(0.5) of the baseline's float32 acc@1 in PyTorch; the final network's is its fastest target. The
two are then timed again for the headline (:func:`time_best`): as a pair in one runtime, each
alone across two.
:func:`compare_deployments` does it all, for a run's stage and for ``python -m lrx.retime --deploy``.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lrx.compress.fold import fold_bn
from lrx.deploy.targets import AUTO, TARGETS, Deployed, Target, TargetError, check, deploy, deployed_accuracy, servable
from lrx.measure.estimator import DEFAULT_ESTIMATOR, Estimator, Timing, measure
from lrx.measure.latency import machine
from lrx.measure.load import timing_conditions
from lrx.runtime import cpu
from lrx.runtime import onnxruntime as ort
from lrx.runtime.calibration import CALIBRATION_IMAGES

log = logging.getLogger(__name__)

SIDES = ("baseline", "final")
WITHIN = 0.5  # points of acc@1 a dense deployment may lose and still count as the reference


def deploy_both(
    nets: dict[str, nn.Module],
    targets: list[Target],
    images: torch.Tensor,
    threads: int,
    memory_format: torch.memory_format,
    calibration: Iterable | None,
    calibration_images: int,
    opset: int = ort.OPSET,
) -> tuple[dict[str, dict[str, Deployed]], dict[str, str]]:
    """``({target: {side: Deployed}}, {target: why it failed})`` for both networks: each deployed
    graph is checked against its torch network on ``images`` (validation images; the check is kept
    in ``Deployed.info["check"]``); a target where either network fails its check is left out,
    with a warning, and the other targets go on."""
    out: dict[str, dict[str, Deployed]] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="lrx-deploy-") as work:
        for target in tqdm(targets, desc="deploy", leave=False):
            sides = {}
            for side, net in nets.items():
                folder = Path(work) / target.name / side
                folder.mkdir(parents=True)
                d = deploy(
                    net, target, images, threads, folder, memory_format, calibration, calibration_images, opset=opset
                )
                try:
                    d.info["check"] = check(d, net, images)
                except TargetError as e:
                    failed[target.name] = f"{side} network: {e}"
                    log.warning("%s is left out: the %s", target.name, failed[target.name])
                    break
                sides[side] = d
            else:
                out[target.name] = sides
    return out, failed


def time_all(
    deployed: dict[str, dict[str, Deployed]], x: torch.Tensor, estimator: Estimator = DEFAULT_ESTIMATOR, threads=None
) -> dict[str, Timing]:
    """Each target's two graphs on ``x`` in paired rounds of their own, one target after another:
    with every graph of every runtime taking turns in one measurement, a runtime whose threads still
    spin after its call slows the next one, and the fastest target would be chosen on inflated
    times. ``{target: Timing}``, its ratio ``speedup`` = baseline ms / final ms."""
    speedup = {"speedup": lambda r: r["baseline"] / r["final"]}
    return {
        t: measure({side: d.timer(x) for side, d in sides.items()}, speedup, estimator, threads)
        for t, sides in tqdm(deployed.items(), desc="timing the targets", leave=False)
    }


def table(
    deployed: dict[str, dict[str, Deployed]],
    timings: dict[str, Timing],
    acc1: dict[str, dict[str, float]],
    reference_acc1: float,
    within: float = WITHIN,
) -> dict:
    """What results.json keeps: per target and side its ms, acc@1, check and runtime; per target
    the final network's speed-up over the baseline in the same target; and ``best``: the best
    dense target (the fastest within ``within`` points of ``reference_acc1``; None where there is
    none) and the best final target, whose speed-up :func:`time_best` measures."""
    targets = {}
    for t, sides in deployed.items():
        timing = timings[t]
        row = {side: {"ms": timing.ms[side], "acc1": acc1[t][side], **d.info} for side, d in sides.items()}
        targets[t] = {**row, **timing.ratios["speedup"].record(), "timing": timing.record()}
    eligible = [t for t in targets if targets[t]["baseline"]["acc1"] >= reference_acc1 - within]
    best = None
    if eligible:
        dense = min(eligible, key=lambda t: targets[t]["baseline"]["ms"])
        final = min(targets, key=lambda t: targets[t]["final"]["ms"])
        best = {
            "dense": dense,
            "final": final,
            "dense_acc1": targets[dense]["baseline"]["acc1"],
            "final_acc1": targets[final]["final"]["acc1"],
            "within": within,
        }
    busy = [t.busy_cores for t in timings.values()]
    return {"targets": targets, "best": best, "threads": next(iter(timings.values())).threads, "busy_cores": busy}


def time_best(deployed: dict[str, dict[str, Deployed]], best: dict, x: torch.Tensor, estimator, threads) -> dict:
    """The best dense and best final graphs timed again, for the headline: in the same runtime as a
    pair (paired rounds); in two runtimes each alone, one after the other (pairing them would time
    one's spinning against the other), the speed-up then the ratio of their medians, its range
    from their quartiles."""
    dense, final = deployed[best["dense"]]["baseline"], deployed[best["final"]]["final"]
    if dense.target.runtime == final.target.runtime:
        calls = {"dense": dense.timer(x), "final": final.timer(x)}
        t = measure(calls, {"speedup": lambda r: r["dense"] / r["final"]}, estimator, threads)
        pair = {"dense_ms": t.ms["dense"], "final_ms": t.ms["final"], "timed": "as a pair"}
        return {**pair, **t.ratios["speedup"].record()}
    alone = {"ms": lambda r: r["ms"]}  # each round's ms, as a Ratio: its median and quartiles
    dq, fq = (measure({"ms": side.timer(x)}, alone, estimator, threads).ratios["ms"] for side in (dense, final))
    return {
        "dense_ms": dq.median,
        "final_ms": fq.median,
        "speedup": dq.median / fq.median,
        "speedup_iqr": [dq.q25 / fq.q75, dq.q75 / fq.q25],
        "unstable": dq.unstable or fq.unstable,
        "timed": "each alone",
    }


def evaluate_all(deployed: dict[str, dict[str, Deployed]], loader, max_batches=None) -> dict[str, dict[str, float]]:
    """acc@1 of every deployed graph on ``loader`` (the validation split), where it runs."""
    return {
        t: {side: deployed_accuracy(d, loader, max_batches, desc=f"{side} acc@1 in {t}") for side, d in sides.items()}
        for t, sides in deployed.items()
    }


def available_targets(key: str = "deploy.targets") -> list[Target]:
    """Every target this installation and CPU serve (``deploy.targets=auto``); each one left out is
    logged with the reason."""
    out = []
    for name in TARGETS:
        try:
            out += servable([name], key)
        except TargetError as e:
            log.info("not deployed to %s: %s", name, e)
    return out


def targets_of(names, key: str = "deploy.targets") -> list[Target]:
    """The targets ``names`` means: ``auto``, every target this installation and CPU serve; else
    those named."""
    return available_targets(key) if names == AUTO else [Target.of(n, key) for n in names]


def keep(deployed: dict[str, dict[str, Deployed]], folder: Path) -> dict[str, dict[str, list[str]]]:
    """Every deployed graph's files under ``folder/<target>/<side>/``, written to a sibling folder
    first and renamed at the end (no half-written folder is left); ``{target: {side: [files]}}``."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    files = {}
    for t, sides in deployed.items():
        files[t] = {}
        for side, d in sides.items():
            dest = tmp / t / side
            dest.mkdir(parents=True)
            files[t][side] = [f"{t}/{side}/{name}" for name in d.save(dest)]
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return files


def fastest_dense(
    net: nn.Module,
    targets: list[Target],
    x: torch.Tensor,
    check_images: torch.Tensor,
    threads: int,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    memory_format: torch.memory_format = torch.channels_last,
    calibration: Iterable | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    opset: int = ort.OPSET,
) -> tuple[Target, dict[str, float]]:
    """Where ``net`` is served fastest: ``net`` (BatchNorm folded) deployed to every target and
    checked on ``check_images``, each graph timed alone on ``x``, one after another. Returns the
    fastest target and every target's ms (those whose check failed are left out)."""
    baseline = {"baseline": fold_bn(net)}
    deployed, _ = deploy_both(
        baseline, targets, check_images, threads, memory_format, calibration, calibration_images, opset
    )
    if not deployed:
        raise TargetError(f"no target of {[t.name for t in targets]} serves the network")
    ms = {
        t: measure({"baseline": sides["baseline"].timer(x)}, {}, estimator, threads).ms["baseline"]
        for t, sides in tqdm(deployed.items(), desc="timing the dense network in each target", leave=False)
    }
    best = min(ms, key=ms.get)
    return next(t for t in targets if t.name == best), ms


def compare_deployments(
    nets: dict[str, nn.Module],
    targets: list[Target],
    x: torch.Tensor,
    check_images: torch.Tensor,
    val_loader,
    reference_acc1: float,
    threads: int,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    memory_format: torch.memory_format = torch.channels_last,
    calibration: Iterable | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    quiet_wait_s: float = 60.0,
    busy: int = 0,
    keep_in: Path | None = None,
    max_batches: int | None = None,
    opset: int = ort.OPSET,
) -> dict:
    """Both ``nets`` (``{"baseline", "final"}``, eval, CPU, float32), their BatchNorms folded as a
    deployment serves them, deployed to every target and checked on ``check_images``; acc@1 of each
    on ``val_loader`` where it runs; each target's two graphs timed on ``x`` (:func:`time_all`) after
    a wait for a quiet machine, next to ``busy`` neighbours that each keep a core busy; the graphs'
    files kept under ``keep_in`` when given; ONNX Runtime's graphs exported at ONNX ``opset``.
    Returns what results.json keeps under ``deploy`` (:func:`table`, plus the setup and load)."""
    nets = {side: fold_bn(net) for side, net in nets.items()}
    deployed, failed = deploy_both(
        nets, targets, check_images, threads, memory_format, calibration, calibration_images, opset
    )
    if not deployed:
        return {"failed": failed, "targets": {}, "best": None}
    acc1 = evaluate_all(deployed, val_loader, max_batches)
    files = keep(deployed, keep_in) if keep_in is not None else None
    with timing_conditions(quiet_wait_s, busy, "the deployed networks") as load:
        compared = table(deployed, time_all(deployed, x, estimator, threads), acc1, reference_acc1)
        if compared["best"]:
            compared["best"].update(time_best(deployed, compared["best"], x, estimator, threads))
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "cpu_flags": cpu.flags(),
        "batch_size": len(x),
        "bn_folded": True,
        "calibration_images": calibration_images if any(t.precision == "int8" for t in targets) else None,
        "reference_acc1": reference_acc1,
        "load": load,
        "files": files,
        "failed": failed,
        **compared,
    }
