"""Scheme 2 (channel redundancy): a vertical conv C -> K (kernel kh x 1), then a horizontal conv
K -> N (kernel 1 x kw), so that W[n, c, y, x] ~= sum_k H[n, k, x] V[k, c, y].

Filter reconstruction is exact: with Wm[(c, y), (n, x)] = W[n, c, y, x], of shape (C*kh, N*kw),
a rank-K Scheme 2 layer is a rank-K factorisation of Wm, so the truncated SVD is the global
optimum (Eckart-Young) and the error is the tail of the singular values.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lrx.lowrank.base import LowRankConv
from lrx.lowrank.checks import check_bases
from lrx.lowrank.geometry import ConvGeometry
from lrx.lowrank.linalg import single_thread, solve_dtype


def solve_scheme2(weight: torch.Tensor, bases: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of Wm = W[n, c, y, x] as (C*kh, N*kw), singular values split evenly.

    Returns V (K, C, kh) and H (N, K, kw), float64 on weight's device, with
    W[n, c, y, x] ~= sum_k H[n, k, x] V[k, c, y].

    The SVD is taken through the eigendecomposition of the smaller Gram matrix (formed in float64,
    decomposed in the weight's precision, at least float32): 2-3x faster than torch.linalg.svd on
    CPU. Singular vectors whose sigma^2 is below ~1e-7 sigma_1^2 are not resolved in float32, which
    changes the error by far less than float32 weight precision.
    """
    n, c, kh, kw = weight.shape
    check_bases(bases, min(c * kh, n * kw), "scheme2", "weight")
    wm = weight.to(solve_dtype(weight.device)).permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    transpose = wm.shape[0] > wm.shape[1]
    if transpose:  # work on the side with the smaller Gram matrix
        wm = wm.T
    gram = (wm @ wm.T).to(torch.promote_types(weight.dtype, torch.float32))
    with single_thread(weight.device):
        u = torch.linalg.eigh(gram)[1][:, -bases:].flip(1).to(wm.dtype)  # top-K left singular vectors
    b = u.T @ wm  # (K, cols) = diag(s) @ Vh, rows of norm s_k
    root_s = torch.linalg.norm(b, dim=1).sqrt()
    left = u * root_s  # U sqrt(s)
    right = b / root_s.clamp_min(torch.finfo(b.dtype).tiny).unsqueeze(1)  # sqrt(s) Vh
    if transpose:
        left, right = right.T, left.T
    vertical = left.T.reshape(bases, c, kh)
    horizontal = right.reshape(bases, n, kw).permute(1, 0, 2)
    return vertical, horizontal


class Scheme2Conv(LowRankConv, method="scheme2", label="s2", letter="K", aliases=(2, "2"), order=2):
    """Scheme 2: ``vertical`` nn.Conv2d C -> K (kh x 1, row stride/padding/dilation, no bias), then
    ``horizontal`` nn.Conv2d K -> N (1 x kw, column stride/padding/dilation, the bias).

    MACs per output pixel: K*C*kh + N*K*kw (the vertical maps counted at output resolution) against
    N*C*kh*kw dense, so macs_speedup = N*C*kh*kw / (K*(C*kh + N*kw)).
    """

    def build(self, g: ConvGeometry, bases: int, bias: bool, factory: dict) -> None:
        kh, kw = g.kernel_size
        self.vertical = nn.Conv2d(g.in_channels, bases, (kh, 1), bias=False, **g.vertical(), **factory)
        self.horizontal = nn.Conv2d(bases, g.out_channels, (1, kw), bias=bias, **g.horizontal(), **factory)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.horizontal.bias

    @staticmethod
    def full_rank(geometry: ConvGeometry) -> int:
        kh, kw = geometry.kernel_size
        return min(geometry.in_channels * kh, geometry.out_channels * kw)

    @classmethod
    def macs(cls, geometry: ConvGeometry, bases: int) -> float:
        c, n, (kh, kw) = geometry.in_channels, geometry.out_channels, geometry.kernel_size
        return bases * (c * kh + n * kw)

    def fit_filters(self, weight: torch.Tensor) -> dict:
        vertical, horizontal = solve_scheme2(weight, self.bases)
        with torch.no_grad():
            self.vertical.weight.copy_(vertical.unsqueeze(3))  # (K, C, kh, 1)
            self.horizontal.weight.copy_(horizontal.unsqueeze(2))  # (N, K, 1, kw)
        return {"lambda": None}

    def dense_weight(self) -> torch.Tensor:
        # W[n, c, y, x] = sum_k H[n, k, x] V[k, c, y]
        return torch.einsum("kcy,nkx->ncyx", self.vertical.weight[..., 0], self.horizontal.weight[:, :, 0])

    def final_features(self, x: torch.Tensor) -> torch.Tensor:
        # the horizontal pass's K*kw inputs at every output pixel (channel k*kw + j = tap j of map k),
        # by a grouped conv with one-hot kernels, so any padding the pass accepts works: (B, K*kw, L)
        hp, kw = self.horizontal, self.geometry.kernel_size[1]
        taps = torch.eye(kw, dtype=x.dtype, device=x.device).repeat(self.bases, 1)[:, None, None, :]
        z = F.conv2d(
            self.vertical(x), taps, groups=self.bases, stride=hp.stride, padding=hp.padding, dilation=hp.dilation
        )
        return z.flatten(2)

    def set_final(self, final: torch.Tensor, bias: torch.Tensor | None) -> None:
        with torch.no_grad():
            self.horizontal.weight.copy_(final.reshape(self.horizontal.weight.shape))  # (N, K, 1, kw)
            if bias is not None:
                self.horizontal.bias.copy_(bias)

    def fold_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        self.horizontal = fuse_conv_bn_eval(self.horizontal.eval(), bn.eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.horizontal(self.vertical(x))
