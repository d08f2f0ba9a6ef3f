"""LightningModule wrapping any image classifier: cross-entropy training, acc@1 evaluation."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class Classifier(L.LightningModule):
    """Trains ``net`` with cross-entropy (optionally label-smoothed); logs ``train/loss``,
    ``val/acc1`` and ``test/acc1`` (percent).

    ``optimizer`` and ``scheduler`` are partials (Hydra ``_partial_: true``): the optimiser takes
    the parameters, the scheduler the optimiser and ``total_steps``; the scheduler steps per batch.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
    ):
        super().__init__()
        self.net = net
        self.optimizer, self.scheduler = optimizer, scheduler
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, split: str) -> None:
        x, y = batch
        acc1 = (self(x).argmax(1) == y).float().mean() * 100
        self.log(f"{split}/acc1", acc1, prog_bar=True, batch_size=len(y))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        if self.optimizer is None:
            raise ValueError("Classifier needs an optimizer partial to train (model.optimizer in the config)")
        opt = self.optimizer(params=self.net.parameters())
        if self.scheduler is None:
            return opt
        sched = self.scheduler(optimizer=opt, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
