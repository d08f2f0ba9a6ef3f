"""Every registered low-rank layer (lrx.lowrank.METHODS): equivalence with nn.Conv2d at full rank,
equivalence of execution and dense kernel, MAC counts, ranks for a speed-up, the last pass that
data reconstruction refits, refusals, ONNX export. A new method is tested by registering it."""

import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lrx.lowrank import METHODS, DecompositionError
from lrx.lowrank.base import PLANNER_TARGETS
from lrx.lowrank.geometry import ConvGeometry, dense_macs
from lrx.lowrank.methods.scheme1 import Scheme1Conv
from lrx.lowrank.methods.scheme2 import Scheme2Conv
from lrx.lowrank.methods.tucker2 import Tucker2Conv
from tests.helpers.convs import GEOMETRIES, conv_like, geometry_of, make_conv
from tests.helpers.methods import NAMES, exact_at_full_rank, fast_options, int_rank, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# layer shapes of real networks (AlexNetCIFAR's convs) and small ones, for the rank arithmetic
SHAPES = [(6, 10, 3), (3, 48, 5), (48, 128, 5), (128, 192, 3), (192, 128, 3), (16, 16, (3, 5))]
INT_RANK = [m for m in NAMES if int_rank(METHODS[m], ConvGeometry.of(6, 10, 3))]


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("method", NAMES)
def test_full_rank_reproduces_conv(method, geometry, monkeypatch):
    kernel_tol, out_tol = exact_at_full_rank(method, monkeypatch)
    cls, conv = METHODS[method], make_conv(*geometry)
    layer = cls.from_conv(conv, cls.full_rank(geometry_of(conv)), **fast_options(method))
    w = conv.weight.detach()
    assert (torch.linalg.norm(layer.dense_weight() - w) / torch.linalg.norm(w)).item() < kernel_tol
    assert layer.report["rel_error"] < kernel_tol
    x = torch.randn(2, conv.in_channels, 11, 14)  # non-square input
    expected = F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(layer(x), expected, atol=out_tol, rtol=1e-3)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("method", NAMES)
def test_dense_weight_matches_execution(method, geometry):
    conv = make_conv(*geometry)
    layer = METHODS[method].from_conv(conv, 2, **fast_options(method))
    assert (layer.bias is None) == (conv.bias is None)
    dense = conv_like(conv, layer.dense_weight().detach(), None if layer.bias is None else layer.bias.detach())
    x = torch.randn(2, conv.in_channels, 12, 9)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-4)
    expected = torch.linalg.norm(conv.weight - layer.dense_weight()) / torch.linalg.norm(conv.weight)
    assert 0 < layer.report["rel_error"] == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("kernel", [3, (3, 5), (5, 3)])
@pytest.mark.parametrize("method", NAMES)
def test_macs_match_counted_flops(method, kernel):
    """At stride 1 with 'same' padding every intermediate map has the output's size, so the counted
    conv FLOPs are 2 * macs per output pixel, and their ratio is the theoretical speed-up."""
    cls = METHODS[method]
    conv = nn.Conv2d(6, 10, kernel, padding="same", bias=False)
    layer = cls(6, 10, kernel, 3, padding="same", bias=False)
    g, pixels = layer.geometry, 8 * 8
    x = torch.randn(1, 6, 8, 8)
    flops = []
    for module in (conv, layer):
        with FlopCounterMode(display=False) as counter:
            module(x)
        flops.append(counter.get_total_flops())
    assert flops[0] == 2 * dense_macs(g) * pixels
    assert flops[1] == pytest.approx(2 * cls.macs(g, layer.bases) * pixels)
    assert flops[0] / flops[1] == pytest.approx(cls.theoretical_speedup(g, layer.bases))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("method", NAMES)
