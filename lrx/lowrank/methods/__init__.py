"""The decomposition methods, one module each; every module here is imported (discovered) when
:mod:`lrx.lowrank` is, and each ``LowRankConv`` subclass declared with ``method=...`` registers
itself. A new method is a new module in this folder and its ``conf/decomp/<method>.yaml``."""

import importlib
import pkgutil


def discover() -> list[str]:
    """Import every module of this package (in name order; listings order methods by
    ``LowRankConv.order``); returns their names."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names
