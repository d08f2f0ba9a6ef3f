"""The geometry of a conv and its split into a vertical (kh x 1) and a horizontal (1 x kw) pass.

Zero padding, stride and dilation are separable: padding / striding / dilating the rows in the
vertical pass and the columns in the horizontal pass gives exactly the 2-D conv's output, as long
as no bias is added between the passes (the bias always goes on the last pass).
"""

from dataclasses import dataclass

from torch.nn.modules.utils import _pair

from lrx.lowrank.checks import check_kernel


@dataclass(frozen=True)
class ConvGeometry:
    """Shape and geometry of the original conv: weight (N, C, kh, kw), stride, padding, dilation."""

    in_channels: int  # C
    out_channels: int  # N
    kernel_size: tuple[int, int]  # (kh, kw)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)  # ints, or 'same' / 'valid' as nn.Conv2d accepts
    dilation: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1) -> "ConvGeometry":
        """Normalise nn.Conv2d-style arguments (int or pair) to pairs."""
        check_kernel(kernel_size)
        return cls(
            in_channels,
            out_channels,
            _pair(kernel_size),
            _pair(stride),
            padding if isinstance(padding, str) else _pair(padding),
            _pair(dilation),
        )

    def spatial(self) -> dict:
        """Conv kwargs of a pass with the whole kh x kw kernel: the stride / padding / dilation."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)

    def vertical(self) -> dict:
        """Conv kwargs of the (kh x 1) pass: the row stride / padding / dilation."""
        pad = self.padding if isinstance(self.padding, str) else (self.padding[0], 0)
        return dict(stride=(self.stride[0], 1), padding=pad, dilation=(self.dilation[0], 1))

    def horizontal(self) -> dict:
        """Conv kwargs of the (1 x kw) pass: the column stride / padding / dilation."""
        pad = self.padding if isinstance(self.padding, str) else (0, self.padding[1])
        return dict(stride=(1, self.stride[1]), padding=pad, dilation=(1, self.dilation[1]))


def dense_macs(geometry: ConvGeometry) -> int:
    """N*C*kh*kw: the dense conv's MACs per output pixel."""
    return geometry.out_channels * geometry.in_channels * geometry.kernel_size[0] * geometry.kernel_size[1]
