"""CIFAR-100 in both layouts, from tiny files made here (no CIFAR-100 copy on this machine)."""

import pickle

import numpy as np
import pytest
import torch

from lrx.data import CIFAR100_SPEC, CIFAR100DataModule, CorruptBatchError, DataRootError, load_cifar100

N_TRAIN, N_TEST = 20, 10


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel planes (n, 3, 32, 32), coarse labels (n,) and fine labels (n,), the coarse ones unlike the fine."""
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, 100, n)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), fine // 5, fine


def _write(root, layout: str) -> None:
    folder = root / ("cifar-100-binary" if layout == "binary" else "cifar-100-python")
    folder.mkdir(parents=True)
    for name, n, seed in (("train", N_TRAIN, 0), ("test", N_TEST, 1)):
        planes, coarse, fine = _split(n, seed)
        if layout == "binary":
            labels = np.stack([coarse, fine], axis=1).astype(np.uint8)
            np.concatenate([labels, planes.reshape(n, -1)], axis=1).tofile(folder / f"{name}.bin")
        else:
            entry = {"data": planes.reshape(n, -1), "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()}
            with open(folder / name, "wb") as f:
                pickle.dump(entry, f)


@pytest.mark.parametrize("layout", ["binary", "python"])
def test_both_layouts_give_the_images_and_fine_labels(tmp_path, layout):
    _write(tmp_path, layout)
    for train, (n, seed) in ((True, (N_TRAIN, 0)), (False, (N_TEST, 1))):
        images, labels = load_cifar100(tmp_path, train=train)
        planes, _, fine = _split(n, seed)
        assert images.shape == (n, 32, 32, 3) and labels.shape == (n,)
        np.testing.assert_array_equal(images, planes.transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(labels, fine)


@pytest.mark.parametrize("layout", ["binary", "python"])
def test_module_splits_and_loads_batches(tmp_path, layout):
    _write(tmp_path, layout)
    dm = CIFAR100DataModule(root=str(tmp_path), val_size=5, split_seed=1, batch_size=4, eval_batch_size=6)
    assert (dm.name, dm.num_classes, dm.input_size, dm.mean) == ("cifar100", 100, 32, CIFAR100_SPEC.mean)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set), len(dm.calibration_set)) == (15, 5, N_TEST, 15)
    train_idx, val_idx = dm.split_indices(N_TRAIN)
    fine = torch.from_numpy(_split(N_TRAIN, 0)[2])
    assert torch.equal(dm.val_set.labels, fine[val_idx]) and torch.equal(dm.train_set.labels, fine[train_idx])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xt, yt = next(iter(dm.test_dataloader()))
    assert xt.shape == (6, 3, 32, 32) and torch.equal(yt, torch.from_numpy(_split(N_TEST, 1)[2][:6]))
    mean = torch.tensor(CIFAR100_SPEC.mean).view(3, 1, 1)
    std = torch.tensor(CIFAR100_SPEC.std).view(3, 1, 1)
    pixels = torch.from_numpy(_split(N_TEST, 1)[0][:6]).float() / 255  # (6, 3, 32, 32)
    torch.testing.assert_close(xt, (pixels - mean) / std)  # the CIFAR-100 statistics, not CIFAR-10's


@pytest.mark.parametrize("make", ["missing", "empty", "cifar10-only"])
def test_bad_root_names_path_and_both_layouts(tmp_path, make):
    root = tmp_path / "nowhere"
    if make != "missing":
        root.mkdir()
    if make == "cifar10-only":
        (root / "cifar-10-batches-bin").mkdir()
    with pytest.raises(DataRootError) as e:
        CIFAR100DataModule(root=str(root)).setup()
    msg = str(e.value)
    assert str(root) in msg and "cifar-100-binary" in msg and "cifar-100-python" in msg and "CIFAR-100" in msg


@pytest.mark.parametrize("layout, name", [("binary", "train.bin"), ("binary", "test.bin"), ("python", "train")])
def test_truncated_file_is_named(tmp_path, layout, name):
    _write(tmp_path, layout)
    path = next(tmp_path.iterdir()) / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptBatchError) as e:
        CIFAR100DataModule(root=str(tmp_path), val_size=5).setup()
    assert str(path) in str(e.value) and "truncated" in str(e.value)
    if layout == "binary":
        assert "3074" in str(e.value)  # 2 label bytes + 3072 pixel bytes


def test_fine_label_above_99_is_caught(tmp_path):
    _write(tmp_path, "binary")
    path = tmp_path / "cifar-100-binary" / "train.bin"
    raw = np.fromfile(path, dtype=np.uint8).reshape(N_TRAIN, 3074)
    raw[3, 1] = 100  # the fine label of record 3
    raw.tofile(path)
    with pytest.raises(CorruptBatchError, match=r"train.bin.*label 100.*0-99"):
        load_cifar100(tmp_path, train=True)


def test_missing_test_file_is_named(tmp_path):
    _write(tmp_path, "python")
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataRootError, match="cifar-100-python/test"):
        CIFAR100DataModule(root=str(tmp_path), val_size=5).setup()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_classes": 10}, ["data.num_classes=10", "valid: 100"]),
        ({"name": "cifar10"}, ["data.name='cifar10'", "'cifar100'"]),
        ({"val_size": 0}, ["data.val_size=0", "1 .. 49999"]),
    ],
)
def test_bad_arguments_name_the_key(tmp_path, kwargs, words):
    with pytest.raises(ValueError) as e:
        CIFAR100DataModule(root=str(tmp_path), **kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_val_size_must_leave_training_images(tmp_path):
    _write(tmp_path, "binary")
    with pytest.raises(ValueError, match=r"data.val_size=20 .* 20 training images"):
        CIFAR100DataModule(root=str(tmp_path), val_size=N_TRAIN).setup()
