"""Random images (torchvision's ``FakeData``) of any size and class count: try an architecture
end to end without any data on disk."""

from __future__ import annotations

import torch
from torchvision.datasets import FakeData
from torchvision.transforms import v2

from lrx.data.base import ImageDataModule, Splits, check_int


class FakeDataModule(ImageDataModule):
    """``train_size``, ``val_size`` and ``test_size`` random ``input_size`` x ``input_size`` images with
    random labels (nothing to learn; no augmentation), normalised.

    FakeData seeds each image by its index plus an offset: the splits take consecutive stretches of
    indices, starting at ``split_seed * (train_size + val_size + test_size)``, so they never share
    an image and a seed always gives the same images. Its pixels come out uniform on 0-255 (its
    N(0, 1) values cast to bytes), hence the mean 1/2 and std 1/sqrt(12).
    """

    def __init__(
        self,
        name: str = "fake",
        num_classes: int = 10,
        input_size: int = 32,
        train_size: int = 256,
        val_size: int = 64,
        test_size: int = 64,
        batch_size: int = 64,
        eval_batch_size: int = 64,
        split_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(
            name=name,
            num_classes=num_classes,
            input_size=input_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_size=val_size,
            split_seed=split_seed,
        )
        self.sizes = (
            check_int("train_size", train_size, 1),
            check_int("val_size", val_size, 1),
            check_int("test_size", test_size, 1),
        )
        self.mean, self.std = (0.5,) * 3, (12**-0.5,) * 3

    def build_datasets(self) -> Splits:
        transform = v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std), v2.ToPureTensor()]
        )  # (3, input_size, input_size)
        offset = self.split_seed * sum(self.sizes)
        splits = []
        for n in self.sizes:
            splits.append(
                FakeData(n, (3, self.input_size, self.input_size), self.num_classes, transform, random_offset=offset)
            )
            offset += n
        train, val, test = splits
        return Splits(train=train, val=val, test=test, calibration=train)
