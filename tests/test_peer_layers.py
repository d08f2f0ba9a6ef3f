"""The peer baselines: Tucker-2 and CP layers, VBMF rank selection, and both through surgery, the
planner and the config."""

import json
import re
from collections import OrderedDict

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from lrx.lowrank import cp
from lrx.lowrank import (ConvGeometry, CPConv, DecompositionError, Tucker2Conv, decompose, evbmf_rank, solve_cp,
                         solve_tucker2, tucker2_ranks, validate)
from lrx.lowrank.planner import plan
from tests.conftest import compose_cfg
from tests.test_lowrank_layers import GEOMETRIES, make_conv

PEERS = [Tucker2Conv, CPConv]


def small_model():
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1),
        act=nn.ReLU(),
        conv2=nn.Conv2d(8, 12, 3, stride=2, padding=1),
        pool=nn.AdaptiveAvgPool2d(1),
    ))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_tucker2_full_ranks_reproduce_conv(geometry):
    conv = make_conv(*geometry)
    layer = Tucker2Conv.from_conv(conv, (conv.in_channels, conv.out_channels))
    x = torch.randn(2, conv.in_channels, 11, 14)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-4)
    assert layer.report["rel_error"] < 1e-5


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cp_at_the_rank_bound_nearly_reproduces_conv(geometry, monkeypatch):
    """Plain CP-ALS (no ridge) is not exact, but at R = the CP-rank bound (smallest product of all
    sizes but one) it reaches a relative kernel error below 1e-4 and outputs within 2e-4 of the conv's."""
    monkeypatch.setattr(cp, "RIDGE", 0.0)
    conv = make_conv(*geometry)
    layer = CPConv.from_conv(conv, CPConv.full_rank(ConvGeometry.of(conv.in_channels, conv.out_channels,
                                                                     conv.kernel_size)))
    x = torch.randn(2, conv.in_channels, 11, 14)
    torch.testing.assert_close(layer(x), conv(x), atol=2e-4, rtol=1e-3)
    assert layer.report["rel_error"] < 1e-4


@pytest.mark.parametrize("cls", PEERS)
def test_last_pass_features_for_data_reconstruction(cls):
    """out = F @ final_features(x) + bias, and set_final installs F (what data_recon relies on)."""
    layer = cls.from_conv(nn.Conv2d(4, 6, 3, stride=2, padding=1), 3)
    x = torch.randn(2, 4, 9, 9)
    z = layer.final_features(x)
    final = layer.pointwise_out.weight[:, :, 0, 0].detach().clone()
    torch.testing.assert_close(layer(x).flatten(2), final @ z + layer.bias[:, None], atol=1e-5, rtol=1e-4)
    layer.set_final(2 * final, torch.zeros(6))
    torch.testing.assert_close(layer(x).flatten(2), 2 * final @ z, atol=1e-5, rtol=1e-4)


