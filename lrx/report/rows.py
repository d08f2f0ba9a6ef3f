"""Report rows from ``results.json`` files: each distinct baseline (model, accuracies, size) once,
then the decomposed runs on it, sorted by measured CPU conv speed-up; a run that replaced no
layer only contributes its baseline. A markdown table and a per-stage CSV of them.

Every ``results.json`` under the given directories (searched recursively) whose ``status`` is
``complete`` is a finished run. Anything else (no status, bad JSON, a temporary file, a Hydra
run directory without ``results.json``) is listed as unfinished and skipped.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from io import StringIO
from pathlib import Path

from lrx.io import write_text
from lrx.report import provenance
from lrx.results.files import DEPLOYED, FOLDED, ORT, RESULTS, RETIMED, read_finished
from lrx.results.text import bases_text, lambda_text, rank_text

CPU_FOLDED = f"cpu{FOLDED}"  # both networks timed with their BatchNorms folded

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
    "best dense deployment (ms)": "best_dense_text",
    "best final deployment (ms)": "best_final_text",
    "speed-up vs best dense": "vs_best_dense",
    "its IQR (vs best dense)": "vs_best_dense_iqr",
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
    "best_dense": "best_dense",
    "best_dense_ms": "best_dense_ms",
    "best_dense_acc1": "best_dense_acc1",
    "best_final": "best_final",
    "best_final_ms": "best_final_ms",
    "best_final_acc1": "best_final_acc1",
    "speedup_vs_best_dense": "vs_best_dense",
    "speedup_vs_best_dense_iqr": "vs_best_dense_iqr",
}
HEADLINE = [  # the row keys of the deployment headline (results["deploy"]["best"])
    "best_dense",
    "best_dense_ms",
    "best_dense_acc1",
    "best_dense_text",
    "best_final",
    "best_final_ms",
    "best_final_acc1",
    "best_final_text",
    "vs_best_dense",
    "vs_best_dense_iqr",
]
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
            job = None
            if res["layers"]:
                retimed = _retime_file(path.parent)
                deploy, where = _deployment(res, path.parent, retimed), provenance.of_run(res, path.parent)
                extra = {
                    "run": path.parent,
                    "retimed": _retimed(retimed),
                    "deploy": deploy,
                    "where": where,
                    "deploy_where": deploy and _deployed_where(deploy, res, where),
                }
                job = {**_job_row(res, key), **extra, **_headline(deploy)}
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


def _retime_file(run_dir: Path) -> dict:
    """The run's ``retime.json`` (python -m lrx.retime), ``{}`` where it has none."""
    path = run_dir / RETIMED
    return json.loads(path.read_text()) if path.is_file() else {}


def _retimed(retimed: dict) -> str | None:
    """``2.70 [2.61-2.78]``: the median and range of the re-timed conv speed-ups in ``retime.json``
    (its ``convs`` section; the top level of a file from before the sections), if any."""
    conv = retimed.get("convs", retimed).get("conv_speedup")
    return None if conv is None else f"{conv['median']:.2f} [{conv['min']:.2f}-{conv['max']:.2f}]"


def _deployment(res: dict, run_dir: Path, retimed: dict) -> dict | None:
    """The run's deployment to every target: ``results["deploy"]`` where it has ``targets``, else
    the ``deploy`` section of ``retime.json`` beside results.json (python -m lrx.retime --deploy),
    else ``deploy_targets.json`` (older runs); None where none has any."""
    deploy = res.get("deploy")
    if not (isinstance(deploy, dict) and deploy.get("targets")):
        deploy, older = retimed.get("deploy"), run_dir / DEPLOYED
        if not deploy and older.is_file():
            deploy = json.loads(older.read_text())
    return deploy if isinstance(deploy, dict) and deploy.get("targets") else None


def _deployed_where(deploy: dict, res: dict, where: dict) -> dict:
    """The deployment's :func:`provenance.of_deployment`: the run's command where the run deployed
    itself, not recorded for the file beside an older run (made later, by another command)."""
    own = deploy is res.get("deploy")
    return provenance.of_deployment(deploy, where["command"] if own else provenance.NOT_RECORDED)


