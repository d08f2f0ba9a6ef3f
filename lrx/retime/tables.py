"""``retime.json``'s sections as markdown tables."""

from __future__ import annotations

from lrx.runtime.serving import Serving

CONDITIONS = ("quiet", "busy")


def busy_text(values: list) -> str:
    """The busy cores sampled while a condition's rounds ran, e.g. ``"1.02-1.05"``."""
    cores = [c for c in values if c is not None]
    return f"{min(cores):.2f}-{max(cores):.2f}" if cores else "not measured"


def _spread(s: dict) -> str:
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def _widest(iqrs: list) -> str:
    low, high = max(iqrs, key=lambda q: q[1] - q[0])
    return f"{low:.2f}-{high:.2f}"


def convs_table(section: dict) -> str:
    """One row per setting and condition: the conv and model speed-ups (median and range over the
    rounds, and the widest IQR within a round), the conv ms and the load."""
    lines = [
        "| setting | condition | conv speed-up, median (range) | widest conv IQR | model speed-up, median (range) "
        "| widest model IQR | conv ms, baseline -> final | busy cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for timed in section["settings"]:
        for when in (w for w in CONDITIONS if w in timed):
            c = timed[when]
            ms = c["conv_ms"]
            lines.append(
                f"| {Serving(**timed['serving']).label} | {when} | {_spread(c['conv_speedup'])} "
                f"| {_widest(c['conv_speedup_iqr'])} | {_spread(c['model_speedup'])} "
                f"| {_widest(c['model_speedup_iqr'])} | {ms['baseline']['median']:.2f} -> {ms['approx']['median']:.2f} "
                f"| {busy_text(c['busy_cores'])} |"
            )
    return "\n".join(lines)


def network_table(section: dict) -> str:
    """One row per target, setting and condition: both networks' ms, the speed-up (median and range
    over the rounds), busy: how much of the quiet speed-up it keeps; the recommended setting marked."""
    lines = [
        "| target | setting | condition | dense -> final ms | speed-up, median (range) | keeps | busy cores |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in section["targets"].items():
        chosen = t.get("recommended", {}).get("serving")
        for timed in t["settings"]:
            mark = " **(recommended)**" if timed["serving"] == chosen else ""
            for when in (w for w in CONDITIONS if w in timed):
                c, rounds = timed[when], timed[when]["speedup_rounds"]
                keeps = f"{c['speedup'] / timed['quiet']['speedup']:.0%}" if when == "busy" else ""
                lines.append(
                    f"| {name} | {Serving(**timed['serving']).label}{mark} | {when} "
                    f"| {c['ms']['baseline']:.2f} -> {c['ms']['final']:.2f} "
                    f"| {c['speedup']:.2f}x ({min(rounds):.2f}-{max(rounds):.2f}) | {keeps} "
                    f"| {busy_text(c['busy_cores'])} |"
                )
    return "\n".join(lines)
