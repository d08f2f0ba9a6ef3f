"""The contract between lrx's pipeline and a dataset: :class:`ImageDataModule`.

Every dataset is a subclass that only builds its datasets (:meth:`ImageDataModule.build_datasets`);
argument checks, the seeded validation split and the loaders live here, once.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lrx.io import PROJECT


class DataRootError(FileNotFoundError):
    """The data root, or a folder or file expected under it, is missing or holds no data."""


def default_root() -> str:
    """``$LRX_DATA_ROOT`` if set, else the project's ``data/``: the root when ``data.root`` is not given."""
    return os.environ.get("LRX_DATA_ROOT", str(PROJECT / "data"))


def invalid(key: str, value, valid: str) -> ValueError:
    """The error for config key ``data.<key>``: ``data.val_size=0 is invalid; valid: ...``."""
    return ValueError(f"data.{key}={value!r} is invalid; valid: {valid}")


def check_int(key: str, value, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in ``low .. high`` (no upper bound when ``high`` is None)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise invalid(key, value, f"an integer in {low} .. {high}" if high is not None else f"an integer >= {low}")
    return value


class Splits(NamedTuple):
    """The four datasets of a module; ``calibration`` holds the training images without augmentation."""

    train: Dataset
    val: Dataset
    test: Dataset
    calibration: Dataset


class ImageDataModule(L.LightningDataModule):
    """An image classification dataset as lrx's pipeline uses it.

    The pipeline calls ``prepare_data()`` and ``setup("fit")`` (which must read and check every file,
    so that bad data fails before any training), then uses:

    - ``train_dataloader()`` (shuffled, augmented), ``val_dataloader()`` and ``test_dataloader()``
      (in order, ``eval_batch_size``, never augmented); the validation split selects, test reports;
    - ``calibration_dataloader(batch_size, seed)``: TRAINING images without augmentation, shuffled
      by a generator seeded with ``seed`` (never validation or test images: they measure the result);
    - attributes, all set by ``__init__`` (before any file is read): ``name`` (e.g. ``"cifar10"``),
      ``num_classes``, ``input_size`` (the side of the square images the loaders yield), and ``mean``,
      ``std`` (the per-channel normalisation the images carry, 0-1 scale).

    Batches are ``(images (B, 3, input_size, input_size) float32, labels (B,) int64)``.
    Subclasses check their own arguments, then call this ``__init__``, and implement
    :meth:`build_datasets`; those that hold a validation split out of the training images use
    :meth:`split_indices` (``val_size`` images, permutation seeded by ``split_seed``).
    """

    name: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(
        self,
        *,
        name: str,
        num_classes: int,
        input_size: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        val_size: int | float,
        split_seed: int,
    ):
        super().__init__()
        if not isinstance(name, str) or not name:
            raise invalid("name", name, "a non-empty string (the dataset's name)")
        self.name = name
        self.num_classes = check_int("num_classes", num_classes, 2)  # a classifier needs two classes
        self.input_size = check_int("input_size", input_size, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.split_seed = check_int("split_seed", split_seed, 0)
        self.val_size = val_size  # checked by the subclass, whose rule depends on the dataset
        self.train_set = self.val_set = self.test_set = self.calibration_set = None

    def build_datasets(self) -> Splits:
        """Read and check the data; called once, by the first :meth:`setup`."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:  # Lightning calls setup again for each stage
            self.train_set, self.val_set, self.test_set, self.calibration_set = self.build_datasets()

    def val_count(self, n: int) -> int:
        """How many of ``n`` training images ``val_size`` holds out for validation."""
        return self.val_size

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) indices of ``n`` images: a permutation seeded by ``split_seed``, val first."""
        k = self.val_count(n)
        if not 1 <= k < n:
            raise ValueError(
                f"data.val_size={self.val_size!r} is invalid for the {n} training images found (it holds "
                f"out {k}); valid: between 1 and {n - 1} images, so that some are left to train on"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        return perm[k:], perm[:k]

    def _loader(self, ds: Dataset | None, batch_size: int, shuffle: bool, generator=None) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its loaders are asked for")
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def calibration_dataloader(self, batch_size: int, seed: int = 0) -> DataLoader:
        """Shuffled (by ``seed``), un-augmented batches of the training split (never val or test)."""
        return self._loader(
            self.calibration_set, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
