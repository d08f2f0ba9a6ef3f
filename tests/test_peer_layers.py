"""The peer baselines: Tucker-2 and CP solvers, VBMF rank selection, and the peers through surgery
and the planner. (What every method shares, exactness at full rank included, is in
test_lowrank_layers.py.)"""

import json
import re

import pytest
import torch
from torch import nn

from lrx.compress.planner import plan
from lrx.lowrank import METHODS, DecompositionError, decompose, validate
from lrx.lowrank.methods.cp import CPConv, solve_cp
from lrx.lowrank.methods.tucker2 import Tucker2Conv, solve_tucker2
from lrx.lowrank.vbmf import evbmf_rank, tucker2_ranks
from tests.helpers.convs import small_model
from tests.helpers.methods import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_error_non_increasing_in_rank_and_over_rounds():
    torch.manual_seed(0)
    weight = nn.Conv2d(8, 12, 3).weight.detach()
    tucker = [solve_tucker2(weight, (r, r + r // 2)) for r in (1, 2, 4, 8)]
    plain_als = [solve_cp(weight, r, ridge=0) for r in (1, 4, 16, 48)]
    for infos in ([t[3] for t in tucker], [c[1] for c in plain_als]):
        finals = [info["history"][-1] for info in infos]
        assert all(b <= a for a, b in zip(finals, finals[1:], strict=False)), finals
        for info in infos:  # HOOI and ALS rounds never raise the error
            h = info["history"]
            assert all(b <= a * (1 + 1e-9) + 1e-12 for a, b in zip(h, h[1:], strict=False)), h


def _term_norms(factors) -> torch.Tensor:
    return torch.stack([torch.linalg.norm(f, dim=0) for f in factors]).prod(0)


def test_cp_ridge_keeps_the_terms_small_at_about_the_same_error():
    """Plain ALS drifts toward degenerate terms (large, cancelling each other); the default ridge
    keeps their norms several times smaller for about the same kernel error."""
    torch.manual_seed(0)
    weight = nn.Conv2d(16, 16, 3).weight.detach()
    errors, sizes = {}, {}
    for ridge in (0.0, None):
        factors, info = solve_cp(weight, 48, ridge=ridge)
        errors[ridge], sizes[ridge] = info["history"][-1] ** 0.5, _term_norms(factors).sum() / weight.norm()
    assert sizes[None] < 0.5 * sizes[0.0] and errors[None] < 1.05 * errors[0.0], (sizes, errors)
    with pytest.raises(ValueError, match="ridge=-1.*>= 0"):
        solve_cp(weight, 4, ridge=-1)


@pytest.mark.parametrize(
    "cls, bases, valid",
    [
        (
            Tucker2Conv,
            0,
            r"an integer in \[1, 3\] \(both ranks\), a pair \(R_in, R_out\) with R_in in \[1, 3\] and "
            r"R_out in \[1, 4\], or 'vbmf'",
        ),
        (Tucker2Conv, 4, r"an integer in \[1, 3\]"),
        (Tucker2Conv, (3, 5), r"R_out in \[1, 4\]"),
        (Tucker2Conv, (1, 2, 3), r"a pair \(R_in, R_out\)"),
        (Tucker2Conv, (2.0, 2), r"a pair \(R_in, R_out\)"),
        (Tucker2Conv, 2.5, r"an integer in \[1, 3\]"),
        (Tucker2Conv, "vbfm", r"or 'vbmf'"),
        (Tucker2Conv, None, r"or 'vbmf'"),
        (CPConv, (2, 2), r"an integer in \[1, 27\]"),  # min(3*3*3, 4*3*3, 4*3*3, 4*3*3)
        (CPConv, "vbmf", r"an integer in \[1, 27\]"),  # VBMF chooses Tucker-2's ranks only
    ],
)
def test_refuses_bad_bases(cls, bases, valid):
    with pytest.raises(DecompositionError, match=re.escape(f"bases={bases!r}") + f".*{cls.method!r}; valid: .*{valid}"):
        cls.from_conv(nn.Conv2d(3, 4, 3), bases)


def test_vbmf_needs_a_weight_to_choose_from():
    with pytest.raises(DecompositionError, match="vbmf"):
        Tucker2Conv(8, 16, 3, "vbmf")  # from_conv chooses the ranks; a bare layer has no weight yet


def test_vbmf_ranks():
    torch.manual_seed(0)
    low_rank = torch.randn(60, 5) @ torch.randn(5, 200)
    assert evbmf_rank(low_rank + 0.1 * torch.randn(60, 200)) == 5
    assert evbmf_rank(torch.randn(200, 60)) == 1  # pure noise: EVBMF says 0, at least 1 is returned
    for conv in (nn.Conv2d(3, 48, 5), nn.Conv2d(48, 64, 3)):
        r_in, r_out = tucker2_ranks(conv.weight)
        assert 1 <= r_in <= conv.in_channels and 1 <= r_out <= conv.out_channels


@pytest.mark.parametrize("method, bases", [("tucker2", 3), ("tucker2", {"conv1": (2, 3), "conv2": [8, 12]}), ("cp", 6)])
def test_decompose(method, bases):
    torch.manual_seed(0)
    model = small_model().eval()
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    records = decompose(model, "all", method, bases)
    cls = METHODS[method]
    assert isinstance(model.conv1, cls) and isinstance(model.conv2, cls)
    assert model(x).shape == before.shape
    json.dumps(records)
    assert [r["name"] for r in records] == ["conv1", "conv2"]
    for r in records:
        assert r["method"] == method and 0 <= r["rel_error"] < 1 and r["solve_time_s"] >= 0 and r["macs_speedup"] > 0
        assert "history" not in r and ("hooi_iters" in r if method == "tucker2" else "iters" in r)
    if isinstance(bases, dict):
        assert [r["bases"] for r in records] == [(2, 3), (8, 12)]


def test_decompose_with_vbmf_ranks():
    model = small_model()
    plan_ = validate(model, "all", "tucker2", bases="vbmf")
    assert [b for _, _, b in plan_] == ["vbmf", "vbmf"]
    expected = [tucker2_ranks(model.conv1.weight), tucker2_ranks(model.conv2.weight)]
    records = decompose(model, "all", "tucker2", bases="vbmf")
    assert [r["bases"] for r in records] == expected
    assert [model.conv1.bases, model.conv2.bases] == expected


def test_vbmf_for_some_layers_only():
    model = small_model()
    records = decompose(model, "all", "tucker2", bases={"conv1": (2, 3), "conv2": "vbmf"})
    assert [r["bases"] for r in records] == [(2, 3), tucker2_ranks(small_model().conv2.weight)]


@pytest.mark.parametrize(
    "method, bases, options, words",
    [
        (3, 4, {}, ["method 3 is unknown", "valid: " + ", ".join(METHODS), "aliases"]),
        ("svd", 4, {}, ["method 'svd' is unknown", *METHODS]),
        ("cp", "vbmf", {}, ["bases='vbmf'", "method 'cp'", "an integer in"]),
        ("tucker2", "svd", {}, ["bases='svd'", "'vbmf'"]),
        (
            "tucker2",
            4,
            {"rank_selection": "vbmf"},
            ["rank_selection: not an option of method 'tucker2'", "its options: none"],
        ),
        ("cp", 4, {"iters": 5}, ["iters: not an option of method 'cp'", "its options: progress"]),
    ],
)
def test_validate_refuses_bad_requests(method, bases, options, words):
    with pytest.raises(DecompositionError) as info:
        validate(small_model(), "all", method, bases, **options)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_cp_takes_its_progress_option(capsys):
    records = decompose(small_model(), "conv1", "cp", 4, progress=True)
    assert records[0]["method"] == "cp" and "CP-ALS" in capsys.readouterr().err


def test_planner_considers_peer_methods():
    torch.manual_seed(0)
    net = small_model().eval()
    methods = (2, "tucker2", "cp", "channel_svd")
    chosen, report = plan(net, "conv1", 1.3, "macs", input_size=8, batch_size=2, methods=methods, progress=False)
    assert set(chosen) == {"conv1"} and chosen["conv1"].method is not None
    assert report["predicted_conv_speedup"] >= 1.3
    tried = {o["method"] for options in report["candidates"].values() for o in options}
    assert tried == {None, "scheme2", "tucker2", "cp", "channel_svd"}
    with pytest.raises(DecompositionError, match=r"method 'svd' is unknown; valid: scheme1, scheme2, .*cp"):
        plan(net, "all", 2.0, methods=("svd",))
