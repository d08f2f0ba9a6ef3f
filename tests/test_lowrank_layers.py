"""The two low-rank layers: equivalence with nn.Conv2d at full rank, equivalence of execution and
dense kernel, MAC counts, refusals, ONNX export."""

import io

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lrx.lowrank import CPConv, DecompositionError, LowRankExpConvV1, LowRankExpConvV2, Tucker2Conv

SCHEMES = [LowRankExpConvV1, LowRankExpConvV2]
# (C, N, kernel, stride, padding, dilation, bias)
GEOMETRIES = [
    (4, 6, 3, 1, 1, 1, True),
    (3, 5, (3, 4), 2, 1, 1, False),
    (4, 5, 3, (2, 1), (1, 2), 2, True),
    (3, 4, (5, 3), 1, "same", (1, 2), False),
]
FAST = dict(lam_steps=3, iters=10, refine_iters=20)


def full_rank(cls, conv):
    (kh, kw), c, n = conv.kernel_size, conv.in_channels, conv.out_channels
    return kh * kw if cls is LowRankExpConvV1 else min(c * kh, n * kw)


def make_conv(c, n, k, stride, padding, dilation, bias):
    torch.manual_seed(0)
    return nn.Conv2d(c, n, k, stride=stride, padding=padding, dilation=dilation, bias=bias)


def options(cls):
    return FAST if cls is LowRankExpConvV1 else {}


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("cls", SCHEMES)
def test_full_rank_reproduces_conv(cls, geometry):
    conv = make_conv(*geometry)
    layer = cls.from_conv(conv, full_rank(cls, conv), **options(cls))
    x = torch.randn(2, conv.in_channels, 11, 14)  # non-square input
    torch.testing.assert_close(layer(x), conv(x), atol=1e-4, rtol=1e-4)
    assert layer.report["rel_error"] < 1e-5


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("cls", [*SCHEMES, Tucker2Conv, CPConv])  # the peers too
def test_dense_weight_matches_execution(cls, geometry):
    conv = make_conv(*geometry)
    layer = cls.from_conv(conv, 2, **options(cls))
    dense = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, bias=conv.bias is not None)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        if conv.bias is not None:
            dense.bias.copy_(layer.bias)
    x = torch.randn(2, conv.in_channels, 12, 9)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-4)
    expected = torch.linalg.norm(conv.weight - layer.dense_weight()) / torch.linalg.norm(conv.weight)
    assert layer.report["rel_error"] == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("kernel", [3, (3, 5), (5, 3)])
@pytest.mark.parametrize("cls", [*SCHEMES, Tucker2Conv, CPConv])
def test_macs_speedup_matches_counted_flops(cls, kernel):
    """At stride 1 with 'same' padding every intermediate map has the output's size, so the ratio
    of counted conv FLOPs is exactly the theoretical per-pixel speed-up."""
    conv = nn.Conv2d(6, 10, kernel, padding="same", bias=False)
    layer = cls(6, 10, kernel, 3, padding="same", bias=False)
    x = torch.randn(1, 6, 8, 8)
    flops = []
    for module in (conv, layer):
        with FlopCounterMode(display=False) as counter:
            module(x)
        flops.append(counter.get_total_flops())
    assert flops[0] / flops[1] == pytest.approx(layer.theoretical_speedup(layer.geometry, layer.bases))


@pytest.mark.parametrize("cls", SCHEMES)
def test_from_conv_keeps_device_dtype_and_reports(cls):
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    layer = cls.from_conv(conv, 2, **options(cls))
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    report = layer.report
    assert report["scheme"] == cls.scheme and report["bases"] == 2
    assert 0 < report["rel_error"] < 1 and report["solve_time_s"] >= 0
    assert report["macs_speedup"] == pytest.approx(layer.theoretical_speedup(layer.geometry, 2))
    text = repr(layer)
    assert f"scheme={cls.scheme}" in text and "bases=2" in text and "macs_speedup=" in text
    if cls is LowRankExpConvV1:
        assert len(report["rank1_energy"]) == 2 and report["lambda"]["schedule"] == "ascending"
    else:
        assert report["lambda"] is None


def test_scheme2_mixes_channels():
    """Every output channel depends on every input channel (the earlier attempt's bug)."""
    layer = LowRankExpConvV2.from_conv(nn.Conv2d(4, 5, 3, padding=1), 3)
    x = torch.zeros(1, 4, 5, 5, requires_grad=True)
    for n in range(5):
        (grad,) = torch.autograd.grad(layer(x)[0, n, 2, 2], x)
        assert (grad.abs().sum(dim=(2, 3)) > 0).all()


@pytest.mark.parametrize(
    "conv, words",
    [
        (nn.Conv2d(4, 4, 3, groups=2), ["groups=2"]),
        (nn.Conv2d(4, 4, 1), ["1x1", "nothing to separate"]),
        (nn.Conv2d(4, 4, (1, 3)), ["1x3", "> 1"]),
        (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), ["reflect", "zeros"]),
        (nn.Linear(4, 4), ["Linear", "nn.Conv2d"]),
    ],
)
@pytest.mark.parametrize("cls", SCHEMES)
def test_refuses_undecomposable(cls, conv, words):
    with pytest.raises(DecompositionError) as info:
        cls.from_conv(conv, 1)
    assert all(w in str(info.value) for w in words)


@pytest.mark.parametrize("cls", SCHEMES)
@pytest.mark.parametrize("bases", [0, -1, 1000, 2.5])
def test_refuses_bad_bases(cls, bases):
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(DecompositionError, match=rf"bases={bases}.*valid: an integer in \[1, \d+\]"):
        cls.from_conv(conv, bases)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: needs no onnxscript
def test_onnx_export():
    onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    model = nn.Sequential(
        LowRankExpConvV1.from_conv(nn.Conv2d(3, 8, 3, padding=1), 2, **FAST),
        nn.ReLU(),
        LowRankExpConvV2.from_conv(nn.Conv2d(8, 6, 3, stride=2, dilation=2), 4),
    ).eval()
    x = torch.randn(1, 3, 16, 12)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False)
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(exported)
    assert sum(node.op_type == "Conv" for node in exported.graph.node) == 5  # 3 (Scheme 1) + 2 (Scheme 2)
