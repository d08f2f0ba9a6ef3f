"""The LightningModule: cross-entropy and distillation fine-tuning change only the student."""

import copy

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrx.run.module import Classifier, distillation_loss


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))


def _fit(module: Classifier) -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 4, 4, generator=g), torch.randint(0, 10, (32,), generator=g))
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, DataLoader(data, batch_size=8))


@pytest.mark.parametrize("loss", ["ce", "kd"])
def test_finetuning_changes_the_student_and_never_the_teacher(loss):
    torch.manual_seed(0)
    teacher = _net().eval()
    student = copy.deepcopy(teacher)
    teacher_state = copy.deepcopy(teacher.state_dict())
    before = copy.deepcopy(student.state_dict())
    module = Classifier(
        student,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        loss=loss,
        teacher=teacher if loss == "kd" else None,
        channels_last=False,
    )
    assert all(p is not q for p in module.parameters() for q in teacher.parameters())
    _fit(module)
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert {"0.weight", "4.weight"} <= set(changed)


def test_distillation_loss_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(5, 10)
    assert distillation_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits, torch.randn(5, 10), 4.0).item() > 0


def test_bad_loss_and_missing_teacher_are_refused():
    with pytest.raises(ValueError, match="loss='mse'.*ce, kd"):
        Classifier(_net(), loss="mse")
    with pytest.raises(ValueError, match="teacher"):
        Classifier(_net(), loss="kd")
