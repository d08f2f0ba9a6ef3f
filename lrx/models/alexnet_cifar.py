"""A CIFAR-native AlexNet-style network: five convs (5x5, 5x5, 3x3, 3x3, 3x3) on 32x32 inputs.

Same shape of network as AlexNet (two large-filter convs, then three 3x3 convs, max-pools and
a small classifier), sized to train to >= 85% acc@1 on 2 CPU cores within an hour. BatchNorm
follows every conv; it is left unfolded on both sides of every comparison.
"""

from collections import OrderedDict

from torch import nn


def _conv_bn_relu(name: str, c_in: int, c_out: int, k: int) -> list[tuple[str, nn.Module]]:
    i = name.removeprefix("conv")
    return [
        (name, nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)),
        (f"bn{i}", nn.BatchNorm2d(c_out)),
        (f"relu{i}", nn.ReLU(inplace=True)),
    ]


class AlexNetCIFAR(nn.Sequential):
    """32x32 -> conv1 5x5 -> pool -> conv2 5x5 -> pool -> conv3, conv4, conv5 3x3 -> pool -> fc."""

    input_size = 32

    def __init__(self, num_classes: int = 10, widths=(48, 128, 192, 192, 128), dropout: float = 0.0):
        w1, w2, w3, w4, w5 = widths
        layers = [
            *_conv_bn_relu("conv1", 3, w1, 5),
            ("pool1", nn.MaxPool2d(2)),  # 16x16
            *_conv_bn_relu("conv2", w1, w2, 5),
            ("pool2", nn.MaxPool2d(2)),  # 8x8
            *_conv_bn_relu("conv3", w2, w3, 3),
            *_conv_bn_relu("conv4", w3, w4, 3),
            *_conv_bn_relu("conv5", w4, w5, 3),
            ("pool5", nn.AdaptiveMaxPool2d(1)),  # 1x1
            ("flatten", nn.Flatten()),
            ("drop", nn.Dropout(dropout)),
            ("fc", nn.Linear(w5, num_classes)),
        ]
        super().__init__(OrderedDict(layers))
