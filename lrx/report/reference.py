"""The questions a reader of a set of runs asks, one markdown table each: the best network within a
point against the best dense deployment, methods at equal MACs, the planner's predictions against
measurements, each model, each machine. Every row names the machine, date, run directory and
command behind its figures (:mod:`lrx.report.provenance`); it reads the rows of
:func:`lrx.report.rows.collect`."""

from __future__ import annotations

from itertools import groupby
from typing import NamedTuple

from lrx.report.provenance import NOT_RECORDED

WITHIN = 1.0  # "within a point": at most this many points of acc@1 lost
WHERE = ["machine", "CPU flags", "date", "run", "command"]


class Measured(NamedTuple):
    """One speed-up of a run, with where it was measured and the points of acc@1 it lost."""

    where: dict  # lrx.report.provenance: machine, flags, date, command
    row: dict
    kind: str  # "conv": in PyTorch, against the baseline; "dense": against the best dense deployment
    lost: float
    speedup: float


def sections(rows: list[dict]) -> str:
    """The page's question sections, each left out where no run answers it."""
    jobs = [r for r in rows if r["kind"] == "job"]
    parts = [
        (
            "Best within a point against the best dense deployment",
            "Per model and machine, the deployed network with the largest speed-up against the best dense "
            f"deployment among those that lose at most {WITHIN:g} point of acc@1 against it (both measured where "
            "they run, on the validation split); machine and date are the deployment's.",
            best_against_dense(jobs),
        ),
        (
            "Structures at the same budget",
            "Runs planned for the same measured speed-up in the same runtime with the same fine-tuning, "
            "each allowed a different set of methods (planner.methods): what each conv became (dense where "
            "the planner or the guard kept it), and the deployed network against the best dense deployment.",
            same_budget(jobs),
        ),
        (
            "Methods at equal MACs",
            "Runs whose planner aimed at the same MAC ratio with different methods; speed-ups measured in "
            "PyTorch eager float32 on the run's machine.",
            equal_macs(jobs),
        ),
        (
            "The planner's predictions against measurements",
            "Runs planned for a measured speed-up: the plan's prediction, the closed loop's last measurement "
            "(of the convs, or of the whole network where it says so; - where the run predates the loop), the "
            "final network's conv speed-up in the runtime it was planned in (not measured: only timed whole, "
            "as a deployment), and the whole network against dense in that "
            "deployment target where the run deployed it on its own machine.",
            planner(jobs),
        ),
        (
            "Each model",
            "Every run on each baseline, fastest conv speed-up (PyTorch eager float32) first; acc@1 in brackets: "
            "points against the baseline.",
            each_model(rows),
        ),
        (
            "Each machine",
            "What was measured on each machine: PyTorch timings on the run's machine, deployments on theirs.",
            each_machine(jobs),
        ),
    ]
    return "".join(f"## {title}\n\n{about}\n\n{body}\n" for title, about, body in parts if body)


def best_against_dense(jobs: list[dict]) -> str:
    """Per model, data and deployment machine, the fastest network against the best dense deployment
    within :data:`WITHIN` of its acc@1; a line for each without one, naming the fewest points lost."""
    deployed = [r for r in jobs if r["vs_best_dense"] is not None]
    lines, notes = [], []
    by_machine = _grouped(deployed, lambda r: (r["model"], r["dataset"], r["deploy_where"]["machine"]))
    for (model, data, machine), group in by_machine:
        within = [r for r in group if _dense_loss(r) <= WITHIN]
        if not within:
            least = min(group, key=_dense_loss)
            notes.append(
                f"{model} on {data} ({machine}): none within a point; the fewest points lost, "
                f"{_dense_loss(least):.2f}, at {least['vs_best_dense']:.2f}x (`{least['run']}`)."
            )
            continue
        r = max(within, key=lambda r: r["vs_best_dense"])
        lines.append(
            [
                model,
                data,
                r["label"],
                f"{r['best_dense']} {r['best_dense_ms']:.2f} ms, {r['best_dense_acc1']:.2f}%",
                f"{r['best_final']} {r['best_final_ms']:.2f} ms, {r['best_final_acc1']:.2f}%",
                f"{_dense_loss(r):.2f}",
                _speedup_vs_dense(r),
                *_where(r["deploy_where"], r),
            ]
        )
    header = ["model", "data", "network", "best dense", "best final", "points lost", "speed-up (IQR)", *WHERE]
    table = markdown_table(header, lines) if lines else ""
    return table + "".join(f"\n{note}\n" for note in notes)


