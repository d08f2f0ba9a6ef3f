"""Plan where you serve: with latency.runtime/precision auto, the guard and the planner time their
candidates in the deployment target that serves the dense network fastest (fake timings: which
target wins is decided here, not by this machine)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lrx.deploy import compare
from lrx.deploy.targets import Target
from lrx.measure.estimator import Timing
from lrx.models.alexnet_cifar import AlexNetCIFAR


def test_the_fastest_dense_target_is_where_candidates_are_timed(monkeypatch):
    ms = {"torch-fp32": 3.0, "onnxruntime-fp32": 2.0, "openvino-int8": 1.0}
    targets = [Target.of(t) for t in ms]
    deployed = {t: {"baseline": SimpleNamespace(timer=lambda x, t=t: lambda: ms[t])} for t in ms}
    seen = {}

    def deploy_both(nets, targets_, *args):
        seen["nets"], seen["targets"] = nets, targets_
        return deployed, {}

    def measure(calls, ratios, estimator, threads):
        return Timing({k: call() for k, call in calls.items()}, {}, 1, 0.0, 1, None)

    monkeypatch.setattr(compare, "deploy_both", deploy_both)
    monkeypatch.setattr(compare, "measure", measure)
    net = AlexNetCIFAR().eval()
    best, timed = compare.fastest_dense(net, targets, torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32), 1)
    assert best == Target("openvino", "int8") and timed == ms
    assert list(seen["nets"]) == ["baseline"] and seen["targets"] == targets
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in seen["nets"]["baseline"].modules())  # served folded


def test_a_target_matches_a_runtime_and_precision_or_auto():
    t = Target.of("openvino-int8")
    assert t.matches("auto", "auto") and t.matches("openvino", "auto") and t.matches("auto", "int8")
    assert not t.matches("torch", "auto") and not t.matches("auto", "fp32")


def test_no_target_that_serves_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(compare, "deploy_both", lambda *a: ({}, {"torch-fp32": "check failed"}))
    with pytest.raises(compare.TargetError, match="no target of \\['torch-fp32'\\] serves the network"):
        compare.fastest_dense(AlexNetCIFAR().eval(), [Target.of("torch-fp32")], torch.zeros(1, 3, 32, 32), None, 1)
