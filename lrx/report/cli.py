"""Sweep report from ``results.json`` files: a markdown table, an acc@1 / speed-up plot, a CSV.

python -m lrx.report SWEEP_DIR [SWEEP_DIR ...] [--csv PATH] [--out DIR] [--plot PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrx.io import write_text
from lrx.report.plot import plot
from lrx.report.rows import ReportError, collect, table_markdown, write_csv


def markdown(rows: list[dict], unfinished: list[tuple[Path, str]], dirs) -> str:
    """report.md: the table, what its columns mean, and what was skipped."""
    sizes = ", ".join(map(str, sorted({r["batch_size"] for r in rows})))
    text = (
        f"# lrx report\n\nRuns under: {', '.join(f'`{d}`' for d in dirs)}\n\n{table_markdown(rows)}\n"
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
        "Re-timed: the conv speed-up measured again by scripts/retime.py (median and range over its rounds), "
        "where the run directory has a retime.json. "
        "Solve time: filter reconstruction of the layers kept, summed (a planner's search not included).\n"
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
    written = [
        write_text(out / "report.md", markdown(rows, unfinished, args.dirs)),
        plot(rows, args.plot or out / "report.png", title=_title(args.dirs)),
    ]
    if args.csv:
        written.append(write_csv(rows, args.csv))
    print(table_markdown(rows))
    print("wrote " + ", ".join(map(str, written)))
    return 0
