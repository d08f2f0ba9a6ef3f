"""CIFAR-10 and CIFAR-100, each read from either of its two on-disk layouts.

Accepted layouts under ``root`` (``root`` may also be the layout's folder itself):

=========  ================================  =========================================
dataset    binary (official)                 torchvision (``datasets.CIFAR10/100``)
=========  ================================  =========================================
CIFAR-10   ``cifar-10-batches-bin/``:        ``cifar-10-batches-py/``: pickled
           ``data_batch_{1..5}.bin``,        ``data_batch_{1..5}``, ``test_batch``
           ``test_batch.bin``                (keys ``data``, ``labels``)
CIFAR-100  ``cifar-100-binary/``:            ``cifar-100-python/``: pickled ``train``,
           ``train.bin``, ``test.bin``       ``test`` (keys ``data``, ``fine_labels``)
=========  ================================  =========================================

A binary record is the label byte(s) (CIFAR-100: coarse, then fine; the fine label is used)
followed by 3072 pixel bytes (R, G, B planes, 32x32 row-major); a pickled ``data`` array is
``(n, 3072)`` in the same order. With ``download=True`` and neither layout present, torchvision
downloads the second.
"""

from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lrx.data.base import DataRootError, ImageDataModule, Splits, check_int, default_root, invalid

SIDE = 32  # CIFAR images are 32x32
PIXELS = 3 * SIDE * SIDE


class CorruptBatchError(ValueError):
    """A batch file is truncated, not a whole number of records, or holds bad labels."""


@dataclass(frozen=True)
class CifarSpec:
    """What tells CIFAR-10 and CIFAR-100 apart on disk, and their published statistics."""

    name: str  # the config's data.name
    title: str  # in messages
    num_classes: int
    binary_dir: str
    python_dir: str
    train_files: tuple[str, ...]  # torchvision's names; the binary files add ".bin"
    test_file: str
    label_bytes: int  # per binary record; the last one is the label used
    label_key: str  # of the pickled batches
    mean: tuple[float, float, float]  # per channel, 0-1 scale, of the 50,000 training images
    std: tuple[float, float, float]
    torchvision_class: str  # in torchvision.datasets, for download=True
    train_size: int = 50_000

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + PIXELS

    def paths(self, kind: str, folder: Path, train: bool) -> list[Path]:
        names = self.train_files if train else (self.test_file,)
        return [folder / (f"{n}.bin" if kind == "binary" else n) for n in names]


CIFAR10_SPEC = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    num_classes=10,
    binary_dir="cifar-10-batches-bin",
    python_dir="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    label_bytes=1,
    label_key="labels",
    mean=(0.4914009, 0.4821584, 0.4465309),
    std=(0.2470322, 0.2434851, 0.2615879),
    torchvision_class="CIFAR10",
)
CIFAR100_SPEC = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    num_classes=100,
    binary_dir="cifar-100-binary",
    python_dir="cifar-100-python",
    train_files=("train",),
    test_file="test",
    label_bytes=2,
    label_key="fine_labels",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    torchvision_class="CIFAR100",
)
# CIFAR-10's, kept as module constants for existing callers.
RECORD_BYTES = CIFAR10_SPEC.record_bytes
BINARY_DIR, PYTHON_DIR = CIFAR10_SPEC.binary_dir, CIFAR10_SPEC.python_dir
MEAN, STD = CIFAR10_SPEC.mean, CIFAR10_SPEC.std


def _layout_help(root: Path, spec: CifarSpec) -> str:
    binary = ", ".join(p.name for p in spec.paths("binary", Path(), True) + spec.paths("binary", Path(), False))
    return (
        f"{spec.title} data root {str(root)!r} holds neither accepted layout: "
        f"'{spec.binary_dir}/' (official binary files {binary}) or '{spec.python_dir}/' (torchvision's "
        "download). Set data.root (by default paths.data: $LRX_DATA_ROOT, else the project's data/) to the folder that "
        "contains one of them, or data.download=true where the network allows."
    )