def same_budget(jobs: list[dict]) -> str:
    """The latency-planned runs that share a model, target, runtime and fine-tuning budget, where
    more than one set of methods was allowed; fastest against dense first."""
    planned = [r for r in jobs if r["plan"] and r["plan"]["metric"] == "latency" and r["vs_best_dense"] is not None]
    lines = []
    for (model, target, runtime, epochs), group in _grouped(
        planned,
        lambda r: (
            r["model"],
            r["plan"]["target_speedup"],
            " ".join(_planned_in(r["plan"])),
            r["epochs"],
        ),
    ):
        if len({r["allowed"] for r in group}) < 2:
            continue
        for r in sorted(group, key=lambda r: -r["vs_best_dense"]):
            lines.append(
                [
                    model,
                    f"{target:g}x in {runtime}",
                    epochs,
                    r["allowed"],
                    r["choices"],
                    f"{r['best_final']} {r['best_final_ms']:.2f} ms, {r['best_final_acc1']:.2f}%",
                    f"{_dense_loss(r):.2f}",
                    _speedup_vs_dense(r),
                    *_where(r["deploy_where"], r),
                ]
            )
    header = ["model", "target", "fine-tuning", "methods allowed", "each conv", "best final", "points lost"]
    return markdown_table([*header, "vs best dense (IQR)", *WHERE], lines) if lines else ""


def equal_macs(jobs: list[dict]) -> str:
    """The runs planned for one MAC ratio, where more than one method was, fastest first."""
    planned = [r for r in jobs if r["plan"] and r["plan"]["metric"] == "macs"]
    lines = []
    for (model, data, target), group in _grouped(
        planned, lambda r: (r["model"], r["dataset"], r["plan"]["target_speedup"])
    ):
        if len({r["family"] for r in group}) < 2:
            continue
        for r in sorted(group, key=lambda r: -r["conv_speedup_cpu"]):
            lines.append(
                [
                    model,
                    data,
                    f"{target:g}x",
                    r["family"],
                    _num(r["macs_speedup"]),
                    _acc(r),
                    _num(r["conv_speedup_cpu"]),
                    _num(r["model_speedup_cpu"]),
                    *_where(r["where"], r),
                ]
            )
    header = ["model", "data", "MACs target", "method", "MAC ratio", "acc@1", "conv speed-up", "model speed-up"]
    return markdown_table([*header, *WHERE], lines) if lines else ""


def planner(jobs: list[dict]) -> str:
    """Each run planned for a measured speed-up: prediction, closed loop and final measurements."""
    lines = []
    for r in sorted(
        (r for r in jobs if r["plan"] and r["plan"]["metric"] == "latency"), key=lambda r: (r["model"], str(r["run"]))
    ):
        plan = r["plan"]
        runtime, precision = _planned_in(plan)
        loop = plan.get("closed_loop")
        lines.append(
            [
                r["model"],
                f"{plan['target_speedup']:g}x",
                f"{runtime} {precision}",
                _num(plan["predicted_conv_speedup"]),
                _loop_text(loop),
                _final_conv(r, runtime, precision),
                _in_target(r, f"{runtime}-{precision}"),
                _acc(r),
                *_where(r["where"], r),
            ]
        )
    header = ["model", "target", "planned in", "predicted", "closed loop", "final conv", "final in target"]
    return markdown_table([*header, "acc@1", *WHERE], lines) if lines else ""


def each_model(rows: list[dict]) -> str:
    """Per baseline, its size and time, then every run on it, fastest conv speed-up first."""
    parts = []
    for _, group in groupby(rows, key=lambda r: r["group"]):
        base, *jobs = group
        if not jobs:
            continue
        lines = [
            [
                r["label"],
                _acc(r),
                _num(r["macs_speedup"]),
                _num(r["conv_speedup_cpu"]),
                _num(r["model_speedup_cpu"]),
                _against_dense(r),
                *_where(r["where"], r),
            ]
            for r in sorted(jobs, key=lambda r: -r["conv_speedup_cpu"])
        ]
        header = ["network", "acc@1", "MAC ratio", "conv speed-up", "model speed-up", "vs best dense (deployed on)"]
        parts.append(
            f"### {base['model']} on {base['dataset']}, baseline {base['acc1']:.2f}%\n\n"
            f"{base['macs_m']:.2f} M MACs, {base['params_m']:.3f} M params, CPU {base['cpu_ms']:.2f} ms "
            f"(the median over its runs' timings).\n\n" + markdown_table([*header, *WHERE], lines)
        )
    return "\n".join(parts)


