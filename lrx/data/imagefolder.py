"""Any tree of image files with one folder per class (ImageNet and the like) as an ImageDataModule.

Layouts of ``root``:

- split: ``train/`` and ``val/``, optionally ``test/``, each holding the same class folders; ``val/``
  is the validation split, and the test split is ``test/`` where present, else ``val/`` again
  (``val_size`` is not used);
- single: the class folders directly under ``root``; ``val_size`` images (a count, or a fraction of
  all of them) are held out as the validation split by a permutation seeded with ``split_seed``,
  and are the test split too.

A root with a ``train/`` or ``val/`` folder is read as the split layout, so neither name can be a
class. Classes are the class folders' names, sorted (torchvision's ``ImageFolder``): label i is the
i-th. Setup opens and verifies every file (``PIL.Image.verify``: header, and chunk checksums for
PNG), so an unreadable one is named before training; decoding happens in the loaders' workers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader
from torchvision.transforms import v2

from lrx.data.base import DataRootError, ImageDataModule, Splits, default_root, invalid

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")  # the folders of the split layout, both required
LAYOUTS = (
    "data.root must hold train/ and val/ (optionally test/), each with one folder per class, "
    "or the class folders directly"
)


class CorruptImageError(ValueError):
    """An image file that PIL cannot open or verify."""


Sample = tuple[str, int]  # (path, label)


class ImageList(Dataset):
    """``(path, label)`` samples, decoded (RGB) and transformed when indexed: in the loader's workers."""

    def __init__(self, samples: list[Sample], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(default_loader(path)), label  # (3, input_size, input_size), label


def scan(folder: Path) -> tuple[list[str], list[Sample]]:
    """The class names and ``(path, label)`` samples of one folder of class folders (nothing is decoded)."""
    try:
        found = ImageFolder(folder)
    except FileNotFoundError as e:  # no class folder, or a class folder without images
        raise DataRootError(f"image folder {str(folder)!r} holds no images ({e}); {LAYOUTS}") from e
    return found.classes, found.samples


def verify(samples: list[Sample]) -> None:
    """Open and verify every image file; CorruptImageError naming the first that fails."""
    for path, _ in samples:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as e:  # PIL raises UnidentifiedImageError, SyntaxError, OSError, ... by format
            raise CorruptImageError(
                f"image file {path!r} cannot be read ({type(e).__name__}: {e}); remove or replace it"
            ) from e


def _preview(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _class_diff(classes: list[str], reference: list[str]) -> str:
    missing, extra = sorted(set(reference) - set(classes)), sorted(set(classes) - set(reference))
    return f"missing [{_preview(missing)}], extra [{_preview(extra)}]"


class ImageFolderDataModule(ImageDataModule):
    """Image folders (see the module's docstring for the layouts), ImageNet-normalised.

    Training images: ``RandomResizedCrop(input_size)`` + horizontal flip (``augment=False``: the
    evaluation transform instead); validation, test and calibration images: ``Resize(resize_size)``
    (shorter side) + ``CenterCrop(input_size)``. ``num_classes`` is the number of class folders:
    None counts them at setup; a number given must equal it, so that a config's model and data agree
    before training. ``val_size``
    (single layout only): a number of images (int >= 1) or a fraction of them (float in (0, 1));
    either way at least one image must be left to train on. ``verify_images=False`` skips the
    per-file check of setup (it opens every file once: minutes for ImageNet on a slow disk).
    """

    def __init__(
        self,
        root: str | None = None,
        *,
        num_classes: int | None = None,
        name: str = "imagefolder",
        input_size: int = 224,
        resize_size: int = 256,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        val_size: int | float = 0.1,
        split_seed: int = 0,
        num_workers: int = 2,
        augment: bool = True,
        verify_images: bool = True,
    ):
        super().__init__(
            name=name,
            num_classes=2 if num_classes is None else num_classes,  # checked now if given, else counted
            input_size=input_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_size=val_size,
            split_seed=split_seed,
        )
        count = isinstance(val_size, int) and not isinstance(val_size, bool) and val_size >= 1
        if not (count or isinstance(val_size, float) and 0 < val_size < 1):
            raise invalid("val_size", val_size, "an integer >= 1 (images) or a float in (0, 1) (a fraction of them)")
        if isinstance(resize_size, bool) or not isinstance(resize_size, int) or resize_size < input_size:
            raise invalid(
                "resize_size",
                resize_size,
                f"an integer >= data.input_size={input_size} (images are "
                "resized to it, then centre-cropped to input_size)",
            )
        self.num_classes = num_classes
        self.root = Path(root or default_root()).expanduser()
        self.resize_size, self.augment, self.verify_images = resize_size, augment, verify_images
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def val_count(self, n: int) -> int:
        return round(self.val_size * n) if isinstance(self.val_size, float) else self.val_size

    def transforms(self) -> tuple[v2.Compose, v2.Compose]:
        """(train, evaluation) transforms: PIL image -> normalised float tensor (3, input_size, input_size)."""
        end = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std), v2.ToPureTensor()]
        train = [v2.RandomResizedCrop(self.input_size, antialias=True), v2.RandomHorizontalFlip()]
        evaluate = [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.input_size)]
        return v2.Compose([v2.ToImage(), *train, *end]), v2.Compose([v2.ToImage(), *evaluate, *end])

    def _samples(self) -> tuple[Path, list[str], list[Sample], list[Sample], list[Sample]]:
        """(folder the classes come from, classes, train, val, test samples) of the root's layout."""
        root = self.root
        if not root.is_dir():
            raise DataRootError(f"image folder root {str(root)!r} does not exist; {LAYOUTS}")
        present = [s for s in SPLITS if (root / s).is_dir()]
        if not present:
            classes, samples = scan(root)
            train_idx, val_idx = self.split_indices(len(samples))
            val = [samples[i] for i in val_idx.tolist()]
            return root, classes, [samples[i] for i in train_idx.tolist()], val, val
        if len(present) == 1:
            missing = next(s for s in SPLITS if s not in present)
            raise DataRootError(
                f"image folder root {str(root)!r} has {present[0]}/ but no {missing}/ (missing split); {LAYOUTS}"
            )
        classes, train = scan(root / "train")
        splits = {}
        for s in ("val", "test"):
            if (root / s).is_dir():
                found, splits[s] = scan(root / s)
                if found != classes:
                    raise ValueError(
                        f"the class folders of {str(root / s)!r} differ from those of "
                        f"{str(root / 'train')!r}: {_class_diff(found, classes)}"
                    )
        return root / "train", classes, train, splits["val"], splits.get("test", splits["val"])

    def build_datasets(self) -> Splits:
        folder, classes, train, val, test = self._samples()
        if self.num_classes is None:
            self.num_classes = len(classes)
        if len(classes) != self.num_classes:
            raise invalid(
                "num_classes",
                self.num_classes,
                f"{len(classes)}, the number of class folders in {str(folder)!r} ({_preview(classes)})",
            )
        if self.verify_images:
            verify(list(dict.fromkeys(train + val + test)))  # test may be val: each file once
        train_tf, eval_tf = self.transforms()
        return Splits(
            train=ImageList(train, train_tf if self.augment else eval_tf),
            val=ImageList(val, eval_tf),
            test=ImageList(test, eval_tf),
            calibration=ImageList(train, eval_tf),
        )
