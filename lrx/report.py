"""Sweep report from ``results.json`` files: a markdown table, an acc@1 / speed-up plot, a CSV.

    python -m lrx.report SWEEP_DIR [SWEEP_DIR ...] [--csv PATH] [--out DIR] [--plot PATH]

Every ``results.json`` under the given directories (searched recursively) whose ``status`` is
``complete`` is a finished run. Anything else (no status, bad JSON, a temporary file, a Hydra
run directory without ``results.json``) is listed as unfinished and skipped. Rows: each
distinct baseline (model, accuracies, size) once, then the decomposed runs on it, sorted by
measured CPU conv speed-up; a run that replaced no layer only contributes its baseline.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from io import BytesIO, StringIO
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lrx.fold import FOLDED
from lrx.io import write_bytes, write_text
from lrx.lowrank import METHODS, method_class
from lrx.onnx_graphs import RUNTIME

RESULTS = "results.json"  # what lrx.pipeline writes (this module must not import the training stack)
CPU_FOLDED = f"cpu{FOLDED}"  # both networks timed with their BatchNorms folded
RETIMED = "retime.json"  # beside it, from scripts/retime.py: the run's networks timed again, several rounds

COLUMNS = {  # markdown header -> row key
    "model": "model",
    "data": "dataset",
    "method": "method",
    "lambda": "lambda",
    "layers": "layers",
    "#bases": "bases",
    "MACs(M)": "macs_m",
    "params(M)": "params_m",
    "CPU time(ms)": "cpu_ms",
    "CUDA time(ms)": "cuda_ms",
    "acc@1(%)": "acc1",
    "test acc@1(%)": "acc1_test",
    "acc@1 after each stage(%)": "stages_text",
    "theoretical speed-up (MAC ratio)": "macs_speedup",
    "measured conv speed-up (CPU)": "conv_speedup_cpu",
    "its IQR (CPU)": "conv_iqr_cpu",
    "model speed-up (CPU)": "model_speedup_cpu",
    "conv speed-up (CPU, BN folded)": "conv_speedup_folded",
    "model speed-up (CPU, BN folded)": "model_speedup_folded",
    "ONNX Runtime time(ms)": "ort_ms",
    "conv speed-up (ONNX Runtime)": "conv_speedup_ort",
    "model speed-up (ONNX Runtime)": "model_speedup_ort",
    "conv speed-up re-timed (CPU, median [range])": "retimed",
    "solve time(s)": "solve_s",
}
CSV_COLUMNS = {  # CSV header -> row key
    "model": "model",
    "dataset": "dataset",
    "method": "method",
    "layers": "layers",
    "bases": "bases",
    "lambda_schedule": "lambda",
    "stage": "stage",
    "acc1": "acc1",
    "baseline_acc1": "baseline_acc1",
    "macs_m": "macs_m",
    "params_m": "params_m",
    "cpu_ms": "cpu_ms",
    "cuda_ms": "cuda_ms",
    "macs_speedup": "macs_speedup",
    "measured_speedup_cpu": "conv_speedup_cpu",
    "measured_speedup_cpu_iqr": "conv_iqr_cpu",
    "model_speedup_cpu": "model_speedup_cpu",
    "conv_speedup_cpu_bn_folded": "conv_speedup_folded",
    "model_speedup_cpu_bn_folded": "model_speedup_folded",
    "ort_ms": "ort_ms",
    "conv_speedup_ort": "conv_speedup_ort",
    "model_speedup_ort": "model_speedup_ort",
}
DIGITS = {"params_m": 3}  # decimals in the table; 2 for every other number


class ReportError(Exception):
    """Nothing to report: a directory is missing, or no finished result was found."""


def find(dirs) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """Finished ``(path, results)`` and unfinished ``(path, reason)`` under ``dirs``."""
    finished, unfinished, seen = [], [], set()
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ReportError(f"{d}: no such directory")
        for path in sorted(d.rglob(f"*{RESULTS}*")):
            if path.resolve() in seen or not path.is_file():
                continue
            seen.add(path.resolve())
            if path.name != RESULTS:
                if "tmp" in path.name:
                    unfinished.append((path, "temporary file"))
                continue
            results, reason = read_finished(path)
            if results is None:
                unfinished.append((path, reason))
            else:
                finished.append((path, results))
        for hydra in sorted(d.rglob(".hydra")):  # a Hydra run that has written nothing yet
            run = hydra.parent
            if (
                run.resolve() not in seen
                and not (run / RESULTS).exists()
                and not any(p.parent == run for p, _ in unfinished)
            ):
                seen.add(run.resolve())
                unfinished.append((run, f"no {RESULTS}"))
    return finished, unfinished


def read_finished(path: Path) -> tuple[dict | None, str]:
    """``(results, "")`` if ``path`` is a complete results file, else ``(None, why not)``: the one
    definition of "finished" that re-runs (lrx.train) and reports share."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, "unparsable JSON"
    if not isinstance(results, dict) or "status" not in results:
        return None, "status missing"
    if results["status"] != "complete":
        return None, f"status {results['status']!r}"
    return results, ""


