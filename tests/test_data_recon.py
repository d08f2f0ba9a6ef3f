"""Data reconstruction (lrx.compress.data_recon) on a tiny trained conv net: its mechanics with
approximations built here (a truncated-SVD vertical/horizontal conv pair, so that they depend on
no method), then the least-squares refit and the gradient steps on every registered method."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrx.compress.data_recon import CacheLimitError, DataReconError, NonFiniteError, reconstruct
from lrx.lowrank import METHODS, ConvGeometry
from tests.helpers.methods import NAMES as METHOD_NAMES
from tests.helpers.methods import fast_options
from tests.helpers.run_if import run_if

CONVS = ("conv1", "conv2", "conv3")
RANKS = {"conv1": 2, "conv2": 3, "conv3": 3}


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.head(x.mean((2, 3)))


def _data(n: int, gen: torch.Generator):
    x = torch.randn(n, 3, 12, 12, generator=gen)
    x[:, 1] += x[:, 0].roll(1, dims=-1)  # some structure across channels and space
    y = (x[:, 0, :6].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return x, y


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: one thread is faster than two on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(one_thread):
    """A TinyNet trained for a few dozen steps (non-trivial weights and BatchNorm statistics)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        x, y = _data(32, gen)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


@pytest.fixture
def net(trained):
    return copy.deepcopy(trained)


@pytest.fixture
def batches():
    gen = torch.Generator().manual_seed(1)
    return [_data(16, gen) for _ in range(6)]


