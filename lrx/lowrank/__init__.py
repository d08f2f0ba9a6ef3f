"""Low-rank expansions of conv layers (Jaderberg, Vedaldi, Zisserman, BMVC 2014).

Depends on torch (and tqdm) only, so it can be used without Hydra, Lightning or W&B.
"""

from lrx.lowrank.base import ConvGeometry, DecompositionError, LowRankConv
from lrx.lowrank.scheme1 import LowRankExpConvV1, solve_scheme1
from lrx.lowrank.scheme2 import LowRankExpConvV2, solve_scheme2
from lrx.lowrank.surgery import decompose, resolve_bases, select_convs, validate

__all__ = [
    "ConvGeometry",
    "DecompositionError",
    "LowRankConv",
    "LowRankExpConvV1",
    "LowRankExpConvV2",
    "decompose",
    "resolve_bases",
    "select_convs",
    "solve_scheme1",
    "solve_scheme2",
    "validate",
]
