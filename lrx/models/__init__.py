"""Baseline architectures, by the names ``model=`` selects."""

from lrx.models.alexnet import AlexNet
from lrx.models.alexnet_cifar import AlexNetCIFAR
from lrx.models.resnet20_cifar import ResNet20CIFAR
from lrx.models.torchvision_models import torchvision_net

__all__ = ["AlexNet", "AlexNetCIFAR", "ResNet20CIFAR", "torchvision_net"]
