"""``retime.json`` beside a run: one section per kind, each with how it was measured.

- ``convs``: every conv and the whole network in PyTorch, baseline beside final
  (:mod:`lrx.retime.convs`), per torch setting; its ``conv_speedup`` / ``model_speedup`` (what the
  report shows) are the first setting's, quiet;
- ``network``: the whole network BatchNorm-folded and deployed to each target
  (:func:`lrx.run.serving_choice.probe`), per setting;
- ``serving``: per target timed in several settings, the recommended one
  (:func:`lrx.run.serving_choice.recommend`), kept for the targets not timed in several again;
- ``deploy``: the run's deploy stage again (:mod:`lrx.retime.deployment`: acc@1 in each target and
  the speed-up against the best dense deployment, results.json's ``deploy`` shape).

Each setting of ``convs`` and ``network`` is timed in its own fresh process, ``rounds`` times quiet
and next to ``busy`` neighbours, taking turns; ``deploy`` in one more. A section not timed again
is kept from the file already there.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from lrx.deploy.targets import Target
from lrx.io import write_json
from lrx.measure.latency import machine
from lrx.results.files import RETIMED
from lrx.retime import convs, deployment
from lrx.run.serving_choice import in_own_process, recommend
from lrx.runtime.serving import Serving

SECTIONS = ("convs", "network", "serving", "deploy")


def _how(args) -> dict:
    """What every section records of how it was timed."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "rounds": args.rounds,
        "busy": args.busy,
        "batch_size": args.batch_size,
        "estimator": args.estimator,
    }


def convs_section(run_dir: Path, results: dict, servings: list[Serving], args, advance) -> dict:
    """The ``convs`` section: :func:`lrx.retime.convs.time_convs` in each of ``servings``, each in its
    own process; ``advance(what)`` after each."""
    timed = []
    for serving in servings:
        timed.append({"serving": serving.as_dict(), **convs.in_own_process(run_dir, serving, args)})
        advance(f"convs, {serving.label}")
    first = timed[0]["quiet"]
    return {
        **_how(args),
        "bn_folded": args.fold_bn,
        "recorded": {kind: results["speedup"][kind].get("cpu") for kind in ("conv", "model")},
        "conv_speedup": first["conv_speedup"],
        "model_speedup": first["model_speedup"],
        "settings": timed,
    }


def network_section(run_dir: Path, servings: dict[Target, list[Serving]], args, advance) -> dict:
    """The ``network`` section: :func:`lrx.run.serving_choice.probe` for each target in each of its
    ``servings``, each in its own process; ``advance(what)`` after each."""
    targets = {}
    for target, settings in servings.items():
        timed = []
        for serving in settings:
            timed.append({"serving": serving.as_dict(), **in_own_process(run_dir, target, serving, args)})
            advance(f"{target.name}, {serving.label}")
        targets[target.name] = {"settings": timed}
    calibrated = any(t.precision == "int8" for t in servings)
    return {
        **_how(args),
        "bn_folded": True,
        "calibration_images": args.calibration_images if calibrated else None,
        "targets": targets,
    }


def serving_section(network: dict) -> dict:
    """The ``serving`` section: for each target of the ``network`` section timed in several
    settings, the recommended one and the day it was chosen; {} where none was."""
    return {
        name: {"date": network["date"], **recommend(t["settings"])}
        for name, t in network["targets"].items()
        if len(t["settings"]) > 1
    }


def deploy_section(run_dir: Path, targets: list[Target], threads: int, args, advance) -> dict:
    """The ``deploy`` section: :func:`lrx.retime.deployment.deploy_run` in its own process at
    ``threads``; ``advance(what)`` after it."""
    deployed = deployment.in_own_process(run_dir, targets, threads, args)
    advance("deployed")
    return {**deployed, "estimator": args.estimator}


def write(run_dir: Path, sections: dict) -> Path:
    """``sections`` into ``run_dir/retime.json`` (atomically), beside the sections of the file already
    there that were not timed again, and its ``serving`` targets not chosen again (a file from
    before the sections is replaced)."""
    path = Path(run_dir) / RETIMED
    old = json.loads(path.read_text()) if path.is_file() else {}
    kept = {k: v for k, v in old.items() if k in SECTIONS}
    if "serving" in sections:
        sections = {**sections, "serving": {**kept.get("serving", {}), **sections["serving"]}}
    return write_json(path, {**kept, **sections})
