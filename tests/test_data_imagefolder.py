"""ImageFolderDataModule on small PNG trees made here: both layouts end to end, and its errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from lrx.data import CorruptImageError, DataRootError, ImageFolderDataModule
from lrx.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

CLASSES = ["bird", "cat", "dog"]  # class i's images are dominated by colour channel i


def _write_class(folder, label: int, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)  # (H, W, C)
        pixels[..., label] += 180
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")


def _write_tree(folder, n: int, seed: int = 0) -> None:
    for label, name in enumerate(CLASSES):
        _write_class(folder / name, label, n, seed + label)


def _module(root, **kw) -> ImageFolderDataModule:
    kw = {
        "num_classes": 3,
        "input_size": 32,
        "resize_size": 36,
        "batch_size": 8,
        "eval_batch_size": 8,
        "num_workers": 0,
        **kw,
    }
    return ImageFolderDataModule(root=str(root), **kw)


def _colour_labels(x: torch.Tensor) -> torch.Tensor:
    """The dominant colour channel of each image in x (B, 3, H, W), after undoing the normalisation."""
    pixels = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return pixels.mean((2, 3)).argmax(1)


def _check_loaders(dm: ImageFolderDataModule) -> None:
    loaders = [dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.calibration_dataloader(8, seed=1)]
    for loader in loaders:
        x, y = next(iter(loader))
        assert x.shape == (min(8, len(loader.dataset)), 3, 32, 32)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(_colour_labels(x), y)  # each image carries the label of its folder


def test_split_layout_end_to_end(tmp_path):
    _write_tree(tmp_path / "train", 12)
    _write_tree(tmp_path / "val", 4, seed=10)
    dm = _module(tmp_path)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.calibration_set)) == (36, 12, 36)
    assert dm.test_set.samples == dm.val_set.samples  # no test/: val again
    assert {label for _, label in dm.val_set.samples} == {0, 1, 2}
    assert all(f"/val/{CLASSES[label]}/" in path for path, label in dm.val_set.samples)
    _check_loaders(dm)
    xv, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(xv, next(iter(dm.val_dataloader()))[0])  # evaluation is not augmented


def test_split_layout_uses_test_folder_when_present(tmp_path):
    _write_tree(tmp_path / "train", 12)
    _write_tree(tmp_path / "val", 4, seed=10)
    _write_tree(tmp_path / "test", 3, seed=20)
    dm = _module(tmp_path, eval_batch_size=9)
    dm.setup()
    assert len(dm.test_set) == 9 and all("/test/" in path for path, _ in dm.test_set.samples)
    _, y = next(iter(dm.test_dataloader()))
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("val_size, n_val", [(6, 6), (0.25, 9)])
def test_single_folder_is_split_by_a_seeded_val_size(tmp_path, val_size, n_val):
    _write_tree(tmp_path, 12)
    dm = _module(tmp_path, val_size=val_size, split_seed=3)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (36 - n_val, n_val, n_val)
    train, val = {p for p, _ in dm.train_set.samples}, {p for p, _ in dm.val_set.samples}
    assert train.isdisjoint(val) and len(train | val) == 36
    again = _module(tmp_path, val_size=val_size, split_seed=3)
    again.setup()
    other = _module(tmp_path, val_size=val_size, split_seed=4)
    other.setup()
    assert again.val_set.samples == dm.val_set.samples != other.val_set.samples
    _check_loaders(dm)


def test_calibration_batches_are_training_images_unaugmented(tmp_path):
    _write_tree(tmp_path, 4)
    dm = _module(tmp_path, val_size=3)
    dm.setup()
    first = [y.tolist() for _, y in dm.calibration_dataloader(3, seed=5)]
    assert first == [y.tolist() for _, y in dm.calibration_dataloader(3, seed=5)]  # seeded order
    assert dm.calibration_set.samples == dm.train_set.samples
    x1 = torch.cat([x for x, _ in dm.calibration_dataloader(3, seed=5)])
    assert torch.equal(x1, torch.cat([x for x, _ in dm.calibration_dataloader(3, seed=5)]))  # no random crop


def test_images_are_decoded_in_worker_processes(tmp_path):
    _write_tree(tmp_path, 4)
    dm = _module(tmp_path, val_size=3, num_workers=1, batch_size=9)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers
    x, y = next(iter(loader))
    assert x.shape == (9, 3, 32, 32) and torch.equal(_colour_labels(x), y)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataRootError, match=str(tmp_path / "absent")):
        _module(tmp_path / "absent").setup()


@pytest.mark.parametrize("make", ["no-class-folders", "class-folder-without-images"])
def test_empty_folder_is_named(tmp_path, make):
    (tmp_path / "notes.txt").write_text("not an image")
    if make == "class-folder-without-images":
        _write_tree(tmp_path, 2)
        (tmp_path / "cat" / "00.png").unlink()
        (tmp_path / "cat" / "01.png").unlink()
    with pytest.raises(DataRootError) as e:
        _module(tmp_path, val_size=1).setup()
    assert str(tmp_path) in str(e.value) and "holds no images" in str(e.value)
    assert make == "no-class-folders" or "cat" in str(e.value)


@pytest.mark.parametrize("present", ["train", "val"])
def test_missing_split_is_named(tmp_path, present):
    _write_tree(tmp_path / present, 2)
    missing = "val" if present == "train" else "train"
    with pytest.raises(DataRootError, match=f"has {present}/ but no {missing}/ \\(missing split\\)"):
        _module(tmp_path).setup()


def test_splits_with_different_classes_are_refused(tmp_path):
    _write_tree(tmp_path / "train", 2)
    _write_class(tmp_path / "val" / "bird", 0, 2, 0)
    _write_class(tmp_path / "val" / "cow", 1, 2, 0)
    with pytest.raises(ValueError, match=r"missing \[cat, dog\], extra \[cow\]"):
        _module(tmp_path).setup()


@pytest.mark.parametrize("where", ["train/dog/05.png", "val/bird/00.png"])
def test_unreadable_image_is_named_in_setup(tmp_path, where):
    _write_tree(tmp_path / "train", 6)
    _write_tree(tmp_path / "val", 2, seed=10)
    (tmp_path / where).write_bytes(b"\x89PNG but then garbage" * 10)
    with pytest.raises(CorruptImageError) as e:
        _module(tmp_path).setup()
    assert str(tmp_path / where) in str(e.value)


def test_truncated_png_is_caught(tmp_path):
    _write_tree(tmp_path, 3)
    path = tmp_path / "cat" / "01.png"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CorruptImageError, match=str(path)):
        _module(tmp_path, val_size=2).setup()


def test_num_classes_must_match_the_folders(tmp_path):
    _write_tree(tmp_path, 2)
    with pytest.raises(ValueError, match=r"data.num_classes=10 is invalid; valid: 3, .*bird, cat, dog"):
        _module(tmp_path, num_classes=10, val_size=1).setup()


@pytest.mark.parametrize("val_size", [6, 0.99])
def test_val_size_must_leave_a_training_image(tmp_path, val_size):
    _write_tree(tmp_path, 2)  # 6 images
    with pytest.raises(ValueError, match=rf"data.val_size={val_size} is invalid for the 6 training images"):
        _module(tmp_path, val_size=val_size).setup()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"val_size": 0}, ["data.val_size=0", "(0, 1)"]),
        ({"val_size": 1.0}, ["data.val_size=1.0", "(0, 1)"]),
        ({"resize_size": 31}, ["data.resize_size=31", "data.input_size=32"]),
        ({"input_size": 0}, ["data.input_size=0", ">= 1"]),
        ({"num_classes": 1}, ["data.num_classes=1", ">= 2"]),
        ({"name": ""}, ["data.name=''", "non-empty"]),
    ],
)
def test_bad_arguments_fail_in_init(tmp_path, kwargs, words):
    with pytest.raises(ValueError) as e:
        _module(tmp_path / "absent", **kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)
