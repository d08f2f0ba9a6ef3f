"""The pipeline end to end on networks and data it was not written for: a torchvision ResNet-18 on
FakeData, and an ImageFolder tree of PNGs the test makes."""

import numpy as np
import pytest
from omegaconf import open_dict
from PIL import Image

from lrx.run.job import prepare
from lrx.run.stages import run
from tests.conftest import compose_cfg
from tests.helpers.methods import one_thread  # noqa: F401
from tests.helpers.timing import QUICK_OVERRIDES

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: a second thread only waits for its turn

FEW = [
    "model.epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "latency.batch_sizes=[4]",
    *QUICK_OVERRIDES,
    "logger=none",
    "callbacks.cost=null",
]


def _run(tmp_path, overrides: list[str]) -> dict:
    cfg = compose_cfg([*overrides, *FEW, f"baseline.cache_dir={tmp_path / 'cache'}"], run_dir=tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # as lrx.train receives it
    return run(prepare(cfg), tmp_path)


@pytest.mark.slow
def test_a_torchvision_resnet18_on_fake_data(tmp_path):
    results = _run(
        tmp_path,
        [
            "model=torchvision",
            "model.arch=resnet18",
            "data=fake",
            "decomp=scheme2",
            "decomp.bases=16",
            "latency.guard=false",
        ],
    )
    assert results["status"] == "complete" and results["model"] == "resnet18" and results["dataset"] == "fake"
    assert len(results["layers"]) == 17 and all(r["method"] == "scheme2" for r in results["layers"])
    assert set(results["skipped"]) == {f"layer{i}.0.downsample.0" for i in (2, 3, 4)}
    assert all("1x1 kernel" in why for why in results["skipped"].values())
    assert results["speedup"]["conv"]["cpu"] > 0 and results["speedup"]["macs"] > 1


def _image_folder(root, classes=("cat", "dog", "owl"), per_class=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


@pytest.mark.slow
def test_an_image_folder_of_pngs_end_to_end(tmp_path):
    root = _image_folder(tmp_path / "images")
    results = _run(
        tmp_path,
        [
            f"data.root={root}",
            "data=imagefolder",
            "data.num_classes=3",
            "data.input_size=32",
            "data.resize_size=36",
            "data.val_size=6",
            "data.batch_size=8",
            "data.eval_batch_size=8",
            "data.num_workers=0",
            "decomp=scheme2",
            "decomp.bases=16",
            "latency.guard=false",
            "data_recon=lstsq",
            "data_recon.batches=2",
            "data_recon.batch_size=8",
        ],
    )
    assert results["dataset"] == "imagefolder" and results["config"]["model"]["net"]["num_classes"] == 3
    (layer,) = results["layers"]
    assert layer["name"] == "conv2" and "data_recon" in layer
    assert list(results["stages"]) == ["filter", "data"]


def test_the_readmes_own_network_example(tmp_path, tiny_root):
    results = _run(
        tmp_path,
        [
            f"data.root={tiny_root}",
            "data.val_size=10",
            "model=custom",
            "model.net._target_=tests.helpers.tiny.TinyNet",
            "model.name=tiny",
            "decomp=scheme2",
            "decomp.layers=all",
            "decomp.bases=8",
            "latency.guard=false",
        ],
    )
    assert results["model"] == "tiny" and [r["name"] for r in results["layers"]] == ["0", "2"]
    assert all(r["method"] == "scheme2" and r["bases"] == 8 for r in results["layers"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        ["model=resnet20_cifar"],
        ["model=torchvision", "model.arch=densenet121"],
        ["model=torchvision", "model.arch=vgg11_bn", "decomp.layers=[features.4,features.8,features.11]"],
    ],
)
def test_residual_and_dense_networks_through_every_stage(model, tmp_path):
    """The planner, data reconstruction (through residual adds and dense concatenations) and
    fine-tuning, on a few batches of FakeData."""
    results = _run(
        tmp_path,
        [
            *model,
            "data=fake",
            "decomp=plan",
            "planner.methods=[scheme2,channel_svd]",
            "planner.target_speedup=1.5",
            "planner.metric=macs",
            "planner.error=filter",
            "latency.guard=false",
            "data_recon=lstsq",
            "data_recon.batches=2",
            "data_recon.batch_size=16",
            "finetune=kd",
            "finetune.epochs=1",
        ],
    )
    assert list(results["stages"]) == ["filter", "data", "finetune"]
    assert len(results["layers"]) >= 1 and all("data_recon" in r for r in results["layers"])
    assert results["plan"]["predicted_conv_speedup"] >= 1.5 and results["speedup"]["macs"] > 1
