"""lrx's datasets, each an :class:`ImageDataModule` (the contract the pipeline relies on).

- :class:`CIFAR10DataModule`, :class:`CIFAR100DataModule`: CIFAR in its binary or torchvision layout;
- :class:`ImageFolderDataModule`: a tree of image files, one folder per class (ImageNet-style);
- :class:`FakeDataModule`: random images, to try any architecture without data.
"""

from lrx.data.base import DataRootError, ImageDataModule, Splits, default_root
from lrx.data.cifar import (
    BINARY_DIR,
    CIFAR10_SPEC,
    CIFAR100_SPEC,
    MEAN,
    PYTHON_DIR,
    RECORD_BYTES,
    STD,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CIFARDataModule,
    CifarSpec,
    CIFARTensors,
    CorruptBatchError,
    find_layout,
    load_cifar,
    load_cifar10,
    load_cifar100,
    read_binary_batch,
    read_python_batch,
)
from lrx.data.fake import FakeDataModule
from lrx.data.imagefolder import CorruptImageError, ImageFolderDataModule

__all__ = [
    "BINARY_DIR",
    "CIFAR10_SPEC",
    "CIFAR100_SPEC",
    "MEAN",
    "PYTHON_DIR",
    "RECORD_BYTES",
    "STD",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFARDataModule",
    "CIFARTensors",
    "CifarSpec",
    "CorruptBatchError",
    "CorruptImageError",
    "DataRootError",
    "FakeDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "Splits",
    "default_root",
    "find_layout",
    "load_cifar",
    "load_cifar10",
    "load_cifar100",
    "read_binary_batch",
    "read_python_batch",
]
