import copy
import itertools
import logging
import random

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from lrx.compress import planner
from lrx.compress.planner import Candidate, Timed, check_request, choose, plan
from lrx.lowrank import DecompositionError
from lrx.lowrank.base import PLANNER_TARGETS
from lrx.lowrank.geometry import ConvGeometry
from lrx.lowrank.methods.cp import CP_PLANNER_TARGETS, CPConv
from lrx.lowrank.methods.scheme1 import MAX_PLANNER_BASES, Scheme1Conv
from lrx.lowrank.methods.scheme2 import Scheme2Conv
from lrx.measure.estimator import Ratio, Timing
from lrx.measure.latency import conv_names
from lrx.models import AlexNetCIFAR
from tests.helpers.methods import one_thread  # noqa: F401
from tests.helpers.timing import ON_PARAM_CLOCK, param_clock, size

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = (16, 24, 32, 32, 24)  # AlexNetCIFAR's widths where the layers' size does not matter


def test_choose_is_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(20):
        candidates = {
            f"l{i}": [Candidate(f"l{i}", None, None, rng.random(), rng.uniform(1, 10), None) for _ in range(4)]
            for i in range(3)
        }
        fixed, budget = 2.0, rng.uniform(8, 25)
        best = None
        for combo in itertools.product(*candidates.values()):
            cost, err = fixed + sum(c.cost for c in combo), sum(c.penalty for c in combo)
            if cost <= budget and (best is None or err < best):
                best = err
        picks = choose(candidates, fixed, budget)
        if best is None:
            assert picks is None
        else:
            assert sum(c.penalty for c in picks) == pytest.approx(best)
            assert fixed + sum(c.cost for c in picks) <= budget


