"""Channel SVD (a dense kh x kw conv C -> K, then a 1x1 conv K -> N): exact at full rank, the
Eckart-Young optimum below it, its MAC count, and the method through surgery. (What every method
shares is in test_lowrank_layers.py; data reconstruction of it is in test_data_recon.py.)"""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lrx.lowrank import METHODS, DecompositionError, decompose, validate
from lrx.lowrank.methods.channel_svd import ChannelSVDConv, solve_channel_svd
from lrx.lowrank.methods.tucker2 import Tucker2Conv
from tests.helpers.convs import GEOMETRIES, geometry_of, make_conv, small_model
from tests.helpers.methods import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# GEOMETRIES have N < C*kh*kw (full rank N); these have C*kh*kw < N (full rank C*kh*kw)
WIDE = [(1, 12, 3, 2, 1, 1, True), (2, 20, (3, 2), 1, "same", (2, 1), False)]


def tail(weight: torch.Tensor, k: int) -> float:
    """sqrt(sum_{i > k} s_i^2) / ||W||: the least error of any rank-k factorisation (Eckart-Young)."""
    s = torch.linalg.svdvals(weight.detach().double().reshape(weight.shape[0], -1))
    return (s[k:].square().sum().sqrt() / s.norm()).item()


def test_registered_as_channel_svd():
    assert METHODS["channel_svd"] is ChannelSVDConv
    assert (ChannelSVDConv.method, ChannelSVDConv.label, ChannelSVDConv.letter) == ("channel_svd", "csvd", "K")


