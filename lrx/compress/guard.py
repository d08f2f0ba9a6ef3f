"""The latency guard: a replaced layer that is not measurably faster gets its original conv back."""

from __future__ import annotations

import copy

from torch import nn

from lrx.compress.prune import METHOD


def put_back_slower(
    approx: nn.Module, baseline: nn.Module, records: list[dict], layer_timings: dict, where: str = "this device"
) -> list[str]:
    """Restore, in ``approx``, the original conv (from ``baseline``, exact weights, a copy) of every
    replaced layer whose measured speed-up in ``layer_timings`` (name -> {"speedup",
    "speedup_iqr"}, as returned by :func:`lrx.measure.latency.compare`, measured at ``where``: the
    device, or the runtime and precision, with threads and batch size) is not confidently above 1:
    a layer stays only if the LOWER quartile of its speed-up is above 1.
    Marks each record with ``kept``, ``guard`` (the speed-up and IQR it decided on, and where)
    and, where put back, ``put_back_reason``; returns the names put back. A pruned conv is not
    guarded: its channels are gone from the layers that read them too, so the planner that chose
    it and the whole network's timing judge it.

    ``baseline`` is what a layer is put back from: the original network, or with a plan that
    prunes, the original with those prunings (a conv whose input channels were pruned is put back
    as that narrower dense conv)."""
    put_back = []
    for rec in records:
        if rec.get("method") == METHOD:
            continue
        t = layer_timings[rec["name"]]
        low = t["speedup_iqr"][0]
        rec["kept"] = low > 1.0
        rec["guard"] = {"speedup": t["speedup"], "speedup_iqr": t["speedup_iqr"], "at": where}
        if not rec["kept"]:
            approx.set_submodule(rec["name"], copy.deepcopy(baseline.get_submodule(rec["name"])))
            rec["put_back_reason"] = (
                f"measured speed-up {t['speedup']:.2f}x with lower quartile {low:.2f}x <= 1 at {where}"
            )
            put_back.append(rec["name"])
    return put_back