def _conv_macs(net: nn.Module, names) -> float:
    flops = FlopCountAnalysis(net.eval(), torch.zeros(1, 3, 32, 32))
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = flops.by_module()
    return sum(by_module[n] for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("target", [2.0, 4.0])
def test_planner_meets_its_mac_target(target):
    torch.manual_seed(0)
    net = AlexNetCIFAR(widths=SMALL).eval()
    chosen, report = plan(
        net,
        "all",
        target,
        metric="macs",
        methods=("scheme1", "scheme2"),
        options={"scheme1": dict(lam_steps=3, iters=5)},
        progress=False,
    )
    approx = copy.deepcopy(net)
    for name, c in chosen.items():
        if c.method is not None:
            approx.set_submodule(name, c.layer)
            assert c.layer.report["method"] == c.method and c.layer.bases == c.bases
        if c.method == "scheme1":  # the options reached Scheme 1's solver
            assert c.layer.report["lambda"]["steps"] == 3
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    measured = _conv_macs(net, names) / _conv_macs(approx, names)
    assert measured >= target * 0.99
    assert report["predicted_conv_speedup"] == pytest.approx(measured, rel=0.02)
    assert set(report["plan"]) == set(chosen)
    assert {p["method"] for p in report["plan"].values()} <= {None, "scheme1", "scheme2"}
    assert {o["method"] for opts in report["candidates"].values() for o in opts} == {None, "scheme1", "scheme2"}


def test_planner_refuses_unreachable_targets_and_bad_metrics():
    net = AlexNetCIFAR()
    with pytest.raises(DecompositionError, match="target_metric='flops'.*macs, latency"):
        plan(net, "conv2", 2.0, metric="flops")
    with pytest.raises(DecompositionError, match="target_speedup=0.5"):
        plan(net, "conv2", 0.5)
    with pytest.raises(DecompositionError, match="out of reach"):
        plan(net, "conv1", 50.0, "macs", methods=(2,), progress=False)


@pytest.mark.parametrize(
    "methods, options, match",
    [
        ((), None, r"methods=\[\] is invalid"),
        (("svd",), None, r"method 'svd' is unknown; valid: scheme1, scheme2"),
        ((1, 2), {"scheme2": {"lam_start": 0.1}}, r"lam_start: not an option of method 'scheme2'; its options: none"),
        ((1,), {1: {"lambda": 0.1}}, r"lambda: not an option of method 'scheme1'; its options: init, iters, lam_end"),
        ((1,), {"scheme1": {"lam_steps": 0}}, r"lam_steps=0: must be an integer >= 1"),
        ((2,), {"scheme1": {"lam_steps": 3}}, r"options for 'scheme1', which is not among the methods \[2\]"),
        ((2,), {"bogus": {}}, r"method 'bogus' is unknown"),
    ],
)
def test_check_request_refuses_bad_methods_and_options(methods, options, match):
    with pytest.raises(DecompositionError, match=match):
        check_request(AlexNetCIFAR(), "conv2", 2.0, "macs", methods, options)
    with pytest.raises(DecompositionError, match=match):  # before anything is solved or timed
        plan(AlexNetCIFAR(), "conv2", 2.0, "macs", methods=methods, options=options, progress=False)


def test_check_request_accepts_aliases_and_returns_the_selection():
    selected = check_request(AlexNetCIFAR(), ["conv2", "conv3"], 2.0, "latency", ("1", 2), {1: {"iters": 5}})
    assert [name for name, _ in selected] == ["conv2", "conv3"]


class _TwoConvs(nn.Module):
    """conv_a sees only 2 of its 16 input channels (the others are always 0); conv_b sees all."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv_a = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        with torch.no_grad():
            self.stem.weight[2:] = 0
            self.stem.bias[2:] = 0

    def forward(self, x):
        return self.conv_b(torch.relu(self.conv_a(torch.relu(self.stem(x)))))


def test_data_aware_errors_put_the_bases_where_the_data_needs_them():
    torch.manual_seed(0)
    net = _TwoConvs().eval()
    images = torch.randn(16, 3, 12, 12)
    layers = ["conv_a", "conv_b"]
    by_kernel, rep_k = plan(net, layers, 1.8, metric="macs", input_size=12, methods=(2,), progress=False)
    by_data, rep_d = plan(
        net, layers, 1.8, metric="macs", input_size=12, methods=(2,), progress=False, calibration=images
    )
    assert (rep_k["error"], rep_d["error"]) == ("filter", "data")
    # conv_a's output lives in a small subspace, so few bases reproduce it on real inputs
    assert (by_data["conv_a"].bases or 99) < (by_kernel["conv_a"].bases or 99)
    assert (by_data["conv_b"].bases or 99) > (by_kernel["conv_b"].bases or 99)
    # the installed layers are the filter-reconstruction solutions, not the refit copies
    c = by_data["conv_a"]
    torch.testing.assert_close(c.layer.dense_weight(), type(c.layer).from_conv(net.conv_a, c.bases).dense_weight())


class _HeadReadsChannelZero(nn.Module):
    """Logits from the global average of conv's output channel 0 only (the other 7 are ignored)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(1, 4)

    def forward(self, x):
        return self.head(self.conv(x)[:, :1].mean((2, 3)))


def test_kl_error_sees_only_what_reaches_the_predictions():
    torch.manual_seed(0)
    net, images = _HeadReadsChannelZero().eval(), torch.randn(32, 3, 8, 8)
    logits = net(images).detach()
    data_error = planner._output_error(net, ["conv"], images, "data")
    kl_error = planner._output_error(net, ["conv"], images, "kl")
    assert kl_error("conv", copy.deepcopy(net.conv)) == pytest.approx(0.0, abs=1e-6)
    for channels, reaches_predictions in ((slice(1, None), False), (slice(0, 1), True)):
        changed = copy.deepcopy(net.conv)
        with torch.no_grad():
            changed.weight[channels] *= -1
        assert data_error("conv", changed) > 0.1  # the layer's output changed either way
        assert (kl_error("conv", changed) > 1e-3) == reaches_predictions
    # each candidate is put in place only while its KL is computed
    assert not net.conv._forward_hooks
    torch.testing.assert_close(net(images), logits)


def test_kl_planning_reports_its_error_kind_and_meets_the_target():
    torch.manual_seed(0)
    net, images = _TwoConvs().eval(), torch.randn(16, 3, 12, 12)
    chosen, report = plan(
        net,
        ["conv_a", "conv_b"],
        1.8,
        metric="macs",
        input_size=12,
        methods=(2,),
        progress=False,
        calibration=images,
        error="kl",
    )
    assert report["error"] == "kl" and report["predicted_conv_speedup"] >= 1.8
    assert all(c["error"] >= 0 for opts in report["candidates"].values() for c in opts)
    with pytest.raises(DecompositionError, match="error='mse'.*data, kl"):
        plan(net, ["conv_a"], 1.8, metric="macs", input_size=12, calibration=images, error="mse")


def _fake_timing(ms: dict, speedup: float | None = None) -> Timing:
    ratios = {} if speedup is None else {"speedup": Ratio(speedup, speedup, speedup, 0.1)}
    return Timing(ms, ratios, rounds=2, seconds=0.0, threads=1, busy_cores=0.0)


def test_latency_planning_times_in_the_requested_memory_format(monkeypatch):
    seen = []

    def record(modules, x):
        weights = [p for m in modules for p in m.parameters() if p.dim() == 4]
        seen.append(
            x.is_contiguous(memory_format=torch.channels_last)
            and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
        )

    def fake_dense(modules, x, *args, **kwargs):
        record(modules.values(), x)
        return _fake_timing({"dense": 1.0})

    def fake_pair(dense, lowrank, x, *args, **kwargs):
        record([dense, lowrank], x)
        return _fake_timing({"dense": 1.0, "lowrank": 0.5}, 2.0)

    monkeypatch.setattr(planner, "time_modules", fake_dense)
    monkeypatch.setattr(planner, "dense_vs_lowrank", fake_pair)
    net = AlexNetCIFAR()
    timed = planner.Timed(memory_format="channels_last")
    plan(net, "conv2", 1.1, metric="latency", methods=(2,), progress=False, timed=timed)
    assert len(seen) > 5 and all(seen)
    # the network is handed back in the contiguous format
    assert all(p.is_contiguous() for p in net.parameters())
    with pytest.raises(DecompositionError, match="memory_format='nhwc'.*contiguous, channels_last"):
        plan(net, "conv2", 1.1, metric="latency", timed=planner.Timed(memory_format="nhwc"))


def test_a_plan_for_a_shared_cpu_times_every_candidate_next_to_busy_neighbours(monkeypatch):
    from contextlib import contextmanager

    from lrx.measure import load

    spinning, busy_at_timing, real_neighbours = [], [], load.busy_neighbours

    @contextmanager
    def neighbours(count):
        with real_neighbours(count) as spinners:
            spinning.extend(spinners)
            yield spinners
        spinning.clear()

    def fake_dense(modules, x, *args, **kwargs):
        busy_at_timing.append(sum(p.poll() is None for p in spinning))
        return _fake_timing({"dense": 1.0})

    def fake_pair(dense, lowrank, x, *args, **kwargs):
        busy_at_timing.append(sum(p.poll() is None for p in spinning))
        return _fake_timing({"dense": 1.0, "lowrank": 0.5}, 2.0)

    monkeypatch.setattr(load, "busy_neighbours", neighbours)
    monkeypatch.setattr(planner, "time_modules", fake_dense)
    monkeypatch.setattr(planner, "dense_vs_lowrank", fake_pair)
    _, report = plan(AlexNetCIFAR(), "conv2", 1.1, "latency", methods=(2,), progress=False, timed=planner.Timed(busy=1))
    assert len(busy_at_timing) > 5 and set(busy_at_timing) == {1}  # one neighbour spinning at every timing
    assert report["load"]["neighbours"] == 1 and not spinning


def _time_by_macs(monkeypatch) -> None:
    """The planner's timings, faked: every dense conv costs 1 and a candidate runs its MAC speed-up."""
    monkeypatch.setattr(planner, "time_modules", lambda modules, *a, **k: _fake_timing({"dense": 1.0}))
    monkeypatch.setattr(
        planner,
        "dense_vs_lowrank",
        lambda dense, lowrank, *a, **k: _fake_timing({"dense": 1.0}, lowrank.report["macs_speedup"]),
    )


def test_the_closed_loop_re_aims_a_plan_that_measures_slower_than_predicted(monkeypatch, caplog):
    """Every dense conv costs 1 and a candidate its MAC share; the assembled network measures 20%
    slower than the plan predicts. The loop aims the next choice at target * target / measured,
    logs and records each round, and keeps the round measured closest to the target."""
    net = AlexNetCIFAR(widths=SMALL)
    _time_by_macs(monkeypatch)
    total = len(conv_names(net))

    def slower(_net, _x, picks, _timed, _options=None):
        predicted = total / (total - len(picks) + sum(c.cost for c in picks))
        return {"speedup": 0.8 * predicted, "speedup_iqr": [0.78 * predicted, 0.82 * predicted], "unstable": False}

    monkeypatch.setattr(planner, "measured_speedup", slower)
    layers = ["conv2", "conv3", "conv4", "conv5"]
    with caplog.at_level(logging.INFO, logger="lrx.compress.planner"):
        _, report = plan(net, layers, 2.0, "latency", methods=(2,), progress=False, closed_loop_rounds=4)
    rounds = report["closed_loop"]
    assert 2 <= len(rounds) <= 4 and rounds[0]["aim"] == 2.0
    assert rounds[1]["aim"] == pytest.approx(2.0 * 2.0 / rounds[0]["measured"])
    assert rounds[1]["predicted"] > rounds[0]["predicted"]  # cheaper candidates
    closest = min(rounds, key=lambda r: abs(r["measured"] / 2.0 - 1))
    assert {n: (v["method"], v["bases"]) for n, v in report["plan"].items()} == {
        n: (m, b) for n, (m, b) in closest["plan"].items()
    }
    assert caplog.text.count("closed loop, round") == len(rounds)


def test_the_closed_loop_measures_the_whole_network_against_the_dense_one(monkeypatch):
    """On the parameter clock a network takes its parameter count: the measured speed-up is the whole
    network's (its linear layers count too), and the network planned on is left as it was."""
    torch.manual_seed(0)
    net = AlexNetCIFAR(widths=SMALL).eval()
    chosen, _ = plan(net, "all", 1.5, "macs", methods=("scheme2", "prune"), progress=False)
    before = copy.deepcopy(net.state_dict())
    with param_clock(monkeypatch):
        whole = planner.measured_speedup(net, torch.randn(2, 3, 32, 32), list(chosen.values()), Timed(ON_PARAM_CLOCK))
    approx = copy.deepcopy(net)
    planner.apply(approx, chosen)
    assert whole["speedup"] == pytest.approx(size(net) / size(approx))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_cp_candidates_start_at_2x_where_the_others_start_at_1_25x():
    conv = AlexNetCIFAR().conv2
    g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size)
    grid = planner._grid(conv, (2, "cp", "scheme1"))
    assert {cls.method for cls, _ in grid} == {"scheme2", "cp", "scheme1"}
    cp = [bases for cls, bases in grid if cls.method == "cp"]
    s2 = [bases for cls, bases in grid if cls.method == "scheme2"]
    s1 = [bases for cls, bases in grid if cls.method == "scheme1"]
    assert min(CP_PLANNER_TARGETS) == 2.0 and max(CP_PLANNER_TARGETS) == max(PLANNER_TARGETS) == 16.0
    assert max(cp) == CPConv.bases_for_speedup(g, 2.0) and min(cp) == CPConv.bases_for_speedup(g, 16.0)
    assert CPConv.theoretical_speedup(g, max(cp)) >= 2.0 > CPConv.theoretical_speedup(g, max(cp) + 1)
    assert max(s2) == Scheme2Conv.bases_for_speedup(g, 1.25) and min(PLANNER_TARGETS) == 1.25
    assert s1 == list(range(1, MAX_PLANNER_BASES + 1))  # every M up to the cap (5x5: 24 > 12)
    assert Scheme1Conv.planner_ranks(ConvGeometry.of(8, 8, 3)) == list(range(1, 9))  # 3x3: below kh*kw


