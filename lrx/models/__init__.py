"""Baseline architectures, by the names ``model=`` selects."""

from lrx.models.alexnet import AlexNet
from lrx.models.alexnet_cifar import AlexNetCIFAR

__all__ = ["AlexNet", "AlexNetCIFAR"]
