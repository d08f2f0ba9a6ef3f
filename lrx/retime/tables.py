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


def _range(pair: list) -> str:
    return f"{pair[0]:.2f}-{pair[1]:.2f}"


def _widest(iqrs: list) -> str:
    return _range(max(iqrs, key=lambda q: q[1] - q[0]))


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


def network_table(section: dict, recommended: dict) -> str:
    """One row per target, setting and condition: both networks' ms, the speed-up (median and range
    over the rounds), busy: how much of the quiet speed-up it keeps; the setting ``recommended``
    (the ``serving`` section) marked."""
    lines = [
        "| target | setting | condition | dense -> final ms | speed-up, median (range) | keeps | busy cores |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in section["targets"].items():
        chosen = recommended.get(name, {}).get("serving")
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


def deploy_table(section: dict) -> str:
    """One row per target: both networks' ms and acc@1 and the speed-up (IQR); then the best dense
    and best final deployment, and the targets left out."""
    lines = [
        "| target | dense ms | dense acc@1 | final ms | final acc@1 | speed-up (IQR) |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in section["targets"].items():
        b, f = t["baseline"], t["final"]
        lines.append(
            f"| {name} | {b['ms']:.2f} | {b['acc1']:.2f} | {f['ms']:.2f} | {f['acc1']:.2f} "
            f"| {t['speedup']:.2f}x ({_range(t['speedup_iqr'])}) |"
        )
    best = section["best"]
    if best:
        lines.append(
            f"\nbest dense: {best['dense']} {best['dense_ms']:.2f} ms ({best['dense_acc1']:.2f}%); best final: "
            f"{best['final']} {best['final_ms']:.2f} ms ({best['final_acc1']:.2f}%): {best['speedup']:.2f}x "
            f"({_range(best['speedup_iqr'])})"
        )
    else:
        lines.append("\nno dense deployment kept its acc@1 close enough to the run's: no best dense")
    lines += [f"left out: {name} ({why})" for name, why in (section.get("failed") or {}).items()]
    return "\n".join(lines)


def text(sections: dict) -> str:
    """Every section of one run's re-timing, each with how it was timed, as markdown."""
    parts = []
    if "convs" in sections:
        c = sections["convs"]
        folded = ", BatchNorm folded in both networks" if c["bn_folded"] else ""
        parts += [
            f"Every conv and the whole network in PyTorch{folded} ({_how(c)}):\n",
            convs_table(c),
            f"recorded in the run: conv {c['recorded']['conv']:.2f}x, model {c['recorded']['model']:.2f}x",
        ]
    if "network" in sections:
        n = sections["network"]
        parts += [
            f"\nThe whole network in each target, BatchNorm folded ({_how(n)}):\n",
            network_table(n, sections.get("serving", {})),
        ]
    if "deploy" in sections:
        d = sections["deploy"]
        setting = f"batch {d['batch_size']}, {d['threads']} threads, busy cores while timing {d['busy_cores']}"
        parts += [f"\nDeployed again, acc@1 in each target ({setting}):\n", deploy_table(d)]
    return "\n".join(parts)


def _how(section: dict) -> str:
    rounds = f"{section['rounds']} round{'s' if section['rounds'] > 1 else ''}"
    busy = f" and next to {section['busy']} busy neighbour(s)" if section["busy"] else " (quiet only)"
    return f"batch {section['batch_size']}, {rounds} quiet{busy}"