def test_planner_speedups_choose_the_ranks_tried():
    conv = AlexNetCIFAR().conv2
    g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size)
    grid = planner._grid(conv, ("scheme2", "cp"), speedups=(2.0, 4.0))
    assert [(cls.method, b) for cls, b in grid] == [
        (cls.method, cls.bases_for_speedup(g, s)) for cls in (Scheme2Conv, CPConv) for s in (4.0, 2.0)
    ]


def test_a_method_timed_slower_than_the_dense_conv_is_not_tried_at_larger_ranks(monkeypatch):
    """Ranks are tried smallest first: once one loses to the dense conv, the larger ones (more
    MACs) are skipped."""
    tried = []

    def slower_from_24(dense, lowrank, x, *args, **kwargs):
        tried.append(lowrank.bases)
        return _fake_timing({"dense": 1.0, "lowrank": 1.0}, 2.0 if lowrank.bases < 24 else 0.9)

    monkeypatch.setattr(planner, "time_modules", lambda modules, *a, **k: _fake_timing({"dense": 1.0}))
    monkeypatch.setattr(planner, "dense_vs_lowrank", slower_from_24)
    conv = AlexNetCIFAR().conv2
    ranks = [b for _, b in planner._grid(conv, ("scheme2",))]
    plan(AlexNetCIFAR(), "conv2", 1.1, metric="latency", methods=("scheme2",), progress=False, closed_loop_rounds=0)
    first_slower = min(b for b in ranks if b >= 24)
    assert tried == [b for b in ranks if b <= first_slower] and max(ranks) > first_slower


