"""The README's worked example of ``model=custom``: any importable nn.Module."""

from torch import nn


class TinyNet(nn.Sequential):
    def __init__(self, num_classes=10):
        super().__init__(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, num_classes),
        )


class BrokenNet(TinyNet):
    """A network with a bug in its forward pass (tests/test_failures.py)."""

    def forward(self, x):
        raise KeyError("a bug")
