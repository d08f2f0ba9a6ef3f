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


@pytest.mark.parametrize("launcher, target", [
    ("basic", "BasicLauncher"), ("joblib", "JoblibLauncher"), ("submitit_slurm", "SlurmLauncher"),
    ("slurm", "SlurmLauncher"),
])
def test_every_launcher_composes(launcher, target, tmp_path):
    cfg = compose_cfg([f"hydra/launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(target)


@pytest.mark.parametrize("experiment, group", [("seed_table", "table/seed_table")])
def test_every_table_row_composes(experiment, group, tmp_path):
    rows = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert sorted(cfg.hydra.sweeper.params[f"+{group}"].split(",")) == rows
    schemes = {}
    for row in rows:
        cfg = compose_cfg([f"experiment={experiment}", f"+{group}={row}"], tmp_path)
        schemes[row] = cfg.decomp.scheme
        assert cfg.decomp.keep_slower  # a table shows each row's measured speed-up, below 1x too
        if cfg.decomp.scheme is not None:
            assert list(cfg.decomp.layers) == ["conv2"] and cfg.decomp.bases == 8
            assert cfg.decomp.lam.schedule == "fixed" and cfg.decomp.lam.start == 1e-4
    assert schemes == {"baseline": None, "s1_filter": 1, "s1_tuned": 1}


@pytest.mark.parametrize("experiment, schemes, targets, metric", [
    ("scheme_sweep", "[1],[2]", "1.5,2,3,4", "macs"),
    ("peer_table", "[1],[2],[tucker2],[cp]", "3,6", "macs"),
    ("planner_sweep", None, "2,3,4", "latency"),
])
def test_comparison_sweeps_run_all_three_stages_at_their_targets(tmp_path, experiment, schemes, targets, metric):
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    params = cfg.hydra.sweeper.params
    assert params.get("decomp.schemes") == schemes and params["decomp.target_speedup"] == targets
    assert cfg.decomp.target_metric == metric and list(cfg.decomp.layers) == ["conv2", "conv3", "conv4", "conv5"]
    assert cfg.decomp.data_recon.enabled and cfg.decomp.finetune.epochs >= 1
    # comparing methods keeps every method's layers; the planner's product keeps the guard
    assert cfg.decomp.keep_slower == (metric == "macs")