def collect(dirs) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Table rows (each baseline, then its runs by measured CPU conv speed-up) and the unfinished
    ``(path, reason)``. Raises :class:`ReportError` when there is nothing to report."""
    finished, unfinished = find(dirs)
    groups: dict[tuple, tuple[list[dict], list[dict]]] = {}  # baseline key -> (its measures per run, job rows)
    for path, res in finished:
        try:
            b = res["baseline"]
            key = (res["model"], dataset_of(res), b["acc1"], b["acc1_test"], b["macs"], b["params"])
            base = {**_measures(b), "batch_size": _batch_size(res)}
            job = {**_job_row(res, key), "retimed": _retimed(path.parent / RETIMED)} if res["layers"] else None
        except (KeyError, TypeError, ValueError) as e:
            unfinished.append((path, f"malformed: {e!r}"))
            continue
        bases, jobs = groups.setdefault(key, ([], []))
        bases.append(base)
        if job:
            jobs.append(job)
    if not groups:
        raise ReportError(f"no finished {RESULTS} under {', '.join(map(str, dirs))} ({len(unfinished)} unfinished)")
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], -k[2])):
        bases, jobs = groups[key]
        rows.append(_baseline_row(bases, key))
        rows.extend(sorted(jobs, key=lambda r: r["conv_speedup_cpu"]))
    return rows, unfinished


def _retimed(path: Path) -> str | None:
    """``2.70 [2.61-2.78]``: the median and range of the conv speed-ups in ``retime.json``, if any."""
    if not path.is_file():
        return None
    conv = json.loads(path.read_text())["conv_speedup"]
    return f"{conv['median']:.2f} [{conv['min']:.2f}-{conv['max']:.2f}]"


def _measures(part: dict) -> dict:
    """Size, latency and acc@1 of ``results['baseline']`` or ``results['final']``."""
    lat = part["latency_ms"]
    return {
        "macs_m": part["macs"] / 1e6,
        "params_m": part["params"] / 1e6,
        "cpu_ms": lat["cpu"],
        "cuda_ms": lat.get("cuda"),
        "ort_ms": lat.get(RUNTIME),
        "acc1": part["acc1"],
        "acc1_test": part["acc1_test"],
    }


def _batch_size(res: dict) -> int:
    lat = res["config"]["latency"]
    return max(lat.get("batch_sizes") or [lat["batch_size"]])


def _baseline_row(bases: list[dict], key: tuple) -> dict:
    """The baseline ``key`` from its :func:`_measures` in each run; latency: the median over them."""
    cuda = [b["cuda_ms"] for b in bases if b["cuda_ms"] is not None]
    ort = [b["ort_ms"] for b in bases if b["ort_ms"] is not None]
    return {
        "kind": "baseline",
        "group": key,
        "model": key[0],
        "dataset": key[1],
        "method": "baseline",
        "family": "baseline",
        "label": "baseline",
        "lambda": None,
        "layers": None,
        "bases": None,
        **bases[0],
        "cpu_ms": statistics.median(b["cpu_ms"] for b in bases),
        "cuda_ms": statistics.median(cuda) if cuda else None,
        "ort_ms": statistics.median(ort) if ort else None,
        "baseline_acc1": bases[0]["acc1"],
        "macs_speedup": 1.0,
        "conv_speedup_cpu": 1.0,
        "conv_iqr_cpu": None,
        "model_speedup_cpu": 1.0,
        "conv_speedup_folded": None,
        "model_speedup_folded": None,
        "conv_speedup_ort": 1.0 if ort else None,
        "model_speedup_ort": 1.0 if ort else None,
        "stages": {},
        "stages_text": None,
        "retimed": None,
        "solve_s": None,
    }


def dataset_of(res: dict) -> str:
    """The run's dataset (runs made before lrx recorded it were all CIFAR-10)."""
    return res.get("dataset", "cifar10")


def method_of(record: dict) -> str:
    """A layer record's method name (records made before the registry named it ``scheme``: 1, 2, ...)."""
    return method_class(record.get("method", record.get("scheme"))).method


