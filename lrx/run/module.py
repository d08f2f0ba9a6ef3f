"""LightningModule wrapping any image classifier: cross-entropy training, acc@1 evaluation."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "kd")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: T^2 * KL(softmax(teacher/T) || softmax(student/T))."""
    t = temperature
    return (
        F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True, reduction="batchmean")
        * t
        * t
    )


class Classifier(L.LightningModule):
    """Trains ``net``; logs ``train/loss``, ``val/acc1`` and ``test/acc1`` (percent).

    ``loss="ce"``: cross-entropy (optionally label-smoothed). ``loss="kd"``: distillation from a
    frozen ``teacher``'s logits, ``kd_alpha * distillation + (1 - kd_alpha) * cross-entropy``.
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
        loss: str = "ce",
        teacher: nn.Module | None = None,
        temperature: float = 4.0,
        kd_alpha: float = 0.9,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is unknown; valid: {', '.join(LOSSES)}")
        if loss == "kd" and teacher is None:
            raise ValueError("loss='kd' needs a teacher network")
        self.net = net
        self.optimizer, self.scheduler = optimizer, scheduler
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        self.loss_name, self.temperature, self.kd_alpha = loss, temperature, kd_alpha
        # Kept out of the module tree: the teacher is neither trained, saved nor moved by Lightning.
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def on_fit_start(self) -> None:
        self.net.train()  # Lightning keeps the mode it finds; a copied eval-mode net must train
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        if self.loss_name == "kd":
            teacher = self._teacher[0].to(x.device)
            with torch.no_grad():
                target = teacher(x)
            loss = self.kd_alpha * distillation_loss(logits, target, self.temperature) + (1 - self.kd_alpha) * loss
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