def _headline(deploy: dict | None) -> dict:
    """The :data:`HEADLINE` keys from the deployment's ``best``: all None where there is none."""
    best = (deploy or {}).get("best")
    if not best:
        return dict.fromkeys(HEADLINE)
    return {
        "best_dense": best["dense"],
        "best_dense_ms": best["dense_ms"],
        "best_dense_acc1": best["dense_acc1"],
        "best_dense_text": f"{best['dense']} {best['dense_ms']:.2f}",
        "best_final": best["final"],
        "best_final_ms": best["final_ms"],
        "best_final_acc1": best["final_acc1"],
        "best_final_text": f"{best['final']} {best['final_ms']:.2f}",
        "vs_best_dense": best["speedup"],
        "vs_best_dense_iqr": _spread(best.get("speedup_iqr"), best.get("unstable")),
    }


def _measures(part: dict) -> dict:
    """Size, latency and acc@1 of ``results['baseline']`` or ``results['final']``."""
    lat = part["latency_ms"]
    return {
        "macs_m": part["macs"] / 1e6,
        "params_m": part["params"] / 1e6,
        "cpu_ms": lat["cpu"],
        "cuda_ms": lat.get("cuda"),
        "ort_ms": lat.get(ORT),
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
        "run": None,
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
        "plan": None,
        "stages_text": None,
        "retimed": None,
        "solve_s": None,
        "deploy": None,
        "where": None,
        "deploy_where": None,
        **dict.fromkeys(HEADLINE),
    }


def dataset_of(res: dict) -> str:
    """The run's dataset (runs made before lrx recorded it were all CIFAR-10)."""
    return res.get("dataset", "cifar10")


def _job_row(res: dict, key: tuple) -> dict:
    """One decomposed run: its final model, with the accuracy after each stage."""
    speedup, plan = res["speedup"], res.get("plan")
    kept = [r for r in res["layers"] if r.get("kept", True)]  # the guard may have put some back
    labels = list(dict.fromkeys(r["label"] for r in kept))  # the methods' labels, in layer order
    bases = _bases_text(kept, mixed=len(labels) > 1)
    if plan:
        target = f"{plan['target_speedup']:g}x"
        used = "+".join(labels) or "-"
        in_macs = "" if plan["metric"] == "latency" else " MACs"  # a plan's target: measured, or in MACs
        method, label = f"planner {target} {plan['metric']} ({used})", f"plan {target}{in_macs} {used}"
    else:
        method = labels[0] if labels else "-"
        label = f"{method} {kept[0]['letter']}{bases}" if bases else method
    return {
        "kind": "job",
        "group": key,
        "model": res["model"],
        "dataset": dataset_of(res),
        "method": method,
        "family": "+".join(labels) or "all put back",  # the plot's colour
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
        "conv_speedup_ort": speedup["conv"].get(ORT),
        "model_speedup_ort": speedup["model"].get(ORT),
        "stages": {name: s["acc1"] for name, s in res["stages"].items()},
        "plan": plan,
        "allowed": "+".join(map(str, res["config"].get("planner", {}).get("methods", []))) if plan else None,
        "epochs": _epochs(res),
        "choices": _choices(res["layers"]),
        "batch_size": _batch_size(res),
        "stages_text": " → ".join(f"{name} {s['acc1']:.2f}" for name, s in res["stages"].items())
        + (" (reverted: lower)" if res.get("finetune_reverted") else ""),
        # filter reconstruction of the layers kept (the first pruning runs recorded no time for their prunings)
        "solve_s": sum(r.get("solve_time_s", 0.0) for r in kept),
    }


def _choices(layers: list[dict]) -> str:
    """``conv1 prune N32, conv2 s2 K40``: what each replaced conv became (``dense`` if put back)."""

    def became(r: dict) -> str:
        return f"{r['label']} {r['letter']}{rank_text(r['bases'])}" if r.get("kept", True) else "dense"

    return ", ".join(f"{r['name']} {became(r)}" for r in layers)


