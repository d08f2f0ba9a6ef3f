"""He et al. (2016)'s CIFAR ResNet-20: 3x3 convs of 16/32/64 channels, 3 stages of 3 basic blocks.

Shortcut option A (the paper's CIFAR choice): identity, and where a stage halves the resolution
and doubles the width, the input subsampled by 2 and zero-padded to the new width, so the
shortcuts add no parameters (0.27 M in all). Layer names are readable:
``conv1``, ``stage2.block1.conv1`` .. ``stage3.block3.conv2``, ``fc``.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option A: ``x[:, :, ::s, ::s]`` zero-padded from C to ``out_channels`` channels."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra = stride, extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = PadShortcut(stride, c_out - c_in) if stride != 1 or c_in != c_out else nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNet20CIFAR(nn.Sequential):
    """32x32 -> conv1 (16) -> stage1 (16, 32x32) -> stage2 (32, 16x16) -> stage3 (64, 8x8) -> fc."""

    input_size = 32

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64), blocks: int = 3):
        layers = [
            ("conv1", nn.Conv2d(3, widths[0], 3, padding=1, bias=False)),
            ("bn1", nn.BatchNorm2d(widths[0])),
            ("relu1", nn.ReLU(inplace=True)),
        ]
        c_in = widths[0]
        for s, width in enumerate(widths, start=1):
            stage = OrderedDict(
                (f"block{b}", BasicBlock(c_in if b == 1 else width, width, 2 if (b == 1 and s > 1) else 1))
                for b in range(1, blocks + 1)
            )
            layers.append((f"stage{s}", nn.Sequential(stage)))
            c_in = width
        layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(c_in, num_classes))]
        super().__init__(OrderedDict(layers))
