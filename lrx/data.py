"""CIFAR-10 as a LightningDataModule, read from either of its two on-disk layouts.

Accepted layouts under ``root`` (``root`` may also be the batch folder itself):
- binary: ``cifar-10-batches-bin/`` with ``data_batch_{1..5}.bin`` and ``test_batch.bin``, each
  record 1 label byte + 3072 pixel bytes (R, G, B planes, 32x32 row-major);
- torchvision: ``cifar-10-batches-py/`` (what ``torchvision.datasets.CIFAR10`` downloads).
With ``download=True`` and neither present, torchvision downloads the second.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

RECORD_BYTES = 1 + 3 * 32 * 32
BINARY_DIR = "cifar-10-batches-bin"
PYTHON_DIR = "cifar-10-batches-py"
# Published per-channel statistics of the 50,000 training images (0-1 scale).
MEAN = (0.4914009, 0.4821584, 0.4465309)
STD = (0.2470322, 0.2434851, 0.2615879)


class DataRootError(FileNotFoundError):
    """The data root holds neither CIFAR-10 layout."""


class CorruptBatchError(ValueError):
    """A binary batch file is truncated or otherwise not a whole number of records."""


def default_root() -> str:
    """``$LRX_DATA_ROOT`` if set, else ``./data``."""
    return os.environ.get("LRX_DATA_ROOT", "./data")


def _layout_help(root: Path) -> str:
    return (
        f"CIFAR-10 data root {str(root)!r} holds neither accepted layout: "
        f"'{BINARY_DIR}/' (official binary batches data_batch_1..5.bin, test_batch.bin) or "
        f"'{PYTHON_DIR}/' (torchvision's download). Set data.root (or $LRX_DATA_ROOT) to the "
        "folder that contains one of them, or data.download=true where the network allows."
    )


def find_layout(root: str | os.PathLike) -> tuple[str, Path]:
    """Return ``("binary" | "torchvision", folder)`` for the layout found under ``root``."""
    root = Path(root).expanduser()
    for name, kind in ((BINARY_DIR, "binary"), (PYTHON_DIR, "torchvision")):
        for folder in (root / name, root):
            if folder.name == name and folder.is_dir():
                return kind, folder
    raise DataRootError(_layout_help(root))


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch: images ``(n, 32, 32, 3)`` uint8 and labels ``(n,)`` int64."""
    if not path.is_file():
        raise DataRootError(f"missing CIFAR-10 batch file {str(path)!r}")
    raw = np.fromfile(path, dtype=np.uint8)
    n, rest = divmod(raw.size, RECORD_BYTES)
    if rest or n == 0:
        raise CorruptBatchError(
            f"CIFAR-10 batch file {str(path)!r} has {raw.size} bytes; expected a whole, non-zero number "
            f"of records of {RECORD_BYTES} bytes each (1 label byte + 3072 pixel bytes): the file is truncated or corrupt"
        )
    records = raw.reshape(n, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise CorruptBatchError(f"CIFAR-10 batch file {str(path)!r} has label {labels.max()}; valid labels are 0-9")
    images = records[:, 1:].reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch of torchvision's layout: images ``(n, 32, 32, 3)``, labels ``(n,)``."""
    if not path.is_file():
        raise DataRootError(f"missing CIFAR-10 batch file {str(path)!r}")
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != RECORD_BYTES - 1 or len(data) != len(labels):
        raise CorruptBatchError(
            f"CIFAR-10 batch file {str(path)!r} holds data of shape {data.shape} and {len(labels)} labels; "
            f"expected (n, {RECORD_BYTES - 1}) and n labels"
        )
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def load_cifar10(root: str | os.PathLike, train: bool, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All images ``(n, 32, 32, 3)`` uint8 and labels ``(n,)`` of one split.

    Training batches must all hold the same number of records (10,000 in the real data), so a
    file cut at a record boundary is caught too; the test batch may be partial.
    """
    try:
        kind, folder = find_layout(root)
    except DataRootError:
        if not download:
            raise
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=train, download=True)
        kind, folder = find_layout(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    read = read_binary_batch if kind == "binary" else read_python_batch
    paths = [folder / (f"{name}.bin" if kind == "binary" else name) for name in names]
    parts = [read(path) for path in paths]
    sizes = [len(p[1]) for p in parts]
    if len(set(sizes)) > 1:
        shortest = paths[sizes.index(min(sizes))]
        raise CorruptBatchError(
            f"CIFAR-10 batch file {str(shortest)!r} holds {min(sizes)} records, the other training "
            f"batches {max(sizes)} (records of {RECORD_BYTES} bytes): the file is truncated"
        )
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class CIFAR10Tensors(Dataset):
    """Images as normalised float tensors, with optional flip + padded random crop and resize."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = False, resize: int | None = None):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (n, 3, 32, 32) uint8
        self.labels = torch.from_numpy(labels)
        self.augment = augment
        self.resize = resize
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.images[i].float() / 255 - self.mean) / self.std  # (3, 32, 32)
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            x = F.pad(x, (4, 4, 4, 4))
            dy, dx = torch.randint(0, 9, (2,)).tolist()
            x = x[:, dy : dy + 32, dx : dx + 32]
        if self.resize and self.resize != 32:
            x = F.interpolate(x[None], size=self.resize, mode="bilinear", align_corners=False)[0]
        return x, self.labels[i]


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 with a seeded validation split held out of the 50,000 training images.

    ``train`` (augmented), ``val`` and ``calibration`` (training images, no augmentation) come
    from the training batches; ``test`` from the test batch (only 1,000 images in the binary
    copy shipped here: see its PROVENANCE.md).
    """

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 500,
        val_size: int = 5000,
        split_seed: int = 0,
        num_workers: int = 0,
        resize: int | None = None,
        augment: bool = True,
        download: bool = False,
    ):
        super().__init__()
        self.root = Path(root or default_root()).expanduser()
        if val_size < 0 or val_size >= 50_000:
            raise ValueError(f"data.val_size={val_size} is invalid; valid values are 0 .. 49999")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed = val_size, split_seed
        self.num_workers, self.resize, self.augment, self.download = num_workers, resize, augment, download
        self.train_set = self.val_set = self.test_set = self.calibration_set = None

    def prepare_data(self) -> None:
        if self.download:
            load_cifar10(self.root, train=True, download=True)
            load_cifar10(self.root, train=False, download=True)

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) indices: a permutation seeded by ``split_seed``, val first."""
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        return perm[self.val_size :], perm[: self.val_size]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_cifar10(self.root, train=True)
        train_idx, val_idx = (i.numpy() for i in self.split_indices(len(labels)))
        self.train_set = CIFAR10Tensors(images[train_idx], labels[train_idx], self.augment, self.resize)
        self.calibration_set = CIFAR10Tensors(images[train_idx], labels[train_idx], False, self.resize)
        self.val_set = CIFAR10Tensors(images[val_idx], labels[val_idx], False, self.resize)
        self.test_set = CIFAR10Tensors(*load_cifar10(self.root, train=False), False, self.resize)

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool, generator=None) -> DataLoader:
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
        """Shuffled, un-augmented batches of the training split (never val or test)."""
        return self._loader(
            self.calibration_set, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
