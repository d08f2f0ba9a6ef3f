"""Where, when and by what command a figure was measured: the machine (CPU model and the flags that
decide int8 and bf16 speed), the date and the command, as a run's ``results.json`` records them.
Runs made before lrx recorded one of them get what their files still tell (the date of the first
line of ``train.log``) or :data:`NOT_RECORDED`, never a guess."""

from __future__ import annotations

import re
from pathlib import Path

NOT_RECORDED = "not recorded"
TRAIN_LOG = "train.log"  # Hydra's log of the run, each line opening with "[YYYY-MM-DD HH:MM:SS,mmm]"


def of_run(res: dict, run_dir: Path) -> dict:
    """``machine``, ``flags``, ``date`` and ``command`` of the run itself (its PyTorch timings); where
    results.json has no ``machine``, ``cpu_flags`` or ``date`` of its own, those of the deployment
    it made in the same process."""
    deploy = res.get("deploy") or {}
    return {
        "machine": res.get("machine") or deploy.get("machine") or NOT_RECORDED,
        "flags": flags_text(res.get("cpu_flags") or deploy.get("cpu_flags")),
        "date": _day(res.get("date") or deploy.get("date")) or _logged_day(run_dir / TRAIN_LOG) or NOT_RECORDED,
        "command": res.get("command") or NOT_RECORDED,
    }


def of_deployment(deploy: dict, command: str) -> dict:
    """The same for a deployment table (``results["deploy"]``, or the file beside an older run):
    its own machine, flags and date, and ``command``."""
    return {
        "machine": deploy.get("machine") or NOT_RECORDED,
        "flags": flags_text(deploy.get("cpu_flags")),
        "date": _day(deploy.get("date")) or NOT_RECORDED,
        "command": command,
    }


def flags_text(flags: dict | None) -> str:
    """``avx2 avx512_f``: the recorded CPU features the machine has (``none`` of them, or
    :data:`NOT_RECORDED`)."""
    if flags is None:
        return NOT_RECORDED
    return " ".join(name for name, has in flags.items() if has) or "none"


def _day(date: str | None) -> str | None:
    """``2026-12-07`` from an ISO date or date and time."""
    return date[:10] if date else None


def _logged_day(log: Path) -> str | None:
    """The day of the first timestamped line of a run's ``train.log``, None without one."""
    if not log.is_file():
        return None
    with log.open() as f:
        for line in f:
            m = re.match(r"\[(\d{4}-\d{2}-\d{2}) ", line)
            if m:
                return m[1]
    return None
