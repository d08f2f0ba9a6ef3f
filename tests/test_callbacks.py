"""Lightning callbacks: the training estimate logged before a long fit."""

import logging

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrx.run.callbacks import TrainingEstimate, duration
from lrx.run.module import Classifier


@pytest.mark.parametrize(("seconds", "text"), [(45, "45 s"), (720, "12 min"), (3 * 3600 + 24 * 60, "3 h 24 min")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text


def test_the_estimate_is_logged_once_with_the_steps_left_and_the_hint(caplog):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(80, 3, 4, 4, generator=g), torch.randint(0, 10, (80,), generator=g))
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    module = Classifier(net, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), channels_last=False)
    estimate = TrainingEstimate("the test net", "to skip it, pass baseline.ckpt=PATH", steps=3)
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=[estimate],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with caplog.at_level(logging.INFO, logger="lrx.run.callbacks"):
        trainer.fit(module, DataLoader(data, batch_size=8))
    lines = [r.getMessage() for r in caplog.records if "training the test net" in r.getMessage()]
    assert len(lines) == 1 and estimate.estimate_s is not None and estimate.estimate_s >= 0
    assert "16 steps at" in lines[0] and lines[0].endswith("to skip it, pass baseline.ckpt=PATH")
