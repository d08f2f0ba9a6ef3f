"""Entry point: ``python -m lrx.train [overrides] [-m]`` (Hydra; config in conf/train.yaml)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from lrx.pipeline import prepare, run

log = logging.getLogger("lrx")

# Errors that mean "the input is wrong": reported in one line, not as a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def _instantiate_all(node: DictConfig | None) -> list:
    return [instantiate(v) for v in (node or {}).values() if v is not None and "_target_" in v]


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        job = prepare(cfg)
    except USER_ERRORS as e:
        log.error("%s", e)
        sys.exit(f"lrx: error: {e}")
    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    return run(job, run_dir, loggers, callbacks)


if __name__ == "__main__":
    main()
