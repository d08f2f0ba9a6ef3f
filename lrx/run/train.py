"""The entry point of ``python -m lrx.train [overrides] [-m]`` (Hydra; config in conf/train.yaml)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lrx.deploy.onnx_export import ExportError
from lrx.io import PROJECT, check_writable, write_json
from lrx.lowrank.checks import DecompositionError
from lrx.results.files import RESULTS, read_finished
from lrx.run.job import prepare
from lrx.run.stages import run
from lrx.run.tracking import finish, log_results, make_loggers

log = logging.getLogger("lrx")


# Errors that mean "the input is wrong": reported in one line, not as a traceback (any other
# exception is a bug: its traceback goes to train.log and to the terminal).
USER_ERRORS = (ValueError, OSError)
# Faults found while running (a NaN/Inf in weights or logits, a solver or data reconstruction, a
# layer that cannot be decomposed, a file that cannot be written): one line too, naming the layer,
# stage or path; nothing is saved as a result.
RUN_FAULTS = (DecompositionError, FloatingPointError, OSError, ExportError)


def finished(run_dir: Path, cfg: DictConfig) -> dict | None:
    """The results in ``run_dir`` if they are complete and of this very config (a re-run of a
    killed sweep skips such jobs), else None: a partial, corrupt or other-config file does not count."""
    results, _ = read_finished(run_dir / RESULTS)
    return results if results and results.get("config") == OmegaConf.to_container(cfg, resolve=True) else None


def _sweep_group() -> str | None:
    """The sweep directory in a multirun (the W&B group of its jobs), else None."""
    hc = HydraConfig.get()
    return str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def _callbacks(cfg: DictConfig) -> list:
    return [instantiate(v) for v in (cfg.get("callbacks") or {}).values() if v is not None and "_target_" in v]


def _record_failure(run_dir: Path, cfg: DictConfig, e: BaseException) -> None:
    """A sweep job's failure, as its ``results.json`` (status ``failed``, the error): reports list
    it as unfinished with the reason, and a re-run of the sweep runs it again."""
    config = OmegaConf.to_container(cfg, resolve=False)
    write_json(run_dir / RESULTS, {"status": "failed", "error": f"{type(e).__name__}: {e}", "config": config})


def _fail(e: BaseException) -> NoReturn:
    """Log ``e`` (to train.log in the run directory) and exit with it in one line."""
    log.error("%s", e)
    sys.exit(f"lrx: error: {e}")


class WriteAccess(Callback):
    """A Hydra callback (``hydra.callbacks``) that checks the run or sweep directory is writable
    before Hydra writes its own files there (its logs, ``.hydra/``), which would fail with a
    traceback: one line naming the path instead."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(folder: str) -> None:
        try:
            check_writable(folder)
        except OSError as e:
            sys.exit(f"lrx: error: {e}")


class SweepOutcome(Callback):
    """A Hydra callback: after a sweep in which jobs failed (each went on to the next, see
    :func:`main`), one line per failed job and a non-zero exit."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        failed = []
        for path in sorted(Path(config.hydra.sweep.dir).glob(f"*/{RESULTS}")):
            results, why = read_finished(path)
            if results is None and why == "status 'failed'":
                failed.append(f"{path.parent}: {json.loads(path.read_text())['error']}")
        if failed:
            sys.exit(f"lrx: error: {len(failed)} sweep job(s) failed:\n  " + "\n  ".join(failed))


class JobError(Exception):
    """A user error or a fault found while running (its ``__cause__``): reported in one line."""


@hydra.main(config_path=str(PROJECT / "conf"), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    """One job. A single run exits with its error; in a sweep, a failed job is recorded
    (``results.json`` with status ``failed``) and the sweep goes on (:class:`SweepOutcome`)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        check_writable(run_dir)  # before any work: the results are written there at the very end
    except OSError as e:
        _fail(e)
    sweep = _sweep_group() is not None
    try:
        return _job(cfg, run_dir)
    except JobError as e:
        if not sweep:
            _fail(e.__cause__)
        log.error("%s", e.__cause__)
        _record_failure(run_dir, cfg, e.__cause__)
    except Exception as e:
        log.exception("unexpected error (a bug in lrx: please report it with this traceback)")
        if not sweep:
            raise
        _record_failure(run_dir, cfg, e)
    return None


def _job(cfg: DictConfig, run_dir: Path) -> dict:
    done = finished(run_dir, cfg)
    if done:
        log.info("skipped: %s already holds the complete results of this config", run_dir / RESULTS)
        return done
    try:
        job = prepare(cfg, sweep=_sweep_group() is not None)
    except (*USER_ERRORS, *RUN_FAULTS) as e:
        raise JobError from e
    loggers = make_loggers(cfg, _sweep_group())
    try:
        results = run(job, run_dir, loggers, _callbacks(cfg))
        log_results(loggers, results)
    except RUN_FAULTS as e:
        raise JobError from e
    finally:
        finish(loggers)
    return results