def test_error_non_increasing_in_rank_and_over_rounds():
    torch.manual_seed(0)
    weight = nn.Conv2d(8, 12, 3).weight.detach()
    tucker = [solve_tucker2(weight, (r, r + r // 2)) for r in (1, 2, 4, 8)]
    plain_als = [solve_cp(weight, r, ridge=0) for r in (1, 4, 16, 48)]
    for infos in ([t[3] for t in tucker], [c[1] for c in plain_als]):
        finals = [info["history"][-1] for info in infos]
        assert all(b <= a for a, b in zip(finals, finals[1:])), finals
        for info in infos:  # HOOI and ALS rounds never raise the error
            h = info["history"]
            assert all(b <= a * (1 + 1e-9) + 1e-12 for a, b in zip(h, h[1:])), h


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
        (Tucker2Conv, 0, r"an integer in \[1, 3\].*R_in in \[1, 3\] and R_out in \[1, 4\]"),
        (Tucker2Conv, 4, r"an integer in \[1, 3\]"),
        (Tucker2Conv, (3, 5), r"R_out in \[1, 4\]"),
        (Tucker2Conv, (1, 2, 3), r"a pair \(R_in, R_out\)"),
        (Tucker2Conv, 2.5, r"an integer in \[1, 3\]"),
        (CPConv, 0, r"an integer in \[1, 27\]"),  # min(3*3*3, 4*3*3, 4*3*3, 4*3*3)
        (CPConv, 28, r"an integer in \[1, 27\]"),
        (CPConv, (2, 2), r"an integer in \[1, 27\]"),
    ],
)
def test_refuses_bad_bases(cls, bases, valid):
    with pytest.raises(DecompositionError, match=re.escape(f"bases={bases!r}") + f".*{cls.scheme!r}; valid: .*{valid}"):
        cls.from_conv(nn.Conv2d(3, 4, 3), bases)


def test_vbmf_ranks():
    torch.manual_seed(0)
    low_rank = torch.randn(60, 5) @ torch.randn(5, 200)
    assert evbmf_rank(low_rank + 0.1 * torch.randn(60, 200)) == 5
    assert evbmf_rank(torch.randn(200, 60)) == 1  # pure noise: EVBMF says 0, at least 1 is returned
    for conv in (nn.Conv2d(3, 48, 5), nn.Conv2d(48, 64, 3)):
        r_in, r_out = tucker2_ranks(conv.weight)
        assert 1 <= r_in <= conv.in_channels and 1 <= r_out <= conv.out_channels


@pytest.mark.parametrize("scheme, bases", [("tucker2", 3), ("tucker2", {"conv1": (2, 3), "conv2": [8, 12]}),
                                           ("cp", 6)])
def test_decompose(scheme, bases):
    torch.manual_seed(0)
    model = small_model().eval()
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    records = decompose(model, "all", scheme, bases)
    cls = Tucker2Conv if scheme == "tucker2" else CPConv
    assert isinstance(model.conv1, cls) and isinstance(model.conv2, cls)
    assert model(x).shape == before.shape
    json.dumps(records)
    assert [r["name"] for r in records] == ["conv1", "conv2"]
    for r in records:
        assert r["scheme"] == scheme and 0 <= r["rel_error"] < 1 and r["solve_time_s"] >= 0 and r["macs_speedup"] > 0
        assert "history" not in r and ("hooi_iters" in r if scheme == "tucker2" else "iters" in r)
    if isinstance(bases, dict):
        assert [r["bases"] for r in records] == [(2, 3), (8, 12)]


def test_decompose_with_vbmf_ranks():
    model = small_model()
    plan_ = validate(model, "all", "tucker2", bases=None, rank_selection="vbmf")
    assert [b for _, _, b in plan_] == [None, None]
    expected = [tucker2_ranks(model.conv1.weight), tucker2_ranks(model.conv2.weight)]
    records = decompose(model, "all", "tucker2", bases=None, rank_selection="vbmf")
    assert [r["bases"] for r in records] == expected


@pytest.mark.parametrize(
    "scheme, rank_selection, words",
    [
        (3, None, ["scheme=3", "1, 2, 'tucker2', 'cp'"]),
        ("cp", "vbmf", ["rank_selection='vbmf'", "scheme='tucker2'", "scheme='cp'"]),
        ("tucker2", "svd", ["rank_selection='svd'", "'vbmf'"]),
    ],
)
def test_validate_refuses_bad_requests(scheme, rank_selection, words):
    with pytest.raises(DecompositionError) as info:
        validate(small_model(), "all", scheme, 4, rank_selection)
    assert all(w in str(info.value) for w in words)


def test_planner_considers_peer_schemes():
    torch.manual_seed(0)
    net = small_model().eval()
    chosen, report = plan(net, "conv1", 1.3, input_size=8, batch_size=2, schemes=(2, "tucker2", "cp"), progress=False)
    assert set(chosen) == {"conv1"} and chosen["conv1"].scheme is not None
    assert report["predicted_conv_speedup"] >= 1.3
    tried = {o["scheme"] for options in report["candidates"].values() for o in options}
    assert tried == {None, 2, "tucker2", "cp"}
    with pytest.raises(DecompositionError, match=r"schemes=\['svd'\].*\[1, 2, 'tucker2', 'cp'\]"):
        plan(net, "all", 2.0, schemes=("svd",))


@pytest.mark.parametrize("overrides", [["decomp=tucker2"], ["decomp=tucker2", "decomp.rank_selection=vbmf"],
                                       ["decomp=cp", "decomp.bases=16"]])
def test_config_composes_and_validates(overrides, tmp_path):
    cfg = compose_cfg(overrides, tmp_path)
    d = cfg.decomp
    assert d.scheme in ("tucker2", "cp") and d.rank_selection in (None, "vbmf")
    net = instantiate(cfg.model.net)
    plan_ = validate(net, list(d.layers), d.scheme, d.bases, d.rank_selection)
    assert [name for name, _, _ in plan_] == list(d.layers)
