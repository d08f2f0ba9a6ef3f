"""Low-rank expansions of conv layers (Jaderberg, Vedaldi, Zisserman, BMVC 2014), with Tucker-2,
CP and channel SVD as peer methods, all in one registry (:data:`METHODS`, :func:`method_class`).

Depends on torch (and tqdm) only, and imports nothing else of lrx, so it can be used without
Hydra, Lightning or W&B. Importing it discovers every method: each module of
:mod:`lrx.lowrank.methods` declares a ``LowRankConv`` subclass with ``method=...``.
"""

from lrx.lowrank.base import METHODS, LowRankConv, method_class
from lrx.lowrank.checks import DecompositionError
from lrx.lowrank.geometry import ConvGeometry
from lrx.lowrank.methods import discover
from lrx.lowrank.surgery import decompose, resolve_bases, select_convs, skipped_convs, validate

discover()

__all__ = [
    "ConvGeometry",
    "DecompositionError",
    "LowRankConv",
    "METHODS",
    "decompose",
    "method_class",
    "resolve_bases",
    "select_convs",
    "skipped_convs",
    "validate",
]
