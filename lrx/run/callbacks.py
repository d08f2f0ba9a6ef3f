"""Lightning callbacks: what a model costs, logged at the start and end of every fit (the
baseline's training, the fine-tuning of the approximated network).

The pipeline reports the baseline and final models side by side in ``results.json`` and the run
summary (lrx.run.tracking); this callback shows the same measures on the training dashboards, from
the same functions: fvcore MACs and params on the real input size, and the median latency of
lrx.measure.latency.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from lrx.measure.complexity import complexity
from lrx.measure.estimator import Estimator
from lrx.measure.latency import MEMORY_FORMATS, time_modules

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: 45 s, 12 min, 3 h 24 min."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


class TrainingEstimate(L.Callback):
    """Logs once, after the first ``steps`` training steps past a warm-up step, how long the
    whole fit of ``what`` will take at their pace (training steps alone; validation adds its
    share), followed by ``hint`` (e.g. how to skip it)."""

    def __init__(self, what: str, hint: str = "", steps: int = 5):
        self.what, self.hint, self.steps = what, hint, steps
        self._start: tuple[float, int] | None = None
        self.estimate_s: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.estimate_s is not None:
            return
        now, step = time.perf_counter(), trainer.global_step
        if self._start is None:  # the first step (warm-up) is not counted
            self._start = (now, step)
            return
        done = step - self._start[1]
        if done < self.steps:
            return
        per_step = (now - self._start[0]) / done
        left = max(trainer.estimated_stepping_batches - step, 0)
        self.estimate_s = per_step * left
        log.info(
            "training %s: about %s more (%d steps at %.2f s each, measured on %d steps)%s",
            self.what,
            duration(self.estimate_s),
            left,
            per_step,
            done,
            f"; {self.hint}" if self.hint else "",
        )


class ModelCost(L.Callback):
    """Logs ``cost/{fit_start,fit_end}/{macs_m, params_m, latency_ms}`` of ``pl_module.net``.

    Latency: batch ``batch_size`` of ``(3, input_size, input_size)`` images in ``memory_format``,
    on the module's device, eval mode, timed by the estimator with the settings ``estimator``
    (``latency.estimator``'s keys; default: :class:`lrx.measure.estimator.Estimator`'s)."""

    def __init__(
        self,
        input_size: int,
        batch_size: int = 32,
        memory_format: str = "channels_last",
        estimator: dict | None = None,
    ):
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"ModelCost: memory_format={memory_format!r}; valid: {', '.join(MEMORY_FORMATS)}")
        self.input_size, self.batch_size, self.memory_format = input_size, batch_size, memory_format
        self.estimator = Estimator.of(estimator)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        net = pl_module.net
        cost = complexity(net, self.input_size)  # both measure in eval mode and restore the mode
        x = torch.randn(self.batch_size, 3, self.input_size, self.input_size, device=next(net.parameters()).device)
        x = x.contiguous(memory_format=MEMORY_FORMATS[self.memory_format])
        ms = time_modules({"net": net}, x, self.estimator).ms["net"]
        for lg in trainer.loggers:
            lg.log_metrics(
                {
                    f"cost/{when}/macs_m": cost["macs"] / 1e6,
                    f"cost/{when}/params_m": cost["params"] / 1e6,
                    f"cost/{when}/latency_ms": ms,
                },
                step=trainer.global_step,
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "fit_start")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "fit_end")
