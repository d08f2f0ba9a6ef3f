"""How results values read in run names, tables and W&B (plain strings, no torch)."""

from __future__ import annotations


def rank_text(bases) -> str:
    """``8``, or a Tucker-2 pair as ``64x32``."""
    return "x".join(map(str, bases)) if isinstance(bases, (list, tuple)) else str(bases)


def bases_text(letter: str, bases) -> str:
    """``M8``, ``K32``, ``R64x32``: what the method calls its bases, then the rank."""
    return letter + rank_text(bases)


def lambda_text(lam: dict | None) -> str | None:
    """Scheme 1's lambda (a layer record's ``lambda``): ``0.01`` when fixed, ``asc 0.001→1`` when
    ascending; None without one."""
    if not lam:
        return None
    if lam["schedule"] == "fixed":
        return f"{lam['start']:g}"
    return f"{'asc' if lam['schedule'] == 'ascending' else lam['schedule']} {lam['start']:g}→{lam['end']:g}"
