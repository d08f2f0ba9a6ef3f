"""Every execution strategy (Scheme 1's, CP's) computes the same function as the reference layer,
and the measured choice is the one applied."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrx.compress import execution
from lrx.compress.execution import has_choice, reset_strategies, select, tune
from lrx.lowrank import METHODS
from lrx.lowrank.methods import cp
from lrx.lowrank.methods.scheme1 import STRATEGIES, Scheme1Conv
from tests.helpers.timing import QUICK

LAYERS_AND_STRATEGIES = [(Scheme1Conv, s) for s in sorted(STRATEGIES)] + [(cp.CPConv, s) for s in cp.STRATEGIES]
CHOOSERS = [name for name, cls in METHODS.items() if cls.default_strategy is not None]


@pytest.mark.parametrize("layer_type, strategy", LAYERS_AND_STRATEGIES)
@pytest.mark.parametrize(
    "c, n, k, stride, padding, dilation, bias",
    [
        (6, 10, 3, 1, 1, 1, True),
        (10, 4, 5, 2, 2, 1, False),
        (5, 7, (3, 5), (2, 1), (0, 2), (2, 1), True),
        (4, 6, (2, 3), 1, "same", 1, False),
    ],
)
def test_strategy_matches_the_dense_kernel(layer_type, strategy, c, n, k, stride, padding, dilation, bias):
    torch.manual_seed(0)
    layer = layer_type(c, n, k, 3, stride=stride, padding=padding, dilation=dilation, bias=bias).eval()
    layer.strategy = strategy
    x = torch.randn(2, c, 13, 11)
    expected = F.conv2d(x, layer.dense_weight(), layer.bias, stride, padding, dilation)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_the_methods_that_choose_their_execution():
    assert {"scheme1", "cp"} <= set(CHOOSERS)


def _fake_times(monkeypatch, pick):
    """Measurement replaced: every execution takes 2 ms but ``pick(names)``, which takes 1 ms."""
    timed = []

    def measure(calls, estimator):
        timed.append(sorted(calls))
        fastest = pick(sorted(calls))
        return SimpleNamespace(ms={name: 1.0 if name == fastest else 2.0 for name in calls})

    monkeypatch.setattr(execution, "measure", measure)
    monkeypatch.setattr(execution, "_chosen", {})
    return timed


@pytest.mark.parametrize("method", CHOOSERS)
def test_the_fastest_timed_execution_is_applied_whatever_its_name(monkeypatch, method):
    """select applies the execution measured fastest, including one that is not the default, and
    every execution it can pick computes the layer's function; fitting starts from the default."""
    torch.manual_seed(0)
    cls = METHODS[method]
    layer = cls(5, 7, (3, 5), 2, stride=(1, 2), padding=(1, 0), dilation=(2, 1)).eval()
    assert layer.strategy == cls.default_strategy
    x = torch.randn(2, 5, 11, 13)
    names = sorted(layer.executions(x))
    assert len(names) >= 2
    expected = F.conv2d(x, layer.dense_weight(), layer.bias, (1, 2), (1, 0), (2, 1))
    for wanted in names:
        _fake_times(monkeypatch, lambda calls, w=wanted: w)
        assert select(layer, x, QUICK)["strategy"] == wanted == layer.strategy
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    reset_strategies(layer)
    assert layer.strategy == cls.default_strategy


def test_a_choice_is_cached_per_shape_and_thread_count(monkeypatch):
    """The measured choice is kept per input shape and thread count, and applied from the cache to
    another layer of the same shape; another shape or thread count is timed and chosen on its own."""
    fastest = {"name": "last"}
    timed = _fake_times(monkeypatch, lambda calls: calls[-1] if fastest["name"] == "last" else calls[0])
    layer = Scheme1Conv(8, 16, 5, 2, padding=2).eval()
    names = sorted(layer.executions(torch.randn(2, 8, 12, 12)))
    x = torch.randn(2, 8, 12, 12)
    assert select(layer, x, QUICK) == {"strategy": names[-1], "times_ms": {n: 2.0 for n in names} | {names[-1]: 1.0}}
    twin = Scheme1Conv(8, 16, 5, 2, padding=2).eval()
    assert twin.strategy == twin.default_strategy != names[-1]
    assert select(twin, x, QUICK) == {"strategy": names[-1], "times_ms": {}} and twin.strategy == names[-1]
    assert len(timed) == 1  # from the cache
    fastest["name"] = "first"
    assert select(layer, torch.randn(3, 8, 12, 12), QUICK)["strategy"] == names[0]  # another input shape
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # another thread count
        assert select(layer, x, QUICK)["strategy"] == names[0] and len(timed) == 3
    finally:
        torch.set_num_threads(threads)
    assert select(layer, x, QUICK) == {"strategy": names[-1], "times_ms": {}} and len(timed) == 3


def test_select_really_times_every_execution():
    layer = cp.CPConv(8, 16, 3, 12, padding=1).eval()
    report = select(layer, torch.randn(2, 8, 12, 12), QUICK)
    assert set(report["times_ms"]) == set(cp.STRATEGIES) and all(t > 0 for t in report["times_ms"].values())


def test_tune_times_in_the_memory_format_asked_and_hands_the_network_back_contiguous(monkeypatch):
    layer = cp.CPConv(8, 16, 3, 12, padding=1).eval()
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer)
    seen = []

    def fake_select(module, x, estimator):
        seen.append(
            (
                module is layer,
                x.is_contiguous(memory_format=torch.channels_last),
                net[0].weight.is_contiguous(memory_format=torch.channels_last),
            )
        )
        return {}

    monkeypatch.setattr(execution, "select", fake_select)
    tune(net, torch.randn(2, 3, 12, 12), estimator=QUICK, memory_format="channels_last")
    assert seen == [(True, True, True)] and has_choice(layer) and not has_choice(net[0])
    assert all(p.is_contiguous() for p in net.parameters())
    with pytest.raises(ValueError, match="memory_format='nhwc' is unknown; valid: contiguous, channels_last"):
        tune(net, torch.randn(2, 3, 12, 12), memory_format="nhwc")
