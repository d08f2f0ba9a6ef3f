"""Every config group option composes, and every instantiable node instantiates."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.conftest import CONF, compose_cfg, run_train


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "decomp", "trainer", "logger", "callbacks", "experiment"])
def test_every_option_composes(group, tmp_path):
    for option in _options(group):
        cfg = compose_cfg([f"{group}={option}"], tmp_path)
        assert cfg.model.name and cfg.data.root is not None
        assert "bases" in cfg.decomp and "lam" in cfg.decomp


@pytest.mark.parametrize("model", _options("model"))
def test_models_and_data_instantiate(model, tmp_path):
    cfg = compose_cfg([f"model={model}"], tmp_path)
    net = instantiate(cfg.model.net)
    assert net.input_size == cfg.model.input_size == cfg.data.resize
    dm = instantiate(cfg.data)
    assert dm.resize == cfg.model.input_size


@pytest.mark.parametrize("logger", _options("logger"))
def test_loggers_and_callbacks_instantiate(logger, tmp_path):
    cfg = compose_cfg([f"logger={logger}"], tmp_path)
    for node in list((cfg.logger or {}).values()) + list((cfg.callbacks or {}).values()):
        assert instantiate(node) is not None


def test_trainer_instantiates(tmp_path):
    cfg = compose_cfg(["experiment=smoke"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_epochs == 1


def test_the_users_sweep_command_composes(tmp_path):
    cfg = compose_cfg(["model=alexnet", "decomp.bases=8"], tmp_path)
    assert cfg.decomp.bases == 8 and cfg.data.resize == 224
    assert Path(cfg.hydra.sweep.dir).parts[0] == "outputs"


@pytest.mark.parametrize("group, bad", [("model", "resnet9000"), ("data", "imagenet")])
def test_unknown_option_lists_valid_choices(group, bad, tmp_path):
    res = run_train([f"{group}={bad}"], cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert bad in res.stderr
    for option in _options(group):
        assert option in res.stderr
    assert not list(tmp_path.rglob("results.json"))