def test_the_plan_installs_the_method_it_reports():
    torch.manual_seed(0)
    net = AlexNetCIFAR(widths=(8, 16, 64, 64, 16)).eval()  # conv3 and conv4: most of the MACs
    chosen, report = plan(net, ["conv3", "conv4"], 1.3, "macs", methods=("channel_svd", "2"), progress=False)
    assert set(chosen) == {"conv3", "conv4"}
    for name, c in chosen.items():
        dense = {"dense": next(o["cost"] for o in report["candidates"][name] if o["method"] is None)}
        assert report["plan"][name] == {"method": c.method, "bases": c.bases, "error": c.error, "cost": c.cost, **dense}
        if c.method is not None:
            assert c.method in ("channel_svd", "scheme2") and type(c.layer).method == c.method
    records = planner.apply(net, chosen)
    assert records  # 1.3x needs at least one of the two replaced
    assert [r["name"] for r in records] == [n for n, c in chosen.items() if c.method is not None]
    assert all(r["method"] == chosen[r["name"]].method and "history" not in r for r in records)


def test_outside_torch_each_dense_conv_and_the_dense_network_are_converted_once_per_plan(monkeypatch):
    """Converting a module for ONNX Runtime or OpenVINO (int8: quantizing it) costs as much as timing
    it: each dense conv is converted once however many candidates it is timed against, the dense
    network once however many closed-loop rounds measure it; each candidate is converted itself."""
    converted = []

    def convert(module, x, runtime, threads, precision):
        converted.append(module)
        return (module, runtime, precision)

    def pair(dense, lowrank, x, estimator, runtime, threads, precision, built):
        assert built == {"dense": (dense, runtime, precision)}  # the dense side's call, made by call_of
        return _fake_timing({"dense": 1.0, "lowrank": 0.8}, 1.25)

    monkeypatch.setattr(planner, "check_runtime", lambda *a: None)
    monkeypatch.setattr(planner, "call_of", convert)
    monkeypatch.setattr(planner, "dense_vs_lowrank", pair)
    monkeypatch.setattr(planner, "time_modules", lambda modules, *a, **k: _fake_timing({"dense": 1.0}))
    net = AlexNetCIFAR(widths=SMALL)
    timed = planner.Timed(runtime="openvino", precision="int8")
    _, report = plan(net, ["conv2", "conv3"], 1.1, methods=(2,), progress=False, timed=timed, closed_loop_rounds=3)
    tried = sum(len(c) - 1 for c in report["candidates"].values())  # the first of each: the conv kept
    assert tried > 4 and len(report["closed_loop"]) >= 2  # 1.25x measured for a 1.1x target: re-aimed
    dense = [m for m in converted if m is not net]
    assert len(dense) == len({id(m) for m in dense}) == len(conv_names(net))  # each conv once: its cost
    assert sum(m is net for m in converted) == 1
    assert not timed._dense_calls  # the caller's Timed keeps nothing


