"""What a user sees when something goes wrong: a model that cannot take the input size, a job of a
sweep that fails, a bug; and an image folder whose classes are counted, not configured."""

import json

import numpy as np
import pytest
from omegaconf import open_dict
from PIL import Image

from lrx.run.config import ConfigError
from lrx.run.job import prepare
from tests.conftest import REPO, compose_cfg, run_train
from tests.helpers.data import smoke_args


def _prepare(tmp_path, overrides):
    cfg = compose_cfg([*overrides, "logger=none", f"baseline.cache_dir={tmp_path / 'cache'}"], run_dir=tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # as lrx.train receives it
    return prepare(cfg)


def test_a_model_that_cannot_take_the_input_size_is_refused_in_one_line(tmp_path):
    overrides = ["model=torchvision", "model.arch=alexnet", "data=fake", "data.input_size=16", "decomp=none"]
    with pytest.raises(ConfigError) as e:
        _prepare(tmp_path, overrides)
    message = str(e.value)
    assert "\n" not in message and message.startswith("model.input_size=16: model 'alexnet' cannot take 16x16")


def test_an_image_folder_counts_its_classes(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "owl"):
        (tmp_path / "images" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(
                tmp_path / "images" / c / f"{i}.png"
            )
    overrides = [
        "data=imagefolder",
        f"data.root={tmp_path / 'images'}",
        "data.num_classes=null",
        "data.input_size=32",
        "data.resize_size=36",
        "data.val_size=3",
        "data.num_workers=0",
        "decomp=none",
    ]
    job = _prepare(tmp_path, overrides)
    assert job.datamodule.num_classes == 3 and job.cfg.data.num_classes == 3
    assert job.net.fc.out_features == 3  # the model is built for the classes found


@pytest.mark.slow
def test_a_failing_job_of_a_sweep_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_root):
    """Job 0 asks for more bases than conv2 has (a user error), job 1 is fine: job 1 still runs, job
    0 is recorded as failed, and the sweep ends in one line per failed job and a non-zero exit."""
    sweep = tmp_path / "sweep"
    args = [*smoke_args(tiny_root), "decomp.bases=999,8", f"hydra.sweep.dir={sweep}", "-m"]
    res = run_train(args, cwd=tmp_path)
    assert res.returncode != 0
    failed = json.loads((sweep / "0" / "results.json").read_text())
    assert failed["status"] == "failed" and "bases=999" in failed["error"]
    assert json.loads((sweep / "1" / "results.json").read_text())["status"] == "complete"
    assert "lrx: error: 1 sweep job(s) failed" in res.stderr and str(sweep / "0") in res.stderr


@pytest.mark.slow
def test_a_bug_keeps_its_traceback_in_train_log(tmp_path, tiny_root):
    run_dir = tmp_path / "run"
    args = [
        *smoke_args(tiny_root),
        "model=custom",
        "model.net._target_=tests.helpers.tiny.BrokenNet",
        f"hydra.run.dir={run_dir}",
    ]
    res = run_train(args, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})  # tests.helpers importable
    assert res.returncode != 0
    log = (run_dir / "train.log").read_text()
    assert "Traceback" in log and "KeyError: 'a bug'" in log
