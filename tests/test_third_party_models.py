"""lrx.lowrank.decompose on torchvision models it was not written for: at full rank the
decomposed model computes what the original does."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, vgg11

from lrx.lowrank import DecompositionError, decompose, validate
from lrx.lowrank.methods.scheme1 import Scheme1Conv
from lrx.lowrank.methods.scheme2 import Scheme2Conv
from tests.helpers.methods import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.slow
def test_resnet18_every_spatial_conv_by_scheme2_at_full_rank():
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = _outputs(model, x)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    spatial = [name for name, m in convs.items() if m.kernel_size != (1, 1)]  # the 7x7 stem and every 3x3
    pointwise = [name for name, m in convs.items() if m.kernel_size == (1, 1)]  # the downsample convs
    assert "conv1" in spatial and len(spatial) == 17 and len(pointwise) == 3
    full = {
        name: min(
            convs[name].in_channels * convs[name].kernel_size[0], convs[name].out_channels * convs[name].kernel_size[1]
        )
        for name in spatial
    }

    records = decompose(model, "all", 2, full)  # 'all' skips the 1x1 convs

    assert [r["name"] for r in records] == spatial
    assert all(isinstance(model.get_submodule(name), Scheme2Conv) for name in spatial)
    assert all(type(model.get_submodule(name)) is nn.Conv2d for name in pointwise)
    assert max(r["rel_error"] for r in records) < 1e-5
    _assert_close(_outputs(model, x), ref)


def test_resnet18_refuses_an_explicit_1x1_conv():
    with pytest.raises(DecompositionError, match=r"'layer2\.0\.downsample\.0' has a 1x1 kernel"):
        validate(resnet18(weights=None, num_classes=10), ["layer2.0.downsample.0"], 2, 4)


@pytest.mark.slow
def test_vgg11_convs_by_scheme1_at_full_rank():
    torch.manual_seed(0)
    model = vgg11(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = _outputs(model, x)
    layers = ["features.0", "features.3", "features.6"]  # 3 -> 64, 64 -> 128, 128 -> 256, all 3x3

    records = decompose(model, layers, 1, 9, lam_steps=3)  # M = kh * kw

    assert [r["name"] for r in records] == layers
    assert all(isinstance(model.get_submodule(name), Scheme1Conv) for name in layers)
    assert max(r["rel_error"] for r in records) < 1e-5
    _assert_close(_outputs(model, x), ref)
