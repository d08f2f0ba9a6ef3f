"""The report's plot: acc@1 against measured conv speed-up, coloured by method, one marker per
baseline, the Pareto front marked and only its points labelled."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lrx.io import write_bytes


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