def find_layout(root: str | os.PathLike, spec: CifarSpec = CIFAR10_SPEC) -> tuple[str, Path]:
    """Return ``("binary" | "torchvision", folder)`` for the layout of ``spec`` found under ``root``."""
    root = Path(root).expanduser()
    for name, kind in ((spec.binary_dir, "binary"), (spec.python_dir, "torchvision")):
        for folder in (root / name, root):
            if folder.name == name and folder.is_dir():
                return kind, folder
    raise DataRootError(_layout_help(root, spec))


def _missing(path: Path, spec: CifarSpec) -> DataRootError:
    return DataRootError(f"missing {spec.title} batch file {str(path)!r}")


def _check_labels(path: Path, labels: np.ndarray, spec: CifarSpec) -> None:
    bad = labels[(labels < 0) | (labels >= spec.num_classes)]
    if bad.size:
        raise CorruptBatchError(
            f"{spec.title} batch file {str(path)!r} has label {bad[0]}; valid labels are 0-{spec.num_classes - 1}"
        )


def read_binary_batch(path: Path, spec: CifarSpec = CIFAR10_SPEC) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary file: images ``(n, 32, 32, 3)`` uint8 and labels ``(n,)`` int64."""
    if not path.is_file():
        raise _missing(path, spec)
    raw = np.fromfile(path, dtype=np.uint8)
    n, rest = divmod(raw.size, spec.record_bytes)
    if rest or n == 0:
        raise CorruptBatchError(
            f"{spec.title} batch file {str(path)!r} has {raw.size} bytes; expected a whole, non-zero number of "
            f"records of {spec.record_bytes} bytes each ({spec.label_bytes} label byte(s) + {PIXELS} pixel bytes): "
            "the file is truncated or corrupt"
        )
    records = raw.reshape(n, spec.record_bytes)
    labels = records[:, spec.label_bytes - 1].astype(np.int64)
    _check_labels(path, labels, spec)
    images = records[:, spec.label_bytes :].reshape(n, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_python_batch(path: Path, spec: CifarSpec = CIFAR10_SPEC) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled file of torchvision's layout: images ``(n, 32, 32, 3)``, labels ``(n,)``."""
    if not path.is_file():
        raise _missing(path, spec)
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (EOFError, pickle.UnpicklingError) as e:
        raise CorruptBatchError(
            f"{spec.title} batch file {str(path)!r} cannot be unpickled ({e}): the file is truncated or corrupt"
        ) from e
    if not isinstance(entry, dict) or "data" not in entry or spec.label_key not in entry:
        raise CorruptBatchError(
            f"{spec.title} batch file {str(path)!r} is not a dict with keys 'data' and {spec.label_key!r}"
        )
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[spec.label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != PIXELS or len(data) != len(labels) or len(data) == 0:
        raise CorruptBatchError(
            f"{spec.title} batch file {str(path)!r} holds data of shape {data.shape} and {len(labels)} labels; "
            f"expected (n, {PIXELS}) and n labels, n > 0"
        )
    _check_labels(path, labels, spec)
    return np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)), labels