def test_from_conv_keeps_device_dtype_and_reports(method, device):
    cls = METHODS[method]
    conv = nn.Conv2d(3, 4, 3, padding=1).double().to(device)
    layer = cls.from_conv(conv, 2, **fast_options(method))
    assert all(p.dtype == torch.float64 and p.device == conv.weight.device for p in layer.parameters())
    assert layer(torch.randn(1, 3, 5, 5, dtype=torch.float64, device=device)).dtype == torch.float64
    report = layer.report
    assert report["method"] == cls.method == method
    assert report["bases"] == layer.bases == cls.valid_bases(layer.geometry, 2)
    assert 0 < report["rel_error"] < 1 and report["solve_time_s"] >= 0
    assert report["macs_speedup"] == pytest.approx(cls.theoretical_speedup(layer.geometry, layer.bases))
    text = repr(layer)
    assert f"method={method}" in text and f"bases={layer.bases}" in text and "macs_speedup=" in text


def test_solver_info_in_the_reports():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    s1 = Scheme1Conv.from_conv(conv, 2, **fast_options("scheme1")).report
    assert len(s1["rank1_energy"]) == 2 and s1["lambda"]["schedule"] == "ascending"
    assert Scheme2Conv.from_conv(conv, 2).report["lambda"] is None
    assert Tucker2Conv.from_conv(conv, 2).report["hooi_iters"] >= 0
    assert METHODS["cp"].from_conv(conv, 2).report["iters"] >= 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", INT_RANK)
