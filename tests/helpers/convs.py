"""Convs to decompose: a seeded nn.Conv2d, the geometries the layer tests run over, and a small
network for surgery."""

from collections import OrderedDict

import torch
from torch import nn

from lrx.lowrank import ConvGeometry

# (C, N, kernel, stride, padding, dilation, bias): square and non-square kernels, strides per
# axis, 'same' padding, dilation, with and without bias. Small, so that every method's full rank
# (CP's included) stays small.
GEOMETRIES = [
    (4, 6, 3, 1, 1, 1, True),
    (3, 5, (3, 4), 2, 1, 1, False),
    (4, 5, 3, (2, 1), (1, 2), 2, True),
    (3, 4, (5, 3), 1, "same", (1, 2), False),
]


def make_conv(c, n, k, stride, padding, dilation, bias) -> nn.Conv2d:
    """An nn.Conv2d with these arguments and seeded (reproducible) random weights."""
    torch.manual_seed(0)
    return nn.Conv2d(c, n, k, stride=stride, padding=padding, dilation=dilation, bias=bias)


def geometry_of(conv: nn.Conv2d) -> ConvGeometry:
    return ConvGeometry.of(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation
    )


def conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A dense nn.Conv2d with ``conv``'s geometry and the given weight and bias."""
    dense = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=bias is not None,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        dense.weight.copy_(weight)
        if bias is not None:
            dense.bias.copy_(bias)
    return dense


def small_model() -> nn.Sequential:
    """Two 3x3 convs to decompose (conv2 strided, without bias, the last layer) around a 1x1 conv
    that no method decomposes."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1),
            act=nn.ReLU(),
            reduce=nn.Conv2d(8, 8, 1),
            conv2=nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False),
        )
    )