def _epochs(res: dict) -> str:
    """The fine-tuning budget: ``8 kd`` (epochs and loss), ``none`` without fine-tuning."""
    ft = res["config"].get("finetune") or {}
    return f"{ft['epochs']} {ft.get('loss', 'ce')}" if ft.get("epochs") else "none"


def _iqr_text(speedup: dict, where: str) -> str | None:
    """``2.60-2.70``, the conv speed-up's interquartile range, ``unstable`` appended where the run
    flagged its conv or model speed-up so; None for runs made before lrx recorded it."""
    iqr = speedup.get("conv_iqr", {}).get(where)
    return None if iqr is None else _spread(iqr, speedup["unstable"][where])


def _spread(iqr, unstable) -> str | None:
    """``2.60-2.70``, ``unstable`` appended where flagged; None without an IQR."""
    return None if iqr is None else f"{iqr[0]:.2f}-{iqr[1]:.2f}" + (" unstable" if unstable else "")


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
        return "/".join(bases_text(r["letter"], r["bases"]) for r in kept)
    values = [rank_text(r["bases"]) for r in kept]
    return (values[0] if len(set(values)) == 1 else "/".join(values)) if values else None


def fmt(key: str, value) -> str:
    """``value`` as a table cell: :data:`DIGITS` decimals for a float, "-" for None."""
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
    lines += ["| " + " | ".join(fmt(k, r[k]) for k in COLUMNS.values()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def deployment_markdown(rows: list[dict]) -> str:
    """Per run with deployment data: its setting, then every target's ms and acc@1 for both
    networks and the final's speed-up in that target; "" when no run has any."""
    parts = []
    for r in rows:
        if not r.get("deploy"):
            continue
        d, best = r["deploy"], r["deploy"].get("best") or {}
        setting = ", ".join(
            text
            for key, text in [
                ("machine", str(d.get("machine"))),
                ("date", str(d.get("date"))),
                ("batch_size", f"batch {d.get('batch_size')}"),
                ("threads", f"{d.get('threads')} threads"),
                ("bn_folded", "BN folded" if d.get("bn_folded") else "BN not folded"),
                ("calibration_images", f"int8 calibrated on {d.get('calibration_images')} training images"),
                ("rounds", f"{d.get('rounds')} paired rounds"),
                ("busy_cores", f"busy cores while timing {d.get('busy_cores')}"),
            ]
            if d.get(key) is not None
        )
        lines = [
            f"### {r['label']}: {r['model']} on {r['dataset']} (`{r['run']}`)",
            "",
            f"{setting}." if setting else "",
            "",
            "| target | dense ms | dense acc@1(%) | final ms | final acc@1(%) | final speed-up in the target (IQR) |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, t in d["targets"].items():
            marks = [m for m, side in (("best dense", "dense"), ("best final", "final")) if best.get(side) == name]
            b, f = t["baseline"], t["final"]
            iqr = _spread(t.get("speedup_iqr"), t.get("unstable"))
            cells = [
                name + (f" ({', '.join(marks)})" if marks else ""),
                *(fmt("ms", v) for v in (b["ms"], b["acc1"], f["ms"], f["acc1"])),
                fmt("speedup", t.get("speedup")) + (f" ({iqr})" if iqr else ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if best:
            reference = fmt("acc1", d.get("reference_acc1"))
            lines.append(
                f"\nBest dense: {best['dense']}, {best['dense_ms']:.2f} ms at {best['dense_acc1']:.2f}% (within "
                f"{best['within']:g} point of the reference {reference}%); best final: {best['final']}, "
                f"{best['final_ms']:.2f} ms at {best['final_acc1']:.2f}%: **{best['speedup']:.2f}x**"
                + (f" ({r['vs_best_dense_iqr']})" if r["vs_best_dense_iqr"] else "")
            )
        else:
            lines.append("\nNo dense target kept its acc@1 close enough to the reference: no best dense.")
        if d.get("failed"):
            lines.append("\nLeft out: " + "; ".join(f"{t} ({why})" for t, why in d["failed"].items()) + ".")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


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