def test_bases_for_speedup_is_the_largest_rank_reaching_the_target(method, shape):
    cls, g = METHODS[method], ConvGeometry.of(*shape)
    full = cls.full_rank(g)
    ranks = []
    for target in PLANNER_TARGETS:
        r = cls.bases_for_speedup(g, target)
        ranks.append(r)
        assert 1 <= r <= full
        if cls.theoretical_speedup(g, 1) < target:  # out of reach: the cheapest rank
            assert r == 1
        else:
            assert cls.theoretical_speedup(g, r) >= target
            assert r == full or cls.theoretical_speedup(g, r + 1) < target
    assert ranks == sorted(ranks, reverse=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_tucker2_bases_for_speedup_scale_both_ranks(shape):
    """Tucker-2's ranks follow the line (t*C, t*N), rounded down: the pair reaches the target and
    the pair one larger in both ranks (past the line's crossing point) does not."""
    g = ConvGeometry.of(*shape)
    c, n = Tucker2Conv.full_rank(g)
    for target in PLANNER_TARGETS:
        r_in, r_out = Tucker2Conv.bases_for_speedup(g, target)
        assert 1 <= r_in < c and 1 <= r_out < n
        if Tucker2Conv.theoretical_speedup(g, (r_in, r_out)) >= target:
            assert Tucker2Conv.theoretical_speedup(g, (r_in + 1, r_out + 1)) < target
        else:  # out of reach on the line: a rank held at 1
            assert 1 in (r_in, r_out)
        assert abs(r_in / c - r_out / n) <= 1 / min(c, n)  # on the line


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", NAMES)
def test_planner_ranks_are_valid_and_below_full_rank(method, shape):
    cls, g = METHODS[method], ConvGeometry.of(*shape)
    ranks = cls.planner_ranks(g)
    assert ranks and ranks == sorted(set(ranks))
    full = cls.full_rank(g)
    for r in ranks:
        assert cls.valid_bases(g, r) == r != full


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("method", NAMES)
def test_last_pass_features_for_data_reconstruction(method, geometry):
    """out = F @ final_features(x) + bias at every output pixel, and set_final installs F (what
    data reconstruction relies on)."""
    torch.manual_seed(0)
    conv = make_conv(*geometry)
    layer = METHODS[method].from_conv(conv, 2, **fast_options(method))
    x = torch.randn(2, conv.in_channels, 9, 10)
    out, z = layer(x).flatten(2).detach(), layer.final_features(x).detach()  # (B, N, L), (B, P, L)
    assert z.shape[0] == 2 and z.shape[2] == out.shape[2]
    # the layer's own output is linear in z: its last pass, found back by least squares
    bias = torch.zeros(out.shape[1]) if layer.bias is None else layer.bias.detach()
    rows, cols = z.permute(0, 2, 1).reshape(-1, z.shape[1]).double(), (out - bias[:, None]).permute(0, 2, 1)
    final = torch.linalg.lstsq(rows, cols.reshape(-1, out.shape[1]).double()).solution.T.float()
    torch.testing.assert_close(final @ z + bias[:, None], out, atol=1e-4, rtol=1e-4)
    # another last pass (and bias) is installed, and changes nothing before it
    new_final = torch.randn(out.shape[1], z.shape[1])
    new_bias = None if layer.bias is None else torch.randn(out.shape[1])
    layer.set_final(new_final, new_bias)
    torch.testing.assert_close(layer.final_features(x), z)
    expected = new_final @ z + (0 if new_bias is None else new_bias[:, None])
    torch.testing.assert_close(layer(x).flatten(2), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", NAMES)
def test_every_output_channel_mixes_every_input_channel(method):
    """Every output channel depends on every input channel (the earlier attempt's Scheme 2 bug)."""
    layer = METHODS[method].from_conv(nn.Conv2d(4, 5, 3, padding=1), 3, **fast_options(method))
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
@pytest.mark.parametrize("method", NAMES)
def test_refuses_undecomposable(method, conv, words):
    with pytest.raises(DecompositionError) as info:
        METHODS[method].from_conv(conv, 1)
    assert all(w in str(info.value) for w in words)


@pytest.mark.parametrize("bases", [0, -1, "full+1", 2.5, True, "8"])
@pytest.mark.parametrize("method", INT_RANK)
def test_refuses_bad_bases(method, bases):
    cls, conv = METHODS[method], nn.Conv2d(3, 4, 3)
    full = cls.full_rank(geometry_of(conv))
    bases = full + 1 if bases == "full+1" else bases
    message = re.escape(f"bases={bases!r} is invalid for method {method!r}; valid: an integer in [1, {full}]")
    with pytest.raises(DecompositionError, match=message):
        cls.from_conv(conv, bases)
    with pytest.raises(DecompositionError, match=f"'{cls.__name__}': {message}"):
        cls(3, 4, 3, bases)


@pytest.mark.parametrize("method", NAMES)
def test_refuses_unknown_options(method):
    cls, conv = METHODS[method], nn.Conv2d(3, 4, 3)
    own = ", ".join(sorted(cls.options)) or "none"
    foreign = sorted({k for other in METHODS.values() for k in other.options} - set(cls.options))
    for option in ["bogus", *foreign]:  # another method's option is not this one's
        with pytest.raises(
            DecompositionError, match=re.escape(f"{option}: not an option of method {method!r}; its options: {own}")
        ):
            cls.from_conv(conv, 1, **{option: 1})
    with pytest.raises(DecompositionError, match=r"^decomp\.bogus: not an option"):
        cls.check_options({"bogus": 1}, names={"bogus": "decomp.bogus"})
    assert cls.check_options({}) == cls.options and cls.check_options(None) is not cls.options


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: needs no onnxscript
def test_onnx_export():
    onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    model = nn.Sequential(
        Scheme1Conv.from_conv(nn.Conv2d(3, 8, 3, padding=1), 2, **fast_options("scheme1")),
        nn.ReLU(),
        Scheme2Conv.from_conv(nn.Conv2d(8, 6, 3, stride=2, dilation=2), 4),
    ).eval()
    x = torch.randn(1, 3, 16, 12)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False)
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(exported)
    assert sum(node.op_type == "Conv" for node in exported.graph.node) == 5  # 3 (Scheme 1) + 2 (Scheme 2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", NAMES)
def test_every_method_exports_to_onnx_and_computes_the_same(method):
    onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    from onnx.reference import ReferenceEvaluator

    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, dilation=2)
    layer = METHODS[method].from_conv(conv, 2, **fast_options(method)).eval()
    x = torch.randn(1, 3, 11, 9)
    buffer = io.BytesIO()
    torch.onnx.export(layer, (x,), buffer, dynamo=False, input_names=["x"])
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(exported)
    (out,) = ReferenceEvaluator(exported).run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), layer(x).detach(), atol=1e-5, rtol=1e-4)