def test_a_latency_target_beyond_the_summed_timings_is_measured_whole_from_the_cheapest_plan(monkeypatch, caplog):
    """The per-conv timings add up to less than the network whole runs (the runtime fuses across
    layers): with the closed loop, a target they cannot reach starts from the cheapest plan, which
    the loop measures; without it, the target is refused."""
    net = AlexNetCIFAR(widths=SMALL)
    _time_by_macs(monkeypatch)
    monkeypatch.setattr(
        planner, "measured_speedup", lambda *a, **k: {"speedup": 9.0, "speedup_iqr": [9, 9], "unstable": False}
    )
    layers, target = ["conv2", "conv3"], 50.0
    with pytest.raises(DecompositionError, match="target_speedup=50.0 is out of reach"):
        plan(net, layers, target, "latency", methods=(2,), progress=False)
    with caplog.at_level(logging.WARNING, logger="lrx.compress.planner"):
        chosen, report = plan(net, layers, target, "latency", methods=(2,), progress=False, closed_loop_rounds=2)
    cheapest = {n: min(c["cost"] for c in opts) for n, opts in report["candidates"].items()}
    assert {n: c.cost for n, c in chosen.items()} == cheapest
    first = report["closed_loop"][0]
    assert first["aim"] == pytest.approx(first["predicted"]) and first["aim"] < target
    assert "out of reach of the per-conv timings" in caplog.text


def test_the_closed_loop_re_aims_between_the_rounds_that_bracket_the_target():
    """The rounds of a real plan (alexnet_cifar, Scheme 2, OpenVINO int8): a ratio step from 4.34x
    jumps to 2.33x; with both sides measured the next aim lies where the line between them crosses
    the target, not another ratio step away from the last round."""
    rounds = [{"aim": 2.74, "measured": 4.34}]
    assert planner.next_aim(rounds, 3.0) == pytest.approx(2.74 * 3.0 / 4.34)
    rounds.append({"aim": 1.89, "measured": 2.33})
    aim = planner.next_aim(rounds, 3.0)
    assert aim == pytest.approx(1.89 + (3.0 - 2.33) * (2.74 - 1.89) / (4.34 - 2.33)) and 1.89 < aim < 2.74
    rounds.append({"aim": aim, "measured": 2.8})  # still below: the closer one below takes 2.33's place
    assert aim < planner.next_aim(rounds, 3.0) < 2.74
