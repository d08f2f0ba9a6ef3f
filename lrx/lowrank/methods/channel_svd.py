"""Channel SVD (Zhang et al., CVPR 2015 / TPAMI 2016): the conv as a dense kh x kw conv C -> K
followed by a 1x1 conv K -> N,

    W[n, c, y, x] ~= sum_k U[n, k] P[k, c, y, x].

Filter reconstruction is exact: with Wm = W as an (N, C*kh*kw) matrix, a rank-K layer is a rank-K
factorisation of Wm, so the truncated SVD Wm ~= U_K S_K V_K^T is the global optimum
(Eckart-Young), split as U = U_K sqrt(S_K), P = sqrt(S_K) V_K^T. The data-driven variant of the
paper (fitting the responses instead of the kernel) is lrx's data reconstruction, which refits
the 1x1 pass by least squares on real inputs.

Both passes are ordinary dense convs, the kind a CPU library runs best.
"""

import torch
from torch import nn

from lrx.lowrank.base import PointwiseOutConv
from lrx.lowrank.checks import check_bases
from lrx.lowrank.geometry import ConvGeometry
from lrx.lowrank.linalg import single_thread, solve_dtype


def solve_channel_svd(weight: torch.Tensor, bases: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of ``weight`` (N, C, kh, kw) as (N, C*kh*kw) at rank K = ``bases``.

    Returns P (K, C, kh, kw) and U (N, K), float64 on weight's device, with
    W[n, c, y, x] ~= sum_k U[n, k] P[k, c, y, x], the singular values split evenly.
    """
    n, c, kh, kw = weight.shape
    check_bases(bases, min(n, c * kh * kw), "channel_svd", "weight")
    wm = weight.detach().to(solve_dtype(weight.device)).reshape(n, -1)  # (N, C*kh*kw)
    with single_thread(weight.device):
        u, s, vh = torch.linalg.svd(wm, full_matrices=False)
    root = s[:bases].sqrt()
    return (root[:, None] * vh[:bases]).reshape(bases, c, kh, kw), u[:, :bases] * root


class ChannelSVDConv(PointwiseOutConv, method="channel_svd", label="csvd", letter="K", order=5):
    """Channel SVD with K = ``bases``: ``conv`` nn.Conv2d C -> K (kh x kw, the original
    stride/padding/dilation, no bias), then ``pointwise_out`` nn.Conv2d K -> N (1x1, the bias).

    MACs per output pixel: K*(C*kh*kw + N) against N*C*kh*kw dense.
    """

    def build(self, g: ConvGeometry, bases: int, bias: bool, factory: dict) -> None:
        self.conv = nn.Conv2d(g.in_channels, bases, g.kernel_size, bias=False, **g.spatial(), **factory)
        self.pointwise_out = nn.Conv2d(bases, g.out_channels, 1, bias=bias, **factory)

    @staticmethod
    def full_rank(geometry: ConvGeometry) -> int:
        kh, kw = geometry.kernel_size
        return min(geometry.out_channels, geometry.in_channels * kh * kw)

    @classmethod
    def macs(cls, geometry: ConvGeometry, bases: int) -> float:
        c, n, (kh, kw) = geometry.in_channels, geometry.out_channels, geometry.kernel_size
        return bases * (c * kh * kw + n)

    def fit_filters(self, weight: torch.Tensor) -> dict:
        first, last = solve_channel_svd(weight, self.bases)
        with torch.no_grad():
            self.conv.weight.copy_(first)  # (K, C, kh, kw)
            self.pointwise_out.weight.copy_(last[:, :, None, None])  # (N, K, 1, 1)
        return {}

    def dense_weight(self) -> torch.Tensor:
        # W[n, c, y, x] = sum_k U[n, k] P[k, c, y, x]
        return torch.einsum("nk,kcyx->ncyx", self.pointwise_out.weight[:, :, 0, 0], self.conv.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