def each_machine(jobs: list[dict]) -> str:
    """Per machine and CPU flags: the dates, runs and models measured there, and the fastest within
    a point in PyTorch and against the best dense deployment."""
    measured = [Measured(r["where"], r, "conv", r["baseline_acc1"] - r["acc1"], r["conv_speedup_cpu"]) for r in jobs]
    measured += [
        Measured(r["deploy_where"], r, "dense", _dense_loss(r), r["vs_best_dense"])
        for r in jobs
        if r["vs_best_dense"] is not None
    ]
    lines = []
    for (machine, flags), group in _grouped(measured, lambda m: (m.where["machine"], m.where["flags"])):
        days = sorted({m.where["date"] for m in group} - {NOT_RECORDED})
        lines.append(
            [
                machine,
                flags,
                f"{days[0]} to {days[-1]}" if len(days) > 1 else days[0] if days else NOT_RECORDED,
                str(len({m.row["run"] for m in group})),
                ", ".join(sorted({m.row["model"] for m in group})),
                _fastest(group, "conv"),
                _fastest(group, "dense"),
            ]
        )
    header = ["machine", "CPU flags", "dates", "runs", "models", "fastest conv within a point", "fastest vs dense"]
    return markdown_table(header, lines) if lines else ""


def markdown_table(header: list[str], lines: list[list[str]]) -> str:
    """A markdown table; a ``|`` inside a cell is escaped."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def _grouped(items: list, key) -> list[tuple]:
    """``(key, items with it)`` in key order."""
    ordered = sorted(items, key=lambda i: tuple(map(str, key(i))))
    return [(k, list(g)) for k, g in groupby(ordered, key=key)]


def _fastest(group: list[Measured], kind: str) -> str:
    """The fastest speed-up of ``kind`` within a point in ``group``, with its run; - without one."""
    within = [m for m in group if m.kind == kind and m.lost <= WITHIN]
    if not within:
        return "-"
    fastest = max(within, key=lambda m: m.speedup)
    return f"{fastest.speedup:.2f}x (`{fastest.row['run']}`)"


def _where(where: dict, r: dict) -> list[str]:
    command = where["command"]
    return [
        where["machine"],
        where["flags"],
        where["date"],
        f"`{r['run']}`",
        command if command == NOT_RECORDED else f"`{command}`",
    ]


def _planned_in(plan: dict) -> tuple[str, str]:
    """``(runtime, precision)`` a latency plan timed its candidates in; PyTorch fp32 for the runs
    that predate the record."""
    return plan.get("runtime") or "torch", plan.get("precision") or "fp32"


def _speedup_vs_dense(r: dict) -> str:
    """``**2.66x** (2.60-2.75)``: the speed-up against the best dense deployment, with its IQR."""
    return f"**{r['vs_best_dense']:.2f}x**" + (f" ({r['vs_best_dense_iqr']})" if r["vs_best_dense_iqr"] else "")


def _loop_text(loop: list[dict] | None) -> str:
    """``2.95 (round 2)``: the closed loop's last measurement, ``whole network`` added where it
    timed the network whole; - without a loop."""
    if not loop:
        return "-"
    whole = ", whole network" if loop[-1].get("measures") == "network" else ""
    return f"{loop[-1]['measured']:.2f} (round {len(loop)}{whole})"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _dense_loss(r: dict) -> float:
    """Points of acc@1 the best final deployment loses against the best dense one."""
    return r["best_dense_acc1"] - r["best_final_acc1"]


def _acc(r: dict) -> str:
    return f"{r['acc1']:.2f} ({r['acc1'] - r['baseline_acc1']:+.2f})"


def _final_conv(r: dict, runtime: str, precision: str) -> str:
    """The final network's conv speed-up where it was planned: PyTorch float32 or ONNX Runtime."""
    if (runtime, precision) == ("torch", "fp32"):
        return _num(r["conv_speedup_cpu"])
    if (runtime, precision) == ("onnxruntime", "fp32") and r["conv_speedup_ort"] is not None:
        return _num(r["conv_speedup_ort"])
    return "not measured"


def _in_target(r: dict, target: str) -> str:
    """The whole network's speed-up against dense in deployment ``target``, where the run deployed
    it on its own machine."""
    deployed = (r["deploy"] or {}).get("targets", {}).get(target)
    if not deployed or r["deploy_where"]["machine"] != r["where"]["machine"]:
        return "-"
    return f"{deployed['speedup']:.2f}"


def _against_dense(r: dict) -> str:
    if r["vs_best_dense"] is None:
        return "-"
    where = r["deploy_where"]
    return f"{r['vs_best_dense']:.2f} ({r['best_dense']} → {r['best_final']}; {where['machine']}, {where['date']})"
