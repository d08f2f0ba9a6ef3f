"""Report of the runs under directories, from their ``results.json`` files: report.md answers a
reader's questions (:mod:`lrx.report.reference`) above the table of every run; an acc@1 / speed-up
plot, a CSV; for runs deployed to targets, a table per run and an acc@1 / latency plot.
``python -m lrx.report results/runs`` writes the project's reference page, results/runs/report.md.

python -m lrx.report SWEEP_DIR [SWEEP_DIR ...] [--csv PATH] [--out DIR] [--plot PATH] [--deploy-plot PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrx.io import write_text
from lrx.report.plot import deploy_plot, plot
from lrx.report.reference import sections
from lrx.report.rows import ReportError, collect, deployment_markdown, table_markdown, write_csv
from lrx.results.files import DEPLOYED


def markdown(rows: list[dict], unfinished: list[tuple[Path, str]], dirs) -> str:
    """report.md: the questions' tables, the table of every run and what its columns mean, each
    deployed run's targets, and what was skipped."""
    sizes = ", ".join(map(str, sorted({r["batch_size"] for r in rows})))
    where = " ".join(map(str, dirs))
    text = (
        f"# lrx report\n\nRuns under: {', '.join(f'`{d}`' for d in dirs)}. Written by `python -m lrx.report {where}` "
        "from their results.json files (and the re-timings beside them): change the runs, not this page. "
        '"not recorded": a run made before lrx recorded it.\n\n'
        f"{sections(rows)}## Every run\n\n{table_markdown(rows)}\n"
        "acc@1: validation top-1 of the final model (after its last stage); test acc@1: the same on "
        "the test split; acc@1 after each stage: validation top-1 after filter reconstruction, the "
        'latency guard (where it put layers back), data reconstruction and fine-tuning; "reverted: '
        'lower" marks a fine-tuning that lowered it, whose weights were not kept (the final model is '
        "the one before it). "
        f"CPU/CUDA/ONNX Runtime time: one forward pass of the whole model on a batch of {sizes} (ONNX Runtime: "
        "the exported graph, where the run had deploy.onnx=true; its conv speed-up times each conv as its own graph); "
        "a baseline's is the median over the runs that measured it. "
        "Theoretical speed-up: baseline MACs / final MACs (whole model). "
        "Measured conv speed-up: summed latency of all convs, baseline / final, the median of paired "
        "rounds (lrx.measure.estimator); its IQR: their interquartile range, 'unstable' where the run's conv or "
        "model speed-up stayed wider than latency.estimator.rel_iqr (blank: runs that predate it). "
        "Model speed-up: whole-model latency, baseline / final. "
        "BN folded: both networks with every BatchNorm folded into the layer before it (latency.fold_bn=true; "
        "blank: not measured). "
        "Re-timed: the conv speed-up measured again by python -m lrx.retime (median and range over its rounds), "
        "where the run directory has a retime.json. "
        "Best dense deployment: the fastest target of the dense network whose acc@1 there stays within "
        "the margin it records (0.5 point) of its float32 PyTorch acc@1; best final deployment: the final network's "
        "fastest target; speed-up vs best dense: best dense ms / best final ms, timed again on their own (paired "
        "rounds in one runtime, each alone in two), with "
        f"its IQR (blank: not deployed to targets, from results.json or a {DEPLOYED} beside it). "
        "Solve time: filter reconstruction of the layers kept, summed (a planner's search not included).\n"
    )
    deployments = deployment_markdown(rows)
    if deployments:
        text += (
            "\n## Deployments\n\nBoth networks in every target, each target's pair timed in paired rounds; "
            "acc@1 measured in the target on the validation split.\n\n" + deployments
        )
    if unfinished:
        text += f"\nSkipped {len(unfinished)} unfinished:\n\n" + "".join(f"- `{p}`: {why}\n" for p, why in unfinished)
    return text


def _title(dirs: list[Path]) -> str:
    return f"lrx sweep: {dirs[0]}" if len(dirs) == 1 else f"lrx report: {len(dirs)} sweep and run directories"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrx.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        metavar="SWEEP_DIR",
        help="Hydra multirun or run directory, searched recursively for results.json",
    )
    parser.add_argument("--csv", type=Path, help="also write the per-stage summary here")
    parser.add_argument("--out", type=Path, help="where report.md and report.png go (default: the first SWEEP_DIR)")
    parser.add_argument("--plot", type=Path, help="write the plot here instead of OUT/report.png")
    parser.add_argument(
        "--deploy-plot",
        type=Path,
        help="write the deployment plot here instead of deploy.png beside the plot (only if a run was deployed)",
    )
    args = parser.parse_args(argv)
    try:
        rows, unfinished = collect(args.dirs)
    except ReportError as e:
        print(f"lrx.report: error: {e}", file=sys.stderr)
        return 1
    if unfinished:
        print(
            f"lrx.report: warning: skipped {len(unfinished)} unfinished: "
            + "; ".join(f"{p} ({why})" for p, why in unfinished),
            file=sys.stderr,
        )
    out = args.out or args.dirs[0]
    plot_path = args.plot or out / "report.png"
    written = [
        write_text(out / "report.md", markdown(rows, unfinished, args.dirs)),
        plot(rows, plot_path, title=_title(args.dirs)),
    ]
    deploy_png = deploy_plot(rows, args.deploy_plot or plot_path.parent / "deploy.png", title=_title(args.dirs))
    if deploy_png:
        written.append(deploy_png)
    if args.csv:
        written.append(write_csv(rows, args.csv))
    print(table_markdown(rows))
    print("wrote " + ", ".join(map(str, written)))
    return 0
