"""``python -m lrx.retime``: re-time finished runs (:mod:`lrx.retime`). Every flag is checked, and
every run loaded, before any timing; a bad one is one line naming the flag, the bad value and the
valid ones. Run it on a machine doing nothing else: the busy neighbours must be the only other work.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from lrx.deploy.compare import available_targets
from lrx.deploy.targets import TARGETS, Target, TargetError, servable
from lrx.measure.estimator import FIELDS, Estimator
from lrx.measure.latency import decide_point, machine
from lrx.measure.load import cores
from lrx.results.files import MODEL, RESULTS, recommended_serving
from lrx.results.saved import load_models
from lrx.retime import sections
from lrx.retime.settings import ALL, settings, thread_counts, wait_policies
from lrx.retime.tables import text
from lrx.runtime.calibration import CALIBRATION_IMAGES
from lrx.runtime.serving import Serving

NONE = "none"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lrx.retime",
        description="Re-time finished runs: every conv and the whole network in PyTorch, and the whole network in "
        "any targets, quiet and next to busy neighbours, each setting in its own process; into RUN_DIR/retime.json.",
    )
    ap.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="finished runs (results.json, model.pt)")
    ap.add_argument(
        "--targets",
        nargs="+",
        default=None,
        help=f"where to time the whole network: of {', '.join(TARGETS)}; {ALL} (every target served here) or "
        f"{NONE}; default: the targets the run deployed to",
    )
    ap.add_argument(
        "--convs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time every conv and the whole network in PyTorch (default: yes)",
    )
    ap.add_argument(
        "--deploy",
        action="store_true",
        help="also the run's deploy stage again in the targets: acc@1 there and the speed-up against the best dense "
        "deployment, at the run's thread count",
    )
    ap.add_argument("--rounds", type=int, default=3, help="timings of each setting, quiet and busy (default 3)")
    ap.add_argument(
        "--busy", type=int, default=1, help="neighbour processes each keeping a core busy (default 1; 0: quiet only)"
    )
    ap.add_argument(
        "--threads", nargs="+", default=None, help=f"thread counts, or {ALL}; default: the recommended, else the run's"
    )
    ap.add_argument(
        "--wait",
        nargs="+",
        default=[],
        metavar="RUNTIME=WAIT",
        help=f"wait policies, e.g. torch=passive openvino=unpinned, or {ALL}; default: the recommended, else the "
        "runtime's own",
    )
    ap.add_argument("--batch-size", type=int, default=None, help="default: the run's (latency.decide_at)")
    ap.add_argument(
        "--estimator",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"the run's latency.estimator, changed, e.g. max_s=2; keys: {', '.join(FIELDS)}",
    )
    ap.add_argument(
        "--quiet-wait", type=float, default=None, help="seconds to wait for a quiet machine; default: the run's"
    )
    ap.add_argument("--fold-bn", action="store_true", help="fold both networks' BatchNorms before timing the convs")
    ap.add_argument(
        "--calibration-images", type=int, default=CALIBRATION_IMAGES, help="training images int8 calibrates on"
    )
    ap.add_argument(
        "--data-root",
        help="where the runs' dataset is, if not where they read it (int8 calibration, --deploy's acc@1)",
    )
    return ap


def estimator_changes(items: list[str]) -> dict:
    """``--estimator``: ``{field: value}``; a ValueError naming the flag, the bad item and the keys."""
    defaults, out = Estimator().as_dict(), {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or key not in FIELDS:
                raise ValueError
            out[key] = type(defaults[key])(value)
        except ValueError:
            raise ValueError(
                f"--estimator {item} is invalid; valid: KEY=VALUE, KEY one of {', '.join(FIELDS)}, VALUE a number"
            ) from None
    return out


def chosen_targets(names: list[str] | None, results: dict) -> list[Target]:
    """``--targets``: those named, each served here; every target served here for ``all``; none
    for ``none``; by default the run's deployment targets served here (else every one)."""
    if names == [NONE]:
        return []
    if names == [ALL]:
        return available_targets("--targets")
    if names:
        for name in names:
            if name not in TARGETS:
                raise TargetError(f"--targets {name} is unknown; valid: {', '.join(TARGETS)}, {ALL} or {NONE}")
        return servable(names, "--targets")
    deployed = (results.get("deploy") or {}).get("targets") or {}
    here = available_targets("--targets")
    return [t for t in here if t.name in deployed] or here


