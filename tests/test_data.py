import pickle

import numpy as np
import pytest
import torch

from lrx.data import (
    RECORD_BYTES,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CorruptBatchError,
    DataRootError,
    FakeDataModule,
    ImageFolderDataModule,
    load_cifar10,
)


def _fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def _write_binary(folder, n_train=20, n_test=7):
    folder.mkdir(parents=True)
    for i, n in enumerate([n_train] * 5 + [n_test]):
        name = f"data_batch_{i + 1}.bin" if i < 5 else "test_batch.bin"
        planes, labels = _fake_split(n, i)
        records = np.concatenate([labels[:, None].astype(np.uint8), planes.reshape(n, -1)], axis=1)
        records.tofile(folder / name)


def _write_python(folder, n_train=20, n_test=7):
    folder.mkdir(parents=True)
    for i, n in enumerate([n_train] * 5 + [n_test]):
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        planes, labels = _fake_split(n, i)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": planes.reshape(n, -1), "labels": labels.tolist()}, f)


@pytest.mark.parametrize("layout", ["binary", "python"])
def test_both_layouts_parse_to_the_same_arrays(tmp_path, layout):
    if layout == "binary":
        _write_binary(tmp_path / "cifar-10-batches-bin")
    else:
        _write_python(tmp_path / "cifar-10-batches-py")
    images, labels = load_cifar10(tmp_path, train=True)
    expected = np.concatenate([_fake_split(20, i)[0] for i in range(5)]).transpose(0, 2, 3, 1)
    assert images.shape == (100, 32, 32, 3) and labels.shape == (100,)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, np.concatenate([_fake_split(20, i)[1] for i in range(5)]))
    test_images, _ = load_cifar10(tmp_path, train=False)
    assert test_images.shape == (7, 32, 32, 3)


def test_shared_binary_data_matches_provenance(data_root):
    images, labels = load_cifar10(data_root, train=True)
    assert images.shape == (50_000, 32, 32, 3)
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert np.bincount(labels).tolist() == [5000] * 10


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_bad_root_names_path_and_layouts(tmp_path, make):
    root = tmp_path / "nowhere"
    if make == "empty":
        root.mkdir()
    with pytest.raises(DataRootError) as e:
        CIFAR10DataModule(root=str(root)).setup()
    msg = str(e.value)
    assert str(root) in msg and "cifar-10-batches-bin" in msg and "cifar-10-batches-py" in msg


def test_truncated_batch_names_file_and_record_size(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    _write_binary(folder)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptBatchError) as e:
        load_cifar10(tmp_path, train=True)
    assert "data_batch_3.bin" in str(e.value) and str(RECORD_BYTES) in str(e.value)


def test_batch_cut_at_record_boundary_is_caught(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    _write_binary(folder)
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[: 5 * RECORD_BYTES])
    with pytest.raises(CorruptBatchError, match="data_batch_2.bin"):
        load_cifar10(tmp_path, train=True)


def test_validation_split_is_seeded_disjoint_and_sized(tmp_path):
    _write_binary(tmp_path / "cifar-10-batches-bin")
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=30, split_seed=3)
    train_idx, val_idx = dm.split_indices(100)
    again = CIFAR10DataModule(root=str(tmp_path), val_size=30, split_seed=3).split_indices(100)
    other = CIFAR10DataModule(root=str(tmp_path), val_size=30, split_seed=4).split_indices(100)
    assert len(val_idx) == 30 and len(train_idx) == 70
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert torch.equal(val_idx, again[1]) and not torch.equal(val_idx, other[1])


def test_loaders_normalise_augment_and_resize(tmp_path):
    _write_binary(tmp_path / "cifar-10-batches-bin")
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=10, batch_size=8, eval_batch_size=8, resize=64)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, _ = next(iter(dm.val_dataloader()))
    xv2, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(xv, xv2)  # no augmentation outside training
    assert len(dm.calibration_set) == len(dm.train_set) == 90


def test_calibration_batches_come_from_the_training_split_only(tmp_path):
    _write_binary(tmp_path / "cifar-10-batches-bin")
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=30, augment=False)
    dm.setup()
    key = lambda x: x.numpy().tobytes()  # noqa: E731 - images are random, hence unique
    train = {key(dm.train_set[i][0]) for i in range(len(dm.train_set))}
    held_out = {key(ds[i][0]) for ds in (dm.val_set, dm.test_set) for i in range(len(ds))}
    seen = {key(x) for xb, _ in dm.calibration_dataloader(batch_size=16) for x in xb}
    assert seen == train and seen.isdisjoint(held_out)


def test_cifar10_arguments_must_match_the_dataset(tmp_path):
    for kwargs, key, valid in [
        ({"num_classes": 100}, "data.num_classes=100", "10"),
        ({"name": "cifar100"}, "data.name='cifar100'", "'cifar10'"),
        ({"input_size": 64}, "data.input_size=64", "32"),
        ({"val_size": 0}, "data.val_size=0", "1 .. 49999"),
        ({"val_size": 50_000}, "data.val_size=50000", "1 .. 49999"),
        ({"resize": 0}, "data.resize=0", ">= 1"),
    ]:
        with pytest.raises(ValueError) as e:
            CIFAR10DataModule(root=str(tmp_path), **kwargs)  # no file is read: tmp_path is empty
        assert key in str(e.value) and valid in str(e.value), str(e.value)


def test_val_size_beyond_the_images_found_fails_in_setup(tmp_path):
    _write_binary(tmp_path / "cifar-10-batches-bin")  # 100 training images
    with pytest.raises(ValueError, match=r"data.val_size=100 .* 100 training images.* 1 and 99"):
        CIFAR10DataModule(root=str(tmp_path), val_size=100).setup()


def test_resize_sets_the_reported_input_size(tmp_path):
    assert CIFAR10DataModule(root=str(tmp_path)).input_size == 32
    assert CIFAR10DataModule(root=str(tmp_path), resize=224).input_size == 224


MODULES = {
    "cifar10": lambda root, **kw: CIFAR10DataModule(root=root, **kw),
    "cifar100": lambda root, **kw: CIFAR100DataModule(root=root, **kw),
    "imagefolder": lambda root, **kw: ImageFolderDataModule(root=root, num_classes=3, **kw),
    "fake": lambda root, **kw: FakeDataModule(**kw),
}


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(
    "key, value, valid",
    [
        ("batch_size", 0, "an integer >= 1"),
        ("eval_batch_size", 0, "an integer >= 1"),
        ("eval_batch_size", 2.5, "an integer >= 1"),
        ("num_workers", -1, "an integer >= 0"),
        ("split_seed", -1, "an integer >= 0"),
        ("val_size", 0, "1"),
    ],
)
def test_every_module_checks_the_loader_settings_in_init(tmp_path, module, key, value, valid):
    with pytest.raises(ValueError) as e:
        MODULES[module](str(tmp_path / "absent"), **{key: value})  # raised before the (absent) root is read
    assert f"data.{key}={value!r} is invalid; valid: " in str(e.value) and valid in str(e.value), str(e.value)


@pytest.mark.parametrize("module", MODULES)
def test_loaders_before_setup_say_so(tmp_path, module):
    dm = MODULES[module](str(tmp_path))
    assert isinstance(dm.num_classes, int) and dm.input_size >= 1 and len(dm.mean) == len(dm.std) == 3 and dm.name
    with pytest.raises(RuntimeError, match=r"setup\(\) must run"):
        dm.train_dataloader()
