import copy
import itertools
import random

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from lrx.lowrank import DecompositionError
from lrx.lowrank.planner import Candidate, choose, plan
from lrx.models import AlexNetCIFAR


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
            cost, err = fixed + sum(c.cost for c in combo), sum(c.error for c in combo)
            if cost <= budget and (best is None or err < best):
                best = err
        picks = choose(candidates, fixed, budget)
        if best is None:
            assert picks is None
        else:
            assert sum(c.error for c in picks) == pytest.approx(best)
            assert fixed + sum(c.cost for c in picks) <= budget


def _conv_macs(net: nn.Module, names) -> float:
    flops = FlopCountAnalysis(net.eval(), torch.zeros(1, 3, 32, 32))
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = flops.by_module()
    return sum(by_module[n] for n in names)


@pytest.mark.parametrize("target", [2.0, 4.0])
def test_planner_meets_its_mac_target(target):
    torch.manual_seed(0)
    net = AlexNetCIFAR().eval()
    chosen, report = plan(net, "all", target, metric="macs", lam_steps=3, iters=5, progress=False)
    approx = copy.deepcopy(net)
    for name, c in chosen.items():
        if c.scheme is not None:
            approx.set_submodule(name, c.layer)
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    measured = _conv_macs(net, names) / _conv_macs(approx, names)
    assert measured >= target * 0.99
    assert report["predicted_conv_speedup"] == pytest.approx(measured, rel=0.02)
    assert set(report["plan"]) == set(chosen)


def test_planner_refuses_unreachable_targets_and_bad_metrics():
    net = AlexNetCIFAR()
    with pytest.raises(DecompositionError, match="target_metric='flops'.*macs, latency"):
        plan(net, "conv2", 2.0, metric="flops")
    with pytest.raises(DecompositionError, match="target_speedup=0.5"):
        plan(net, "conv2", 0.5)
    with pytest.raises(DecompositionError, match="out of reach"):
        plan(net, "conv1", 50.0, schemes=(2,), progress=False)
