"""Filter reconstruction: Scheme 2's optimality, Scheme 1's descent and quality, option checks."""

import pytest
import torch

from lrx.lowrank import DecompositionError
from lrx.lowrank.methods import scheme1
from lrx.lowrank.methods.channel_svd import solve_channel_svd
from lrx.lowrank.methods.scheme1 import Scheme1Conv, solve_scheme1
from lrx.lowrank.methods.scheme2 import solve_scheme2
from tests.helpers.methods import one_thread  # noqa: F401
from tests.helpers.run_if import run_if

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(w, approx):
    return (torch.linalg.norm(w.double() - approx) / torch.linalg.norm(w.double())).item()


def scheme1_error(w, **opts):
    v, h, a, info = solve_scheme1(w, **opts)
    return rel(w, torch.einsum("ncm,my,mx->ncyx", a, v, h)), info


def scheme2_error(w, bases):
    vertical, horizontal = solve_scheme2(w, bases)
    return rel(w, torch.einsum("kcy,nkx->ncyx", vertical, horizontal))


def structured(n, c, d, m, noise, seed=0):
    """Filters made of m shared rank-1 bases, plus noise."""
    g = torch.Generator().manual_seed(seed)
    a, v, h = torch.randn(n, c, m, generator=g), torch.randn(m, d, generator=g), torch.randn(m, d, generator=g)
    return torch.einsum("ncm,my,mx->ncyx", a, v, h) + noise * torch.randn(n, c, d, d, generator=g)


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (5, 7, 3, 4), (8, 2, 5, 3)])
def test_scheme2_error_is_the_singular_value_tail(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    n, c, kh, kw = shape
    sigma = torch.linalg.svdvals(w.double().permute(1, 2, 0, 3).reshape(c * kh, n * kw))
    errors = []
    for k in range(1, len(sigma) + 1):
        errors.append(scheme2_error(w, k))
        optimal = (sigma[k:].square().sum().sqrt() / sigma.norm()).item()
        assert errors[-1] == pytest.approx(optimal, abs=1e-6)
    assert errors[-1] < 1e-6  # K = min(C*kh, N*kw) is exact
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:], strict=False))


def test_scheme2_splits_singular_values_evenly():
    w = torch.randn(6, 5, 3, 3)
    vertical, horizontal = solve_scheme2(w, 4)
    torch.testing.assert_close(
        vertical.flatten(1).norm(dim=1), horizontal.permute(1, 0, 2).flatten(1).norm(dim=1), rtol=1e-6, atol=0
    )


def test_scheme1_error_non_increasing_in_bases():
    w = torch.randn(8, 6, 3, 3, generator=torch.Generator().manual_seed(2))
    errors = [scheme1_error(w, bases=m, lam_steps=4, iters=10)[0] for m in range(1, 10)]
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-6  # M = kh*kw is exact


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.1])
def test_scheme1_objective_non_increasing_at_fixed_lambda(lam):
    w = structured(16, 8, 5, 6, 0.3)
    _, info = scheme1_error(w, bases=4, lam_schedule="fixed", lam_start=lam, iters=30, tol=0.0)
    for stage in info["history"]:  # the fixed-lambda stage, then the rank-1 ALS refinement
        obj = stage["objective"]
        assert len(obj) > 1
        assert all(b <= a + 1e-12 * abs(a) for a, b in zip(obj, obj[1:], strict=False)), stage["lam"]


def test_scheme1_ascending_schedule_reaches_rank1():
    w = torch.randn(10, 6, 5, 5)
    _, info = scheme1_error(w, bases=4, lam_end=10.0, refine_iters=0)
    lam = info["lambda"]
    assert lam["schedule"] == "ascending" and len(lam["values"]) == lam["steps"]
    assert lam["values"][0] == pytest.approx(lam["start"]) and lam["values"][-1] == pytest.approx(lam["end"])
    assert lam["scale"] == pytest.approx(w.double().square().sum().item())
    assert info["rank1_energy"] == pytest.approx([1.0] * 4, abs=1e-6)


