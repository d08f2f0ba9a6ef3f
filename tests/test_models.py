import pytest
import torch
from torch import nn

from lrx.measure.complexity import complexity
from lrx.models import AlexNet, AlexNetCIFAR


def test_alexnet_matches_the_reference_macs_and_params():
    c = complexity(AlexNet(), 224)
    assert c["macs"] == pytest.approx(698.9e6, rel=0.01)
    assert c["params"] == pytest.approx(44.4e6, rel=0.01)


@pytest.mark.parametrize("net_cls, size", [(AlexNet, 224), (AlexNetCIFAR, 32)])
def test_models_have_five_readable_convs_and_ten_logits(net_cls, size):
    net = net_cls(num_classes=10).eval()
    convs = [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    with torch.no_grad():
        assert net(torch.zeros(2, 3, size, size)).shape == (2, 10)


def test_alexnet_cifar_uses_5x5_then_3x3_filters():
    net = AlexNetCIFAR()
    assert [net.get_submodule(f"conv{i}").kernel_size for i in range(1, 6)] == [(5, 5)] * 2 + [(3, 3)] * 3


@pytest.mark.slow
def test_the_shipped_resnet20_loads_and_reaches_its_bar_on_the_validation_split(data_root):
    """checkpoints/resnet20_cifar.pt through model=resnet20_cifar baseline.ckpt=...: >= 90.5% acc@1."""
    from hydra.utils import instantiate

    from lrx.measure.accuracy import accuracy
    from lrx.run.baseline import load_state_dict
    from tests.conftest import REPO, compose_cfg

    cfg = compose_cfg(["model=resnet20_cifar", f"baseline.ckpt={REPO / 'checkpoints' / 'resnet20_cifar.pt'}"])
    net = instantiate(cfg.model.net)
    load_state_dict(net, cfg.baseline.ckpt)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert accuracy(net, dm.val_dataloader()) >= 90.5