def _job_row(res: dict, key: tuple) -> dict:
    """One decomposed run: its final model, with the accuracy after each stage."""
    speedup, plan = res["speedup"], res.get("plan")
    kept = [r for r in res["layers"] if r.get("kept", True)]  # the guard may have put some back
    methods = sorted(set(map(method_of, kept)), key=list(METHODS).index)
    bases = _bases_text(kept, mixed=len(methods) > 1)
    if plan:
        target = f"{plan['target_speedup']:g}x"
        used = "+".join(map(method_label, methods)) or "-"
        in_macs = "" if plan["metric"] == "latency" else " MACs"  # a plan's target: measured, or in MACs
        method, label = f"planner {target} {plan['metric']} ({used})", f"plan {target}{in_macs} {used}"
    else:
        method = method_label(methods[0]) if methods else "-"
        label = f"{method} {bases_text(methods[0], bases)}" if bases else method
    return {
        "kind": "job",
        "group": key,
        "model": res["model"],
        "dataset": dataset_of(res),
        "method": method,
        "family": "+".join(map(method_label, methods)) or "all put back",  # the plot's colour
        "label": label,
        "lambda": lambda_text(next((r["lambda"] for r in kept if r.get("lambda")), None)),
        "layers": _layers_text([r["name"] for r in kept]),
        "bases": bases,
        **_measures(res["final"]),
        "baseline_acc1": res["baseline"]["acc1"],
        "macs_speedup": speedup["macs"],
        "conv_speedup_cpu": speedup["conv"]["cpu"],
        "conv_iqr_cpu": _iqr_text(speedup, "cpu"),
        "model_speedup_cpu": speedup["model"]["cpu"],
        "conv_speedup_folded": speedup["conv"].get(CPU_FOLDED),
        "model_speedup_folded": speedup["model"].get(CPU_FOLDED),
        "conv_speedup_ort": speedup["conv"].get(RUNTIME),
        "model_speedup_ort": speedup["model"].get(RUNTIME),
        "stages": {name: s["acc1"] for name, s in res["stages"].items()},
        "batch_size": _batch_size(res),
        "stages_text": " → ".join(f"{name} {s['acc1']:.2f}" for name, s in res["stages"].items())
        + (" (reverted: lower)" if res.get("finetune_reverted") else ""),
        "solve_s": sum(r["solve_time_s"] for r in kept),  # filter reconstruction of the layers kept
    }


def _iqr_text(speedup: dict, where: str) -> str | None:
    """``2.60-2.70``, the conv speed-up's interquartile range, ``unstable`` appended where the run
    flagged its conv or model speed-up so; None for runs made before lrx recorded it."""
    iqr = speedup.get("conv_iqr", {}).get(where)
    if iqr is None:
        return None
    return f"{iqr[0]:.2f}-{iqr[1]:.2f}" + (" unstable" if speedup["unstable"][where] else "")


def method_label(method) -> str:
    """The method's short label (``s1``, ``s2``, ``tucker2``, ``cp``, ``csvd``)."""
    return method_class(method).label


def bases_letter(method) -> str:
    """What the method calls its bases: M (Scheme 1), K (Scheme 2, channel SVD), R (ranks)."""
    return method_class(method).letter


def rank_text(bases) -> str:
    """``8``, or a Tucker-2 pair as ``64x32``."""
    return "x".join(map(str, bases)) if isinstance(bases, (list, tuple)) else str(bases)


def bases_text(method, bases) -> str:
    """``M8``, ``K32``, ``R64x32``."""
    return bases_letter(method) + rank_text(bases)


def lambda_text(lam: dict | None) -> str | None:
    """Scheme 1's lambda (a layer record's ``lambda``): ``0.01`` when fixed, ``asc 0.001→1`` when
    ascending; None without one."""
    if not lam:
        return None
    if lam["schedule"] == "fixed":
        return f"{lam['start']:g}"
    return f"{'asc' if lam['schedule'] == 'ascending' else lam['schedule']} {lam['start']:g}→{lam['end']:g}"


def _layers_text(names: list[str]) -> str | None:
    """``conv2-conv5`` for consecutively numbered names, ``conv2,conv4`` otherwise."""
    runs: list[list[str]] = []
    for name in names:
        if runs and _successor(runs[-1][-1]) == name:
            runs[-1].append(name)
        else:
            runs.append([name])
    return ",".join(r[0] if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) or None


def _successor(name: str) -> str | None:
    m = re.fullmatch(r"(.*?)(\d+)", name)
    return f"{m[1]}{int(m[2]) + 1}" if m else None