def svd_separable(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Vertical (kh x 1, ``rank`` channels) then horizontal (1 x kw) convs from the truncated SVD
    of the kernel reshaped to (C*kh, N*kw): W[n,c,i,j] ~ sum_k V[c,i,k] H[k,n,j]."""
    w = conv.weight.detach()
    n, c, kh, kw = w.shape
    u, s, vh = torch.linalg.svd(w.permute(1, 2, 0, 3).reshape(c * kh, n * kw), full_matrices=False)
    v = u[:, :rank] * s[:rank].sqrt()
    h = s[:rank].sqrt()[:, None] * vh[:rank]
    vert = nn.Conv2d(c, rank, (kh, 1), stride=(conv.stride[0], 1), padding=(conv.padding[0], 0), bias=False)
    horiz = nn.Conv2d(
        rank, n, (1, kw), stride=(1, conv.stride[1]), padding=(0, conv.padding[1]), bias=conv.bias is not None
    )
    with torch.no_grad():
        vert.weight.copy_(v.reshape(c, kh, rank).permute(2, 0, 1).unsqueeze(-1))
        horiz.weight.copy_(h.reshape(rank, n, kw).permute(1, 0, 2).unsqueeze(2))
        if conv.bias is not None:
            horiz.bias.copy_(conv.bias)
    return nn.Sequential(vert, horiz)


def approximate(net: nn.Module, ranks: dict) -> nn.Module:
    approx = copy.deepcopy(net)
    for name, rank in ranks.items():
        setattr(approx, name, svd_separable(getattr(net, name), rank))
    return approx


def layer_inputs(net: nn.Module, name: str, batches) -> torch.Tensor:
    """The input of ``net.<name>`` on every batch (eval mode), concatenated."""
    seen = []
    handle = net.get_submodule(name).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    was = net.training
    net.eval()
    with torch.no_grad():
        for x, _ in batches:
            net(x)
    handle.remove()
    net.train(was)
    return torch.cat(seen)


def state(net: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_svd_helper_is_exact_at_full_rank(net):
    x = torch.randn(2, 8, 12, 12)
    full = svd_separable(net.conv2, 24)
    torch.testing.assert_close(full(x), net.conv2(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["asymmetric", "symmetric"])
def test_lowers_heldout_error_of_every_layer(net, batches, mode):
    approx = approximate(net, RANKS)
    res = reconstruct(
        net,
        approx,
        ["conv3", "conv1", "conv2"],
        batches,
        mode=mode,
        steps=60,
        lr=1e-2,
        batch_size=32,
        holdout_batches=2,
        progress=False,
    )
    assert [r["name"] for r in res] == list(CONVS)  # network order, not the order given
    json.dumps(res, allow_nan=False)
    for r in res:
        assert r["mode"] == mode and r["steps"] == 60 and not r["reverted"]
        assert r["train_samples"] == 64 and r["holdout_samples"] == 32
        assert r["rel_error_after"] < 0.95 * r["rel_error_before"], r
        assert r["time_s"] > 0 and r["cached_bytes"] > 0


@pytest.mark.parametrize(
    "optimizer,lr,batch_size,steps", [("sgd", 0.05, 16, 25), ("lbfgs", 1.0, None, 10), ("adam", 1e-2, None, 15)]
)
def test_each_optimizer_lowers_the_error(net, batches, optimizer, lr, batch_size, steps):
    approx = approximate(net, {"conv2": 3})
    (r,) = reconstruct(
        net, approx, ["conv2"], batches, steps=steps, lr=lr, optimizer=optimizer, batch_size=batch_size, progress=False
    )
    assert r["optimizer"] == optimizer and not r["reverted"]
    assert r["rel_error_after"] < 0.95 * r["rel_error_before"], r


class Recorder(nn.Module):
    """Wraps a layer and records every input it is called with."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer, self.seen = layer, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.layer(x)


def _min_dist(rows: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    return torch.cdist(rows.flatten(1).double(), pool.flatten(1).double()).min(1).values


@pytest.mark.parametrize("mode", ["asymmetric", "symmetric"])
def test_inputs_follow_the_mode_and_targets_come_from_the_original(net, batches, mode):
    # conv1 is approximated crudely, so conv2's input differs between the two networks; conv2 is
    # "approximated" by an exact copy of itself that records what it is fed.
    approx = approximate(net, {"conv1": 1})
    approx.conv2 = Recorder(copy.deepcopy(net.conv2))
    (r1, r2) = reconstruct(
        net,
        approx,
        ["conv1", "conv2"],
        batches,
        mode=mode,
        steps=3,
        lr=1e-5,
        optimizer="sgd",
        revert_if_worse=False,
        progress=False,
    )
    fed = torch.cat([x for x in approx.conv2.seen if x.shape[0] > 1])  # (skip the 1-sample shape probe)
    orig_in = layer_inputs(net, "conv2", batches)
    appr_in = layer_inputs(approx, "conv2", batches)  # with conv1 as reconstructed
    assert _min_dist(appr_in, orig_in).min() > 1e-2  # the two sources are distinguishable
    expected, other = (appr_in, orig_in) if mode == "asymmetric" else (orig_in, appr_in)
    assert len(fed) > 0
    assert _min_dist(fed, expected).max() < 1e-4
    assert _min_dist(fed, other).min() > 1e-2

    # held-out error before optimising, by hand: target = original conv2 on the ORIGINAL input
    hold = slice(-16, None)
    with torch.no_grad():
        target = net.conv2(orig_in[hold])
        pred = net.conv2(expected[hold])  # conv2's copy was unchanged before its optimisation
    manual = ((pred - target).norm() / target.norm()).item()
    if mode == "symmetric":
        assert r2["rel_error_before"] == pytest.approx(0.0, abs=1e-6)
    else:
        assert manual > 0.05
        assert r2["rel_error_before"] == pytest.approx(manual, rel=1e-4)


def test_only_the_current_layer_changes_and_flags_are_restored(net, batches):
    approx = approximate(net, RANKS)
    net.train()
    approx.train()
    approx.bn2.eval()
    approx.head.weight.requires_grad_(False)
    flags = {n: m.training for n, m in approx.named_modules()}
    orig_before, appr_before = state(net), state(approx)
    orig_rg = [p.requires_grad for p in net.parameters()]
    appr_rg = [p.requires_grad for p in approx.parameters()]

    reconstruct(net, approx, ["conv3", "conv1"], batches, steps=20, lr=1e-2, batch_size=32, progress=False)

    orig_after, appr_after = state(net), state(approx)
    assert orig_after.keys() == orig_before.keys()
    assert all(torch.equal(orig_before[k], orig_after[k]) for k in orig_before)  # BN stats included
    for k in appr_before:
        changed = not torch.equal(appr_before[k], appr_after[k])
        assert changed == k.startswith(("conv1.", "conv3.")), k
    assert net.training and all(m.training for m in net.modules())
    assert {n: m.training for n, m in approx.named_modules()} == flags
    assert [p.requires_grad for p in net.parameters()] == orig_rg
    assert [p.requires_grad for p in approx.parameters()] == appr_rg
    assert all(p.grad is None for p in [*net.parameters(), *approx.parameters()])

    # conv3's stage left conv1 as conv1's stage made it
    alone = approximate(net, RANKS)
    reconstruct(net, alone, ["conv1"], batches, steps=20, lr=1e-2, batch_size=32, progress=False)
    for k, v in alone.conv1.state_dict().items():
        torch.testing.assert_close(v, approx.conv1.state_dict()[k], rtol=0, atol=0)


def _bytes_needed(batches) -> tuple[int, dict]:
    n = sum(len(x) for x, _ in batches)
    inputs = sum(x.numel() * 4 for x, _ in batches)
    per_sample = {"conv1": 3 * 144 + 8 * 144, "conv2": 8 * 144 + 12 * 144, "conv3": 12 * 144 + 16 * 36}
    per_layer = {k: n * v * 4 for k, v in per_sample.items()}
    return inputs + max(per_layer.values()), per_layer


def test_memory_bound_refuses_before_any_capture(net, batches):
    approx = approximate(net, RANKS)
    needed, per_layer = _bytes_needed(batches)
    sizes = []
    net.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    approx.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    before = state(approx)
    with pytest.raises(CacheLimitError, match=rf"needs {needed} bytes .*max_cache_bytes={needed - 1}\b.*'conv2'"):
        reconstruct(net, approx, list(CONVS), batches, max_cache_bytes=needed - 1, progress=False)
    assert set(sizes) <= {1}  # only the one-sample shape probe ran
    assert all(torch.equal(v, state(approx)[k]) for k, v in before.items())
    with pytest.raises(CacheLimitError, match="input batches alone"):
        reconstruct(net, approx, list(CONVS), batches, max_cache_bytes=1000, progress=False)

    res = reconstruct(net, approx, list(CONVS), batches, steps=1, max_cache_bytes=needed, progress=False)
    assert {r["name"]: r["cached_bytes"] for r in res} == per_layer


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "sideways"}, r"mode='sideways'.*'asymmetric', 'symmetric'"),
        ({"optimizer": "rmsprop"}, r"optimizer='rmsprop'.*'adam', 'sgd', 'lbfgs'"),
        ({"steps": 0, "lstsq": False}, r"steps=0.*>= 1"),
        ({"lstsq": "yes"}, r"lstsq='yes'.*true or false"),
        ({"lr": -1.0}, r"lr=-1.0"),
        ({"holdout_batches": 0}, r"holdout_batches=0"),
        ({"holdout_batches": 6}, r"holdout_batches=6 .*6 batches; valid: 1..5"),
        ({"batch_size": 0}, r"batch_size=0"),
        ({"optimizer": "lbfgs", "batch_size": 8}, r"'lbfgs' needs full-batch.*batch_size=8"),
        ({"layer_names": ["conv1", "conv9"]}, r"no layer 'conv9'.*valid: conv1, bn1, conv2"),
        ({"layer_names": ["conv1", "conv1"]}, r"'conv1' is listed twice"),
        ({"layer_names": "conv1"}, r"layer_names='conv1'"),
    ],
)
def test_bad_arguments_are_named(net, batches, kwargs, match):
    approx = approximate(net, RANKS)
    kwargs = {"layer_names": ["conv1"], **kwargs}
    with pytest.raises(DataReconError, match=match):
        reconstruct(net, approx, kwargs.pop("layer_names"), batches, progress=False, **kwargs)