def truncated_svd_baseline(w, m):
    """Top-m SVD bases of the (N*C, kh*kw) slices, each truncated to rank 1, A refitted."""
    n, c, kh, kw = w.shape
    x = w.double().reshape(n * c, kh * kw)
    bases = torch.linalg.svd(x, full_matrices=False)[2][:m].reshape(m, kh, kw)
    u, s, vh = torch.linalg.svd(bases)
    rank1 = (s[:, :1, None] * u[:, :, :1] @ vh[:, :1, :]).reshape(m, -1)
    a = torch.linalg.lstsq(rank1.T, x.T).solution.T
    return (torch.linalg.norm(x - a @ rank1) / torch.linalg.norm(x)).item()


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_scheme1_beats_truncated_svd(kind):
    w = torch.randn(192, 64, 5, 5) if kind == "random" else structured(192, 64, 5, 8, 0.05)
    err, _ = scheme1_error(w, bases=8)
    baseline = truncated_svd_baseline(w, 8)
    assert err <= baseline + 1e-6
    if kind == "structured":  # the true rank-1 bases are found: error near the noise floor
        assert err < 0.5 * baseline


@pytest.mark.parametrize(
    "opts, words",
    [
        (dict(lam_start=-0.1), ["lam_start=-0.1", ">= 0"]),
        (dict(lam_end=-1.0), ["lam_end=-1.0", ">= 0"]),
        (dict(lam_steps=0), ["lam_steps=0", ">= 1"]),
        (dict(iters=0), ["iters=0", ">= 1"]),
        (dict(lam_schedule="cosine"), ["'cosine'", "'fixed' or 'ascending'"]),
        (dict(lam_start=0.0), ["lam_start=0.0", "fixed"]),
        (dict(lam_start=1.0, lam_end=0.1), ["lam_start <= lam_end"]),
        (dict(init="random"), ["init='random'", "'svd' or 'als'"]),
        (dict(refine_iters=-1), ["refine_iters=-1", ">= 0"]),
        (dict(iters=2.0), ["iters=2.0", "integer"]),
        (dict(tol=True), ["tol=True", "number"]),
        (dict(lambda_start=0.1), ["lambda_start: not an option of method 'scheme1'", "lam_start"]),
    ],
)
def test_scheme1_refuses_bad_options(opts, words):
    with pytest.raises(DecompositionError) as info:
        solve_scheme1(torch.randn(4, 3, 3, 3), 2, **opts)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_scheme1_options_are_merged_with_the_defaults_and_named_as_the_caller_calls_them():
    merged = Scheme1Conv.check_options({"lam_start": 0.01, "iters": 3})
    assert merged == {**scheme1.DEFAULTS, "lam_start": 0.01, "iters": 3}
    assert scheme1.DEFAULTS["lam_start"] != 0.01  # the defaults themselves are left alone
    assert scheme1.check_options(dict(scheme1.DEFAULTS), name=str) is None
    names = {"lam_start": "decomp.lam_start", "lam_schedule": "decomp.lam_schedule"}
    with pytest.raises(DecompositionError, match=r"^decomp\.lam_start=-1: must be a number >= 0"):
        Scheme1Conv.check_options({"lam_start": -1}, names=names)
    with pytest.raises(DecompositionError, match=r"decomp\.lam_start=0.*use decomp\.lam_schedule=fixed"):
        scheme1.check_options({**scheme1.DEFAULTS, "lam_start": 0}, name=lambda k: names.get(k, k))


def test_scheme1_progress_bar(capsys):
    solve_scheme1(torch.randn(4, 3, 3, 3), 2, lam_steps=2, iters=2, progress=True)
    assert "scheme 1" in capsys.readouterr().err


@run_if(cuda=True)
def test_solvers_run_on_the_weight_device():
    w = torch.randn(16, 8, 3, 3, device="cuda")
    assert solve_scheme1(w, 2, lam_steps=2, iters=3)[0].device == w.device
    assert solve_scheme2(w, 4)[0].device == w.device
    assert all(t.device == w.device for t in solve_channel_svd(w, 4))
