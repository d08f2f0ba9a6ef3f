"""FakeDataModule: random images of any size, seeded, normalised, in disjoint splits."""

import pytest
import torch

from lrx.data import FakeDataModule


def _module(**kw) -> FakeDataModule:
    kw = {
        "num_classes": 5,
        "input_size": 24,
        "train_size": 40,
        "val_size": 12,
        "test_size": 10,
        "batch_size": 8,
        "eval_batch_size": 6,
        **kw,
    }
    dm = FakeDataModule(**kw)
    dm.setup("fit")
    return dm


def _images(ds) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])  # (n, 3, s, s)


def test_loaders_yield_the_configured_shapes_and_labels():
    dm = _module()
    assert (dm.name, dm.num_classes, dm.input_size) == ("fake", 5, 24)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set), len(dm.calibration_set)) == (40, 12, 10, 40)
    for loader, n in [
        (dm.train_dataloader(), 8),
        (dm.val_dataloader(), 6),
        (dm.test_dataloader(), 6),
        (dm.calibration_dataloader(4, seed=0), 4),
    ]:
        x, y = next(iter(loader))
        assert x.shape == (n, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    labels = torch.tensor([y for _, y in dm.train_set])
    assert labels.min() >= 0 and labels.max() < 5 and len(labels.unique()) > 1


def test_images_are_normalised():
    x = _images(_module(train_size=64, input_size=16).train_set)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_seeded_and_splits_disjoint():
    dm, again, other = _module(), _module(), _module(split_seed=1)
    train, val, test = (_images(ds).flatten(1) for ds in (dm.train_set, dm.val_set, dm.test_set))
    assert torch.equal(train, _images(again.train_set).flatten(1))
    assert not torch.equal(train, _images(other.train_set).flatten(1))
    keys = [{row.numpy().tobytes() for row in t} for t in (train, val, test)]
    assert len(keys[0]) == 40 and keys[0].isdisjoint(keys[1]) and keys[0].isdisjoint(keys[2])
    assert keys[1].isdisjoint(keys[2])


def test_calibration_is_training_images_in_a_seeded_order():
    dm = _module()
    a = torch.cat([x for x, _ in dm.calibration_dataloader(8, seed=3)])
    assert torch.equal(a, torch.cat([x for x, _ in dm.calibration_dataloader(8, seed=3)]))
    assert not torch.equal(a, torch.cat([x for x, _ in dm.calibration_dataloader(8, seed=4)]))
    train = {x.numpy().tobytes() for x in _images(dm.train_set)}
    assert {x.numpy().tobytes() for x in a} == train


@pytest.mark.parametrize(
    "key, value, valid",
    [
        ("train_size", 0, ">= 1"),
        ("val_size", 0, ">= 1"),
        ("test_size", -1, ">= 1"),
        ("num_classes", 1, ">= 2"),
        ("input_size", 0, ">= 1"),
    ],
)
def test_bad_sizes_fail_in_init(key, value, valid):
    with pytest.raises(ValueError, match=rf"data.{key}={value} is invalid; valid: an integer {valid}"):
        FakeDataModule(**{key: value})