def test_structural_problems_are_named(net, batches):
    with pytest.raises(DataReconError, match="same object"):
        reconstruct(net, net, ["conv1"], batches, progress=False)
    shared = copy.deepcopy(net)
    shared.conv1 = net.conv1
    with pytest.raises(DataReconError, match="'conv1' shares parameters with the original"):
        reconstruct(net, shared, ["conv1"], batches, progress=False)
    wrong = copy.deepcopy(net)
    wrong.conv2 = nn.Conv2d(8, 12, 3)  # no padding: output 10x10 instead of 12x12
    with pytest.raises(DataReconError, match=r"'conv2' maps .*\(12, 12, 12\) in the original.*\(12, 10, 10\)"):
        reconstruct(net, wrong, ["conv2"], batches, progress=False)


def test_nan_input_names_the_layer(net, batches):
    approx = approximate(net, RANKS)
    batches[2][0][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"data reconstruction of layer 'conv1'.*NaN") as err:
        reconstruct(net, approx, list(CONVS), batches, steps=2, progress=False)
    assert err.value.layer == "conv1" and err.value.stage == "data reconstruction"


def test_nan_weight_names_the_layer(net, batches):
    approx = approximate(net, RANKS)
    with torch.no_grad():
        approx.conv2[1].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"data reconstruction of layer 'conv2'") as err:
        reconstruct(net, approx, list(CONVS), batches, steps=2, progress=False)
    assert err.value.layer == "conv2"


def test_diverging_loss_names_the_layer_and_step(net, batches):
    approx = approximate(net, RANKS)
    with pytest.raises(
        NonFiniteError,
        match=r"data reconstruction of layer 'conv1': the (loss is (nan|inf) at step"
        r"|parameters became NaN)",
    ):
        reconstruct(net, approx, ["conv1"], batches, steps=50, lr=1e8, optimizer="sgd", progress=False)


