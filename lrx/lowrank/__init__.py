"""Low-rank expansions of conv layers (Jaderberg, Vedaldi, Zisserman, BMVC 2014), with Tucker-2
and CP decompositions as peer baselines.

Depends on torch (and tqdm) only, so it can be used without Hydra, Lightning or W&B.
"""

from lrx.lowrank.base import ConvGeometry, DecompositionError, LowRankConv
from lrx.lowrank.cp import CPConv, solve_cp
from lrx.lowrank.scheme1 import LowRankExpConvV1, solve_scheme1
from lrx.lowrank.scheme2 import LowRankExpConvV2, solve_scheme2
from lrx.lowrank.surgery import decompose, resolve_bases, select_convs, validate
from lrx.lowrank.tucker2 import Tucker2Conv, solve_tucker2
from lrx.lowrank.vbmf import evbmf_rank, tucker2_ranks

__all__ = [
    "CPConv",
    "ConvGeometry",
    "DecompositionError",
    "LowRankConv",
    "LowRankExpConvV1",
    "LowRankExpConvV2",
    "Tucker2Conv",
    "decompose",
    "evbmf_rank",
    "resolve_bases",
    "select_convs",
    "solve_cp",
    "solve_scheme1",
    "solve_scheme2",
    "solve_tucker2",
    "tucker2_ranks",
    "validate",
]