@pytest.mark.parametrize("geometry", GEOMETRIES + WIDE)
def test_full_rank_reproduces_conv(geometry):
    conv = make_conv(*geometry)
    c, n, (kh, kw) = conv.in_channels, conv.out_channels, conv.kernel_size
    full = ChannelSVDConv.full_rank(geometry_of(conv))
    assert full == min(n, c * kh * kw)
    layer = ChannelSVDConv.from_conv(conv, full)
    assert layer.conv.out_channels == full and layer.pointwise_out.in_channels == full
    torch.testing.assert_close(layer.dense_weight(), conv.weight, atol=1e-6, rtol=1e-5)
    assert layer.report["rel_error"] < 1e-6
    x = torch.randn(2, c, 11, 14)
    expected = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)
    # and no smaller rank is exact: a random kernel has full matrix rank
    assert ChannelSVDConv.from_conv(conv, full - 1).report["rel_error"] > 1e-3


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (5, 2, 3, 4), (30, 2, 2, 3)])
def test_error_is_the_singular_value_tail(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    full = min(shape[0], shape[1] * shape[2] * shape[3])
    errors = []
    for k in range(1, full + 1):
        first, last = solve_channel_svd(w, k)  # P (K, C, kh, kw), U (N, K)
        assert first.shape == (k, *shape[1:]) and last.shape == (shape[0], k)
        approx = torch.einsum("nk,kcyx->ncyx", last, first)
        errors.append((torch.linalg.norm(w.double() - approx) / torch.linalg.norm(w.double())).item())
        assert errors[-1] == pytest.approx(tail(w, k), abs=1e-9)
    assert errors[-1] < 1e-12
    assert all(b <= a for a, b in zip(errors, errors[1:], strict=False)) and errors[0] > errors[-2]


def test_singular_values_are_split_evenly_and_the_factors_are_orthogonal():
    w = torch.randn(9, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    first, last = solve_channel_svd(w, 5)
    s = torch.linalg.svdvals(w.double().reshape(9, -1))[:5]
    p = first.reshape(5, -1)
    torch.testing.assert_close(p @ p.T, torch.diag(s), atol=1e-10, rtol=0)  # sqrt(S) V^T V sqrt(S)
    torch.testing.assert_close(last.T @ last, torch.diag(s), atol=1e-10, rtol=0)  # sqrt(S) U^T U sqrt(S)


@pytest.mark.parametrize("bases", [1, 3, 7])
def test_layer_error_and_speedup(bases):
    conv = nn.Conv2d(8, 10, 3, padding=1)
    layer = ChannelSVDConv.from_conv(conv, bases)
    assert layer.report["rel_error"] == pytest.approx(tail(conv.weight, bases), rel=1e-4)
    assert layer.report["macs_speedup"] == pytest.approx(10 * 8 * 9 / (bases * (8 * 9 + 10)))


def test_tucker2_without_input_compression_is_channel_svd():
    """Tucker-2 at ranks (C, K) is a 1x1 rotation, then the same C -> K -> N structure: its optimum
    is channel SVD's, which HOSVD finds."""
    conv = make_conv(*GEOMETRIES[0])
    for k in (1, 3, 5):
        tucker = Tucker2Conv.from_conv(conv, (conv.in_channels, k)).report["rel_error"]
        assert tucker == pytest.approx(ChannelSVDConv.from_conv(conv, k).report["rel_error"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 1), ((2, 1), (1, 2), 2)])
def test_macs_match_counted_flops_at_any_stride(stride, padding, dilation):
    """Both passes run at the output's resolution, so the per-pixel count holds for any geometry."""
    conv = nn.Conv2d(6, 10, 3, stride=stride, padding=padding, dilation=dilation, bias=False)
    layer = ChannelSVDConv.from_conv(conv, 3)
    x = torch.randn(1, 6, 13, 12)
    flops = []
    for module in (conv, layer):
        with FlopCounterMode(display=False) as counter:
            pixels = module(x)[0, 0].numel()
        flops.append(counter.get_total_flops())
    assert flops[1] == 2 * 3 * (6 * 9 + 10) * pixels
    assert flops[0] / flops[1] == pytest.approx(ChannelSVDConv.theoretical_speedup(layer.geometry, 3))


def test_decompose():
    torch.manual_seed(0)
    model = small_model().eval()
    original = {name: model.get_submodule(name).weight.detach().clone() for name in ("conv1", "conv2")}
    x = torch.randn(2, 3, 9, 9)
    before = model(x).detach()
    records = decompose(model, "all", "channel_svd", {"conv1": 4, "conv2": 6})
    json.dumps(records)
    assert isinstance(model.conv1, ChannelSVDConv) and isinstance(model.conv2, ChannelSVDConv)
    assert type(model.reduce) is nn.Conv2d
    assert [(r["name"], r["method"], r["bases"]) for r in records] == [
        ("conv1", "channel_svd", 4),
        ("conv2", "channel_svd", 6),
    ]
    for r in records:
        assert r["rel_error"] == pytest.approx(tail(original[r["name"]], r["bases"]), rel=1e-4)
        assert r["macs_speedup"] > 0 and r["solve_time_s"] >= 0
    assert model(x).shape == before.shape and model.conv2.bias is None
    # at full rank the network is unchanged
    model = small_model().eval()
    before = model(x).detach()
    decompose(model, ["conv1", "conv2"], "channel_svd", [8, 12])  # min(8, 27), min(12, 72)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "bases, options, words",
    [
        ({"conv1": 9, "conv2": 4}, {}, ["'conv1'", "bases=9", "'channel_svd'", "[1, 8]"]),
        ({"conv1": 2, "conv2": (2, 3)}, {}, ["'conv2'", "bases=(2, 3)", "[1, 12]"]),
        ("vbmf", {}, ["bases='vbmf'", "'channel_svd'"]),
        (2, {"progress": True}, ["progress: not an option of method 'channel_svd'", "its options: none"]),
    ],
)
def test_refusals_name_the_bad_value(bases, options, words):
    model = small_model()
    with pytest.raises(DecompositionError) as info:
        validate(model, "all", "channel_svd", bases, **options)
    assert all(w in str(info.value) for w in words), str(info.value)
    with pytest.raises(DecompositionError, match=re.escape(words[0])):
        decompose(model, "all", "channel_svd", bases, **options)
    assert type(model.conv1) is nn.Conv2d  # refused before anything is replaced