def test_a_worse_result_is_reverted(net, batches):
    approx = approximate(net, {"conv2": 3})
    before = state(approx.conv2)
    # a huge SGD step that stays finite but overshoots badly
    (r,) = reconstruct(net, approx, ["conv2"], batches, steps=1, lr=50.0, optimizer="sgd", progress=False)
    assert r["reverted"] and r["rel_error_optimised"] > r["rel_error_before"] == r["rel_error_after"]
    assert all(torch.equal(v, approx.conv2.state_dict()[k]) for k, v in before.items())


def test_progress_bar_names_the_layer(net, batches, capsys):
    approx = approximate(net, {"conv1": 2})
    reconstruct(net, approx, ["conv1"], batches, steps=3, progress=True)
    assert "data reconstruction conv1" in capsys.readouterr().err


@run_if(cuda=True)
def test_cuda(net, batches):
    net = net.cuda()
    approx = approximate(net, RANKS).cuda()  # the test's factorisation builds its layers on the CPU
    res = reconstruct(net, approx, list(CONVS), batches, steps=30, lr=1e-2, progress=False)
    assert all(r["rel_error_after"] < r["rel_error_before"] for r in res)


def _lowrank(net: nn.Module, method: str, name: str, speedup: float = 2.0, bases=None) -> tuple[nn.Module, nn.Module]:
    """A copy of ``net`` with conv ``name`` replaced by ``method``'s layer (filter reconstruction) at
    ``bases`` (default: the largest rank reaching ``speedup``); returns the copy and the new layer."""
    cls, conv = METHODS[method], getattr(net, name)
    if bases is None:
        g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size)
        bases = cls.bases_for_speedup(g, speedup)
    approx = copy.deepcopy(net)
    setattr(approx, name, cls.from_conv(conv, bases, **fast_options(method)))
    return approx, getattr(approx, name)


def _last_pass(layer: nn.Module) -> set[str]:
    """The names of the parameters ``set_final`` writes (the layer's last linear pass and bias)."""
    probe = copy.deepcopy(layer)
    z = probe.final_features(torch.zeros(1, probe.geometry.in_channels, 6, 6))
    n = probe.geometry.out_channels
    probe.set_final(torch.zeros(n, z.shape[1]), None if probe.bias is None else torch.zeros(n))
    before = dict(layer.named_parameters())
    return {k for k, p in probe.named_parameters() if not torch.equal(p, before[k])}


@pytest.mark.parametrize("name", ["conv2", "conv3"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_lstsq_refit_is_the_optimum_of_the_last_pass(net, batches, method, name):
    """steps=0: the least-squares refit alone. It lowers the held-out error, and on the training
    samples the MSE's gradient with respect to the last pass (and bias) vanishes: an optimum."""
    approx, layer = _lowrank(net, method, name)
    last = _last_pass(layer)
    assert last and "bias" in {k.rsplit(".", 1)[-1] for k in last}  # conv2 and conv3 have a bias
    before = {k: p.detach().clone() for k, p in layer.named_parameters()}
    (r,) = reconstruct(net, approx, [name], batches, steps=0, progress=False)
    for k, p in layer.named_parameters():  # the earlier passes are left alone, the last one refit
        assert torch.equal(p, before[k]) == (k not in last), k
    assert r["rel_error_lstsq"] == r["rel_error_after"] < r["rel_error_before"]
    assert r["train_loss"] is None
    layer = layer.double()
    x = layer_inputs(net, name, batches[:-1]).double()
    target = getattr(net, name).double()(x)
    params = [p for k, p in layer.named_parameters() if k in last]
    loss = (layer(x) - target).pow(2).sum() / target.pow(2).sum()
    grads = torch.autograd.grad(loss, params)
    assert max(g.abs().max().item() for g in grads) < 1e-6 * max(p.abs().max().item() for p in params)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_gradient_steps_lower_the_error_of_every_method(net, batches, method):
    """Without the refit, Adam on all the layer's passes lowers its held-out output error."""
    approx, layer = _lowrank(net, method, "conv3", 3.0)
    (r,) = reconstruct(net, approx, ["conv3"], batches, lstsq=False, steps=20, lr=1e-2, progress=False)
    assert r["rel_error_lstsq"] is None and not r["reverted"]
    assert r["rel_error_after"] < 0.95 * r["rel_error_before"], r


def test_lstsq_then_gradient_steps_beat_gradient_steps_alone(net, batches):
    errors = {}
    for lstsq in (False, True):
        approx, _ = _lowrank(net, "scheme2", "conv3", bases=3)
        (r,) = reconstruct(net, approx, ["conv3"], batches, lstsq=lstsq, steps=30, lr=1e-2, progress=False)
        assert (r["rel_error_lstsq"] is None) == (not lstsq)
        errors[lstsq] = r["rel_error_after"]
    assert errors[True] < errors[False]