def load_cifar(
    root: str | os.PathLike, train: bool, spec: CifarSpec, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """All images ``(n, 32, 32, 3)`` uint8 and labels ``(n,)`` of one split of ``spec``'s dataset.

    Training batches must all hold the same number of records (CIFAR-10: 10,000 each in the real
    data), so a file cut at a record boundary is caught too; the test batch may be partial.
    """
    try:
        kind, folder = find_layout(root, spec)
    except DataRootError:
        if not download:
            raise
        dataset = getattr(importlib.import_module("torchvision.datasets"), spec.torchvision_class)
        dataset(str(root), train=train, download=True)
        kind, folder = find_layout(root, spec)
    read = read_binary_batch if kind == "binary" else read_python_batch
    paths = spec.paths(kind, folder, train)
    parts = [read(path, spec) for path in paths]
    sizes = [len(p[1]) for p in parts]
    if len(set(sizes)) > 1:
        shortest = paths[sizes.index(min(sizes))]
        raise CorruptBatchError(
            f"{spec.title} batch file {str(shortest)!r} holds {min(sizes)} records, the other training "
            f"batches {max(sizes)} (records of {spec.record_bytes} bytes): the file is truncated"
        )
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar10(root: str | os.PathLike, train: bool, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's :func:`load_cifar`."""
    return load_cifar(root, train, CIFAR10_SPEC, download)


def load_cifar100(root: str | os.PathLike, train: bool, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100's :func:`load_cifar` (fine labels, 0-99)."""
    return load_cifar(root, train, CIFAR100_SPEC, download)


class CIFARTensors(Dataset):
    """Images as normalised float tensors, with optional flip + 4-pixel padded random crop and resize."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, mean, std, augment: bool = False, resize: int | None = None
    ):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (n, 3, 32, 32) uint8
        self.labels = torch.from_numpy(labels)
        self.augment = augment
        self.resize = resize
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.images[i].float() / 255 - self.mean) / self.std  # (3, 32, 32)
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            x = F.pad(x, (4, 4, 4, 4))  # zeros: the mean colour, after normalisation
            dy, dx = torch.randint(0, 9, (2,)).tolist()
            x = x[:, dy : dy + SIDE, dx : dx + SIDE]
        if self.resize and self.resize != SIDE:
            x = F.interpolate(x[None], size=self.resize, mode="bilinear", align_corners=False)[0]  # (3, r, r)
        return x, self.labels[i]


class CIFARDataModule(ImageDataModule):
    """A CIFAR dataset with a seeded validation split held out of its 50,000 training images.

    ``train`` (augmented unless ``augment=False``), ``val`` and ``calibration`` (training images, no
    augmentation) come from the training files; ``test`` from the test file (for CIFAR-10, only 1,000
    images in the binary copy shipped in ../shared/data: see its PROVENANCE.md). ``name`` and
    ``num_classes`` default to, and must equal, the dataset's; ``input_size`` is the side of the
    stored images and must be 32; ``resize`` (when set and not 32) resizes every image, bilinear,
    and the ``input_size`` attribute then reports it.
    """

    spec: CifarSpec

    def __init__(
        self,
        root: str | None = None,
        name: str | None = None,
        num_classes: int | None = None,
        input_size: int = SIDE,
        batch_size: int = 256,
        eval_batch_size: int = 500,
        val_size: int = 5000,
        split_seed: int = 0,
        num_workers: int = 0,
        resize: int | None = None,
        augment: bool = True,
        download: bool = False,
    ):
        spec = self.spec
        name = spec.name if name is None else name
        num_classes = spec.num_classes if num_classes is None else num_classes
        if name != spec.name:
            raise invalid("name", name, f"{spec.name!r} ({type(self).__name__} reads {spec.title})")
        if num_classes != spec.num_classes:
            raise invalid("num_classes", num_classes, f"{spec.num_classes} (the classes of {spec.title})")
        if input_size != SIDE:
            raise invalid(
                "input_size", input_size, f"{SIDE} (the side of {spec.title}'s images; data.resize resizes them)"
            )
        check_int("val_size", val_size, 1, spec.train_size - 1)
        if resize is not None:
            check_int("resize", resize, 1)
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
        self.root = Path(root or default_root()).expanduser()
        self.resize, self.augment, self.download = resize, augment, download
        self.input_size = resize or SIDE
        self.mean, self.std = spec.mean, spec.std

    def prepare_data(self) -> None:
        if self.download:
            load_cifar(self.root, True, self.spec, download=True)
            load_cifar(self.root, False, self.spec, download=True)

    def build_datasets(self) -> Splits:
        images, labels = load_cifar(self.root, True, self.spec)
        train_idx, val_idx = (i.numpy() for i in self.split_indices(len(labels)))
        train = images[train_idx], labels[train_idx]

        def tensors(images, labels, augment=False):
            return CIFARTensors(images, labels, self.mean, self.std, augment, self.resize)

        return Splits(
            train=tensors(*train, self.augment),
            val=tensors(images[val_idx], labels[val_idx]),
            test=tensors(*load_cifar(self.root, False, self.spec)),
            calibration=tensors(*train),
        )


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10: 10 classes (see :class:`CIFARDataModule`)."""

    spec = CIFAR10_SPEC


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100: 100 classes, fine labels (see :class:`CIFARDataModule`)."""

    spec = CIFAR100_SPEC
