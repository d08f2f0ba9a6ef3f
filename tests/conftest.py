"""Shared fixtures: the data root, composed configs and a subprocess runner for lrx.train."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import lrx.run.schema  # noqa: F401  (the ConfigStore schemas that conf/ extends)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DATA_ROOT = Path(os.environ.get("LRX_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()


def pytest_configure(config) -> None:
    """Under pytest-xdist (``-n``), each worker computes on its share of the cores: torch's default,
    every core per process, would have the workers take each other's cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items) -> None:
    """A test marked ``run_if(cuda=True)`` (tests/helpers/run_if.py) carries the ``cuda`` marker too,
    so that ``pytest -m cuda`` (scripts/cuda_check.sh) selects it."""
    for item in items:
        if any(mark.kwargs.get("cuda") for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "cifar-10-batches-bin").is_dir():
        pytest.skip(f"CIFAR-10 not found under {DATA_ROOT}; set LRX_DATA_ROOT")
    return DATA_ROOT


def compose_cfg(overrides: list[str], run_dir: Path | None = None):
    """Compose conf/train.yaml as ``python -m lrx.train`` would, hydra interpolations included."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir or REPO / "outputs" / "tests")
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_train(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m lrx.train ARGS`` in ``cwd`` with the data root set, its outputs (runs, sweeps,
    the baseline cache) under ``cwd/outputs`` unless ARGS say where, deployed to torch-fp32 alone
    unless ARGS name the targets; returns the result."""
    full_env = {**os.environ, "LRX_DATA_ROOT": str(DATA_ROOT), "WANDB_SILENT": "true", **(env or {})}
    outputs = [] if any(a.startswith("paths.outputs=") for a in args) else [f"paths.outputs={Path(cwd) / 'outputs'}"]
    if not any(a.startswith("deploy.targets=") for a in args):  # no export and quantization for every target
        outputs.append("deploy.targets=[torch-fp32]")
    multirun = [a for a in args if a in ("-m", "--multirun")]  # Hydra takes the overrides as one run of words
    return subprocess.run(
        [sys.executable, "-m", "lrx.train", *multirun, *[a for a in args if a not in multirun], *outputs],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A CIFAR-10 root of 100 random training images: prepare() reads it in no time."""
    from tests.helpers.data import write_tiny_cifar10

    root = tmp_path_factory.mktemp("tiny-data")
    write_tiny_cifar10(root / "cifar-10-batches-bin")
    return root
