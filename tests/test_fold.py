"""BatchNorm folding: the folded layer or network computes what the unfolded one does."""

import pytest
import torch
from torch import nn

from lrx.compress.fold import FoldError, fold_bn, foldable
from lrx.lowrank import METHODS
from lrx.models import AlexNetCIFAR, ResNet20CIFAR
from tests.helpers.methods import NAMES, fast_options, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_bn(channels: int) -> nn.BatchNorm2d:
    """A BatchNorm with statistics and an affine map far from the identity, in eval mode."""
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
    return bn.eval()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("method", NAMES)
def test_every_methods_layer_folds_the_batchnorm_after_it(method, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=bias)
    cls = METHODS[method]
    bases = (4, 4) if method == "tucker2" else 4
    layer = cls.from_conv(conv, bases, **fast_options(method)).eval()
    bn, x = _trained_bn(8), torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        expected = bn(layer(x))
        layer.fold_batchnorm(bn)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert layer.bias is not None


@pytest.mark.parametrize("net_cls, count", [(AlexNetCIFAR, 5), (ResNet20CIFAR, 19)])
def test_a_folded_network_computes_the_same_logits_without_batchnorms(net_cls, count):
    torch.manual_seed(0)
    net = net_cls()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.load_state_dict(_trained_bn(m.num_features).state_dict())
    net.eval()
    pairs = foldable(net)
    assert len(pairs) == count == sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    folded = fold_bn(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the original is left as it was
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


def test_a_network_with_a_low_rank_layer_folds_too_and_keeps_its_names():
    torch.manual_seed(0)
    net = AlexNetCIFAR().eval()
    net.conv3 = METHODS["cp"].from_conv(net.conv3, 32).eval()
    folded = fold_bn(net)
    assert type(folded.conv3) is type(net.conv3) and isinstance(folded.bn3, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


def test_a_batchnorm_whose_layer_output_is_also_used_elsewhere_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert foldable(Branchy()) == []


def test_an_untraceable_network_is_refused_naming_the_key():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(FoldError, match="latency.fold_bn=true: torch.fx cannot trace DataDependent"):
        foldable(DataDependent())
