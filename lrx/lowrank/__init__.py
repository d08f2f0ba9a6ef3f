"""Low-rank expansions of conv layers (Jaderberg, Vedaldi, Zisserman, BMVC 2014), with Tucker-2,
CP and channel SVD as peer methods, all in one registry (:data:`METHODS`, :func:`method_class`).

Depends on torch (and tqdm) only, so it can be used without Hydra, Lightning or W&B. Importing
the package registers every method; a new one is a module with a ``LowRankConv`` subclass
declared with ``method=...``, imported here.
"""

from lrx.lowrank.base import METHODS, ConvGeometry, DecompositionError, LowRankConv, method_class

# isort: off
# the methods, in the order every listing shows them: the paper's two schemes, then the peers
from lrx.lowrank.scheme1 import LowRankExpConvV1, solve_scheme1
from lrx.lowrank.scheme2 import LowRankExpConvV2, solve_scheme2
from lrx.lowrank.tucker2 import Tucker2Conv, solve_tucker2
from lrx.lowrank.cp import CPConv, solve_cp
from lrx.lowrank.channel_svd import ChannelSVDConv, solve_channel_svd

# isort: on
from lrx.lowrank.surgery import decompose, resolve_bases, select_convs, skipped_convs, validate
from lrx.lowrank.vbmf import evbmf_rank, tucker2_ranks

__all__ = [
    "CPConv",
    "ChannelSVDConv",
    "ConvGeometry",
    "DecompositionError",
    "LowRankConv",
    "LowRankExpConvV1",
    "LowRankExpConvV2",
    "METHODS",
    "Tucker2Conv",
    "decompose",
    "evbmf_rank",
    "method_class",
    "resolve_bases",
    "select_convs",
    "skipped_convs",
    "solve_channel_svd",
    "solve_cp",
    "solve_scheme1",
    "solve_scheme2",
    "solve_tucker2",
    "tucker2_ranks",
    "validate",
]
