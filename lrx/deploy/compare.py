"""The baseline and the final network deployed to every target, side by side: each deployed graph
checked against its torch network, its acc@1 measured where it runs, every graph of both networks
timed in the same paired rounds, and the headline speed-up against the best dense deployment.

The best dense deployment is the fastest baseline target whose acc@1 is within ``within`` points
(0.5) of the baseline's float32 acc@1 in PyTorch; the final network's is its fastest target. The
speed-up is the median over rounds of best dense ms / best final ms, with its IQR (both measured
in the same rounds, in this process).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from lrx.deploy.targets import Deployed, Target, accuracy, check, deploy
from lrx.measure.estimator import DEFAULT_ESTIMATOR, Estimator, measure

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
) -> dict[str, dict[str, Deployed]]:
    """``{target: {side: Deployed}}`` for both networks, each checked against its torch network on
    ``images`` (validation images; the check is kept in ``Deployed.info["check"]``)."""
    out: dict[str, dict[str, Deployed]] = {}
    with tempfile.TemporaryDirectory(prefix="lrx-deploy-") as work:
        for target in targets:
            out[target.name] = {}
            for side, net in nets.items():
                folder = Path(work) / target.name / side
                folder.mkdir(parents=True)
                d = deploy(net, target, images, threads, folder, memory_format, calibration, calibration_images)
                d.info["check"] = check(d, net, images)
                out[target.name][side] = d
    return out


def _pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def time_all(
    deployed: dict[str, dict[str, Deployed]], x: torch.Tensor, estimator: Estimator = DEFAULT_ESTIMATOR, threads=None
):
    """Every deployed graph of both networks on ``x``, in the same paired rounds; the ratio of
    every baseline target's ms to every final target's (the headline picks one of them)."""
    calls = {f"{side}@{t}": d.timer(x) for t, sides in deployed.items() for side, d in sides.items()}
    base = [k for k in calls if k.startswith("baseline@")]
    final = [k for k in calls if k.startswith("final@")]
    ratios = {_pair(b, f): (lambda r, b=b, f=f: r[b] / r[f]) for b in base for f in final}
    return measure(calls, ratios, estimator, threads)


def table(
    deployed: dict[str, dict[str, Deployed]],
    timing,
    acc1: dict[str, dict[str, float]],
    reference_acc1: float,
    within: float = WITHIN,
) -> dict:
    """What results.json keeps: per target and side its ms, acc@1, check and runtime; per target
    the final network's speed-up over the baseline in the same target; and ``best``: the best
    dense and final targets and the speed-up between them (None where no dense target is within
    ``within`` points of ``reference_acc1``)."""
    targets = {}
    for t, sides in deployed.items():
        row = {side: {"ms": timing.ms[f"{side}@{t}"], "acc1": acc1[t][side], **d.info} for side, d in sides.items()}
        same = timing.ratios[_pair(f"baseline@{t}", f"final@{t}")]
        targets[t] = {**row, **same.record()}
    eligible = [t for t in targets if targets[t]["baseline"]["acc1"] >= reference_acc1 - within]
    best = None
    if eligible:
        dense = min(eligible, key=lambda t: targets[t]["baseline"]["ms"])
        final = min(targets, key=lambda t: targets[t]["final"]["ms"])
        ratio = timing.ratios[_pair(f"baseline@{dense}", f"final@{final}")]
        best = {
            "dense": dense,
            "final": final,
            "dense_ms": targets[dense]["baseline"]["ms"],
            "final_ms": targets[final]["final"]["ms"],
            "dense_acc1": targets[dense]["baseline"]["acc1"],
            "final_acc1": targets[final]["final"]["acc1"],
            "within": within,
            **ratio.record(),
        }
    return {"targets": targets, "best": best, **timing.record()}


def evaluate_all(deployed: dict[str, dict[str, Deployed]], loader, max_batches=None) -> dict[str, dict[str, float]]:
    """acc@1 of every deployed graph on ``loader`` (the validation split), where it runs."""
    return {
        t: {side: accuracy(d, loader, max_batches, desc=f"{side} acc@1 in {t}") for side, d in sides.items()}
        for t, sides in deployed.items()
    }