@dataclass
class Plan:
    """What to time for one run."""

    run_dir: Path
    results: dict
    job: SimpleNamespace  # the timing processes' args
    convs: list[Serving]  # the torch settings of the convs
    network: dict[Target, list[Serving]]  # each target's settings
    threads: int  # the run's thread count (latency.decide_at), the deploy stage's

    @property
    def processes(self) -> int:
        return len(self.convs) + sum(map(len, self.network.values()))


def checked(args) -> list[Plan]:
    """Every flag and run checked, before any work: a :class:`Plan` per run."""
    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds} is invalid; valid: an integer >= 1")
    if not 0 <= args.busy < cores():
        raise ValueError(f"--busy {args.busy} is invalid; valid: 0 to {cores() - 1} (fewer than the {cores()} cores)")
    for flag, value in (("--batch-size", args.batch_size), ("--calibration-images", args.calibration_images)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value} is invalid; valid: an integer >= 1")
    if args.quiet_wait is not None and args.quiet_wait < 0:
        raise ValueError(f"--quiet-wait {args.quiet_wait} is invalid; valid: seconds >= 0")
    threads, waits, changes = thread_counts(args.threads), wait_policies(args.wait), estimator_changes(args.estimator)
    plans = []
    for run_dir in args.run_dirs:
        if not (run_dir / RESULTS).is_file():
            what = "has no" if run_dir.is_dir() else "is not a directory with a"
            valid = f"a finished run's directory ({RESULTS}, {MODEL})"
            raise ValueError(f"RUN_DIR {run_dir} {what} {RESULTS}; valid: {valid}")
        try:
            _, _, results = load_models(run_dir)
        except ValueError as e:
            raise ValueError(f"RUN_DIR {e}") from None
        targets = chosen_targets(args.targets, results)
        if not targets and not args.convs:
            raise ValueError(f"--targets {NONE} with --no-convs leaves nothing to time")
        if not targets and args.deploy:
            raise ValueError(f"--targets {NONE} with --deploy leaves nowhere to deploy to")
        lat, recommended = results["config"]["latency"], recommended_serving(run_dir)
        batch_size, run_threads = decide_point(lat)
        job = SimpleNamespace(
            rounds=args.rounds,
            busy=args.busy,
            batch_size=args.batch_size or batch_size,
            estimator={**Estimator.of(lat.get("estimator")).as_dict(), **changes},
            quiet_wait_s=lat.get("quiet_wait_s", 60.0) if args.quiet_wait is None else args.quiet_wait,
            fold_bn=args.fold_bn,
            calibration_images=args.calibration_images,
            data_root=args.data_root,
        )
        convs = settings("torch", recommended.get("torch-fp32"), run_threads, threads, waits) if args.convs else []
        network = {t: settings(t.runtime, recommended.get(t.name), run_threads, threads, waits) for t in targets}
        plans.append(Plan(run_dir, results, job, convs, network, run_threads))
    return plans


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    try:
        plans = checked(args)
    except ValueError as e:  # TargetError too
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    with tqdm(total=sum(p.processes + args.deploy for p in plans), desc="re-timing", unit="process") as bar:

        def advance(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update()

        for p in plans:
            bar.set_description(f"re-timing {p.run_dir.name}")
            timed = {}
            if p.convs:
                timed["convs"] = sections.convs_section(p.run_dir, p.results, p.convs, p.job, advance)
            if p.network:
                timed["network"] = sections.network_section(p.run_dir, p.network, p.job, advance)
                timed["serving"] = sections.serving_section(timed["network"])
            if args.deploy:
                timed["deploy"] = sections.deploy_section(p.run_dir, list(p.network), p.threads, p.job, advance)
            path = sections.write(p.run_dir, timed)
            tqdm.write(f"{p.run_dir}: {machine()}\n{text(timed)}\nwritten to {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
