"""The earlier attempt's AlexNet: torchvision-style, 224x224 inputs, 10 classes.

Layer names are flat and readable (``conv1`` .. ``conv5``, ``fc1`` .. ``fc3``): they are what a
user selects for decomposition.
"""

from collections import OrderedDict

from torch import nn


class AlexNet(nn.Sequential):
    """conv 11x11/4 (64), 5x5 (192), 3x3 (384, 256, 256); classifier 9216-4096-1024-classes.

    fvcore: 698.9 M MACs and 44.4 M params at 224x224 (see tests/test_models.py).
    """

    input_size = 224

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(3, 64, 11, stride=4, padding=2),
                relu1=nn.ReLU(inplace=True),
                pool1=nn.MaxPool2d(3, stride=2),
                conv2=nn.Conv2d(64, 192, 5, padding=2),
                relu2=nn.ReLU(inplace=True),
                pool2=nn.MaxPool2d(3, stride=2),
                conv3=nn.Conv2d(192, 384, 3, padding=1),
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(384, 256, 3, padding=1),
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(256, 256, 3, padding=1),
                relu5=nn.ReLU(inplace=True),
                pool5=nn.MaxPool2d(3, stride=2),
                avgpool=nn.AdaptiveAvgPool2d((6, 6)),
                flatten=nn.Flatten(),
                drop1=nn.Dropout(dropout),
                fc1=nn.Linear(256 * 6 * 6, 4096),
                relu6=nn.ReLU(inplace=True),
                drop2=nn.Dropout(dropout),
                fc2=nn.Linear(4096, 1024),
                relu7=nn.ReLU(inplace=True),
                fc3=nn.Linear(1024, num_classes),
            )
        )
