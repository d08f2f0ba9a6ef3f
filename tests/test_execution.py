"""Every execution strategy (Scheme 1's, CP's) computes the same function as the reference layer,
and the measured choice is the one applied."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrx.lowrank import METHODS, LowRankExpConvV1, cp
from lrx.lowrank.execution import reset_strategies, tune
from lrx.lowrank.scheme1_exec import STRATEGIES, choose
from tests.helpers.timing import QUICK

LAYERS_AND_STRATEGIES = [(LowRankExpConvV1, s) for s in sorted(STRATEGIES)] + [(cp.CPConv, s) for s in cp.STRATEGIES]


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


CHOOSERS = [name for name, cls in METHODS.items() if hasattr(cls, "select_strategy")]


def test_the_methods_that_choose_their_execution():
    assert {"scheme1", "cp"} <= set(CHOOSERS)


@pytest.mark.parametrize("method", CHOOSERS)
def test_every_strategy_a_layer_times_computes_the_same_and_the_fastest_is_kept(method):
    """Whatever a registered layer's select_strategy can pick computes its function; it keeps the
    fastest it timed, and fitting starts from its default."""
    torch.manual_seed(0)
    cls = METHODS[method]
    layer = cls(5, 7, (3, 5), 2, stride=(1, 2), padding=(1, 0), dilation=(2, 1)).eval()
    assert layer.strategy == cls.default_strategy
    x = torch.randn(2, 5, 11, 13)
    report = layer.select_strategy(x, estimator=QUICK)
    times = report["times_ms"]
    assert len(times) >= 2 and report["strategy"] == layer.strategy == min(times, key=times.get)
    expected = F.conv2d(x, layer.dense_weight(), layer.bias, (1, 2), (1, 0), (2, 1))
    for strategy in times:
        layer.strategy = strategy
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    reset_strategies(layer)
    assert layer.strategy == cls.default_strategy


def test_choice_is_measured_cached_and_applied():
    layer = LowRankExpConvV1(8, 16, 5, 2, padding=2).eval()
    x = torch.randn(2, 8, 12, 12)
    best, times = choose(layer, x, estimator=QUICK)
    assert set(times) == set(STRATEGIES) and best == min(times, key=times.get)
    assert choose(layer, x) == (best, {})  # cached: not timed again
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer)
    report = tune(net, torch.randn(2, 3, 12, 12), estimator=QUICK)
    assert report["1"]["strategy"] == layer.strategy == best


def test_cp_keeps_its_faster_execution_and_fitting_goes_back_to_the_default():
    layer = cp.CPConv(8, 16, 3, 12, padding=1).eval()
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer)
    (report,) = tune(net, torch.randn(2, 3, 12, 12), estimator=QUICK).values()
    times = report["times_ms"]
    assert set(times) == set(cp.STRATEGIES) and report["strategy"] == layer.strategy == min(times, key=times.get)
    reset_strategies(net)
    assert layer.strategy == layer.default_strategy == "separable"


def test_tune_times_in_the_memory_format_asked_and_hands_the_network_back_contiguous(monkeypatch):
    layer = cp.CPConv(8, 16, 3, 12, padding=1).eval()
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer)
    seen = []
    monkeypatch.setattr(
        layer,
        "select_strategy",
        lambda x, estimator: (
            seen.append(
                (
                    x.is_contiguous(memory_format=torch.channels_last),
                    net[0].weight.is_contiguous(memory_format=torch.channels_last),
                )
            )
            or {}
        ),
    )
    tune(net, torch.randn(2, 3, 12, 12), estimator=QUICK, memory_format="channels_last")
    assert seen == [(True, True)]
    assert all(p.is_contiguous() for p in net.parameters())
    with pytest.raises(ValueError, match="memory_format='nhwc' is unknown; valid: contiguous, channels_last"):
        tune(net, torch.randn(2, 3, 12, 12), memory_format="nhwc")