def _bases_text(kept: list[dict], mixed: bool) -> str | None:
    """``8`` when every layer has 8 bases, ``15/76/48/46`` per layer; with both schemes ``M2/K26``."""
    if mixed:
        return "/".join(bases_text(method_of(r), r["bases"]) for r in kept)
    values = [rank_text(r["bases"]) for r in kept]
    return (values[0] if len(set(values)) == 1 else "/".join(values)) if values else None


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    return f"{value:.{DIGITS.get(key, 2)}f}" if isinstance(value, float) else str(value)


def table_markdown(rows: list[dict]) -> str:
    """The markdown table of ``rows``, numbers right-aligned, "-" where a value does not apply."""
    numeric = {k for k in COLUMNS.values() if any(isinstance(r[k], float) for r in rows)}
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if k in numeric else "---" for k in COLUMNS.values()) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(k, r[k]) for k in COLUMNS.values()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_rows(rows: list[dict]) -> list[dict]:
    """One CSV row per baseline (stage ``baseline``) and per (run, stage); the acc1 is the stage's,
    every other number the final model's."""
    out = []
    for r in rows:
        for stage, acc1 in r["stages"].items() if r["kind"] == "job" else [("baseline", r["acc1"])]:
            row = {**r, "stage": stage, "acc1": acc1}
            out.append({col: "" if row[k] is None else row[k] for col, k in CSV_COLUMNS.items()})
    return out


def write_csv(rows: list[dict], path) -> Path:
    """Write :func:`csv_rows` to ``path`` atomically."""
    buf = StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(rows))
    return write_text(path, buf.getvalue())


def pareto(rows: list[dict]) -> list[dict]:
    """The rows that no faster-or-as-fast row beats on acc@1, by increasing conv speed-up."""
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (-r["conv_speedup_cpu"], -r["acc1"])):
        if r["acc1"] > best:
            front.append(r)
            best = r["acc1"]
    return front[::-1]


MARKERS = "osD^vP*X"  # one per baseline (model, data, baseline acc@1)


def figure(rows: list[dict], title: str = "lrx report") -> Figure:
    """acc@1 against measured CPU conv speed-up: one colour per method (``+``-joined where a run
    mixes methods), one marker per baseline (those without runs left out when others have some),
    each baseline's Pareto front as a step line (best acc@1 at this speed-up or more); only the
    points on a front are labelled, so the labels do not crowd."""
    fig = Figure(figsize=(10, 6.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    groups = {k: pts for k, pts in groups.items() if len(pts) > 1} or groups  # baselines with runs on them
    families = list(dict.fromkeys(r["family"] for pts in groups.values() for r in pts))
    colors = {"baseline": "black", **{f: f"C{i}" for i, f in enumerate(x for x in families if x != "baseline")}}
    for family in families:  # the colour legend
        ax.scatter([], [], color=colors[family], marker="o", s=30, label=family)
    for i, (key, pts) in enumerate(groups.items()):
        marker = MARKERS[i % len(MARKERS)]
        for family in families:
            mine = [r for r in pts if r["family"] == family]
            ax.scatter(
                [r["conv_speedup_cpu"] for r in mine],
                [r["acc1"] for r in mine],
                color=colors[family],
                marker=marker,
                s=30,
                zorder=3,
            )
        front = pareto(pts)
        fx, fy = [r["conv_speedup_cpu"] for r in front], [r["acc1"] for r in front]
        ax.step(fx, fy, where="pre", color="grey", lw=1.2, alpha=0.7, marker=marker, markersize=0, zorder=2)
        ax.scatter(
            fx, fy, s=110, facecolors="none", edgecolors="grey", marker=marker, lw=1.2, zorder=3,
            label=f"Pareto front, {key[0]} on {key[1]} (baseline {key[2]:.2f}%)",
        )  # fmt: skip
        for j, r in enumerate(front):
            ax.annotate(
                r["label"],
                (r["conv_speedup_cpu"], r["acc1"]),
                xytext=(7, 6 if j % 2 == 0 else -14),
                textcoords="offset points",
                fontsize=9,
                color=colors[r["family"]],
            )
    ax.set_xlabel("measured conv speed-up on CPU (×)", fontsize=11)
    ax.set_ylabel("acc@1 (%)", fontsize=11)
    ax.set_title(title, fontsize=12)
    ax.margins(x=0.12, y=0.08)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    return fig


def plot(rows: list[dict], path, title: str = "lrx report") -> Path:
    """:func:`figure`, written as a PNG atomically."""
    buf = BytesIO()
    figure(rows, title).savefig(buf, format="png")
    return write_bytes(path, buf.getvalue())


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
        "rounds (lrx.estimator); its IQR: their interquartile range, 'unstable' where the run's conv or "
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


if __name__ == "__main__":
    sys.exit(main())
