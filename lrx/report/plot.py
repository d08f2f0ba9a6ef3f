"""The report's plots: acc@1 against measured conv speed-up, coloured by method, one marker per
baseline, the Pareto front marked and only its points labelled; and, for runs deployed to targets,
acc@1 against latency of both networks in every target."""

from __future__ import annotations

from io import BytesIO
from math import ceil
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lrx.io import write_bytes


def pareto(rows: list[dict], speed=lambda r: r["conv_speedup_cpu"]) -> list[dict]:
    """The rows that no faster-or-as-fast row beats on acc@1, by increasing ``speed`` (higher is
    faster; the conv speed-up by default)."""
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (-speed(r), -r["acc1"])):
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


SIDES = {"baseline": ("s", "dense"), "final": ("^", "final")}  # marker and legend name per network


def deployed(rows: list[dict]) -> list[dict]:
    """The rows of runs with deployment data (``row["deploy"]``)."""
    return [r for r in rows if r.get("deploy")]


def deploy_figure(rows: list[dict], title: str = "lrx deployments") -> Figure:
    """One panel per deployed run: acc@1 against latency of the dense (square) and final
    (triangle) network in every target (one colour per target), the panel's Pareto front (best
    acc@1 at this latency or less) as a step line with its points ringed, the best dense and best
    final targets labelled, and the dense networks' acc@1 floor (reference less ``within``) dashed."""
    runs = deployed(rows)
    if not runs:
        raise ValueError("no run with deployment data")
    cols = min(3, len(runs))
    fig = Figure(figsize=(5.5 * cols, 4.5 * ceil(len(runs) / cols) + 0.8), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    targets = list(dict.fromkeys(t for r in runs for t in r["deploy"]["targets"]))
    colors = {t: f"C{i % 10}" for i, t in enumerate(targets)}
    axes = fig.subplots(ceil(len(runs) / cols), cols, squeeze=False).ravel()
    for ax in axes[len(runs) :]:
        ax.set_axis_off()
    for ax, r in zip(axes, runs):
        d = r["deploy"]
        best = d.get("best") or {}
        points = [
            {"side": side, "target": t, "ms": sides[side]["ms"], "acc1": sides[side]["acc1"]}
            for t, sides in d["targets"].items()
            for side in SIDES
        ]
        for p in points:
            ax.scatter(p["ms"], p["acc1"], color=colors[p["target"]], marker=SIDES[p["side"]][0], s=45, zorder=3)
        front = pareto(points, speed=lambda p: -p["ms"])[::-1]  # by increasing latency
        fx, fy = [p["ms"] for p in front], [p["acc1"] for p in front]
        ax.step(fx, fy, where="post", color="grey", lw=1.2, alpha=0.7, zorder=2)
        ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="grey", lw=1.2, zorder=3, gid="pareto")
        for side, name in (("baseline", "dense"), ("final", "final")):
            t = best.get(name)
            if t:
                ax.annotate(
                    f"best {name}",
                    (d["targets"][t][side]["ms"], d["targets"][t][side]["acc1"]),
                    xytext=(7, 6 if side == "final" else -14),
                    textcoords="offset points",
                    fontsize=8,
                    color=colors[t],
                )
        if _floor(d) is not None:
            ax.axhline(_floor(d), color="black", ls="--", lw=0.8, alpha=0.5)
        ax.set_title(f"{r['label']}, {r['model']} on {r['dataset']}\n{_short(r['run'])}", fontsize=9)
        ax.set_xlabel(f"latency, batch {d.get('batch_size', '?')} (ms)", fontsize=9)
        ax.set_ylabel("acc@1 (%)", fontsize=9)
        ax.margins(x=0.12, y=0.12)
        ax.grid(alpha=0.3)
    handles = [axes[0].scatter([], [], color=colors[t], marker="o", s=30, label=t) for t in targets]
    handles += [
        axes[0].scatter([], [], color="grey", marker=m, s=45, label=f"{name} network") for m, name in SIDES.values()
    ]
    handles += [axes[0].scatter([], [], s=140, facecolors="none", edgecolors="grey", label="Pareto front")]
    if any(_floor(r["deploy"]) is not None for r in runs):
        (floor,) = axes[0].plot(
            [], [], color="black", ls="--", lw=0.8, alpha=0.5, label="lowest acc@1 a best dense may have"
        )
        handles.append(floor)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=9)
    fig.suptitle(title, fontsize=12)
    return fig


def _floor(deploy: dict) -> float | None:
    """The lowest acc@1 a best dense deployment may have (reference less ``within``), if known."""
    within, reference = (deploy.get("best") or {}).get("within"), deploy.get("reference_acc1")
    return None if within is None or reference is None else reference - within


def _short(run) -> str:
    """The run directory's last two parts: enough to tell sweep jobs apart."""
    parts = Path(str(run)).parts
    return "/".join(parts[-2:]) if parts else ""


def _png(fig: Figure, path) -> Path:
    buf = BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes(path, buf.getvalue())


def plot(rows: list[dict], path, title: str = "lrx report") -> Path:
    """:func:`figure`, written as a PNG atomically."""
    return _png(figure(rows, title), path)


def deploy_plot(rows: list[dict], path, title: str = "lrx deployments") -> Path | None:
    """:func:`deploy_figure`, written as a PNG atomically; None (nothing written) when no run has
    deployment data."""
    return _png(deploy_figure(rows, title), path) if deployed(rows) else None
