import copy

import pytest
import torch
from torch import nn

from lrx.compress.guard import put_back_slower
from lrx.lowrank.methods.scheme2 import LowRankExpConvV2
from lrx.measure.estimator import Estimator
from lrx.measure.latency import compare, decide_point, layer_inputs, points
from lrx.models import AlexNetCIFAR
from lrx.modes import eval_mode, memory_format
from tests.helpers.methods import one_thread  # noqa: F401
from tests.helpers.timing import QUICK

pytestmark = pytest.mark.usefixtures("one_thread")


def test_layer_inputs_are_the_real_inputs():
    net = AlexNetCIFAR().eval()
    x = torch.randn(2, 3, 32, 32)
    inputs = layer_inputs(net, ["conv1", "conv3"], x)
    assert torch.equal(inputs["conv1"], x)
    assert inputs["conv3"].shape == (2, 128, 8, 8)


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_compare_reports_layers_and_both_speedups(memory_format):
    net = AlexNetCIFAR().eval()
    approx = copy.deepcopy(net)
    approx.conv3 = LowRankExpConvV2.from_conv(net.conv3, 8)
    out = compare(net, approx, 32, batch_size=2, estimator=QUICK, memory_format=memory_format)
    assert out["setup"]["batch_size"] == 2 and out["setup"]["memory_format"] == memory_format
    assert out["setup"]["device"] == "cpu" and out["setup"]["threads"] == torch.get_num_threads()
    assert [k for k, v in out["layers"].items() if v["replaced"]] == ["conv3"]
    untouched = out["layers"]["conv1"]
    assert untouched["baseline_ms"] == untouched["approx_ms"]
    assert untouched["speedup"] == 1.0 and untouched["speedup_iqr"] == [1.0, 1.0]
    for rec in (out["layers"]["conv3"], {k[5:]: v for k, v in out.items() if k.startswith("conv_")}):
        low, high = rec["speedup_iqr"]
        assert low <= rec["speedup"] <= high and isinstance(rec["unstable"], bool)
    assert out["model_speedup_iqr"][0] <= out["model_speedup"] <= out["model_speedup_iqr"][1]
    for timing in (out["conv_timing"], out["model_timing"]):
        assert QUICK.min_rounds <= timing["rounds"] <= QUICK.max_rounds and timing["threads"] == torch.get_num_threads()
        assert timing["busy_cores"] is None or timing["busy_cores"] >= 0
    assert net.conv1.weight.is_contiguous()  # memory format restored


def test_a_network_timed_against_an_exact_copy_of_itself_reads_one_within_its_spread():
    net = AlexNetCIFAR().eval()
    estimator = Estimator(warmup_s=0.05, block_s=0.002, min_rounds=40, max_rounds=40)
    out = compare(net, copy.deepcopy(net), 32, batch_size=2, estimator=estimator)
    low, high = out["model_speedup_iqr"]
    assert low <= 1.0 <= high and out["conv_speedup"] == 1.0  # no conv replaced: the same timings on both sides
    assert out["model_timing"]["rounds"] == 40


def test_compare_times_at_the_thread_count_asked_and_restores_torchs():
    net = AlexNetCIFAR().eval()
    before = torch.get_num_threads()
    out = compare(net, net, 32, batch_size=1, estimator=QUICK, threads=before + 1)
    assert out["setup"]["threads"] == before + 1 and out["model_timing"]["threads"] == before + 1
    assert torch.get_num_threads() == before


def test_the_decide_at_point_defaults_to_the_largest_batch_and_thread_count():
    lat = {"batch_sizes": [1, 32], "threads": [1, 2], "decide_at": {"batch_size": None, "threads": None}}
    assert decide_point(lat) == (32, 2)
    assert decide_point({**lat, "decide_at": {"batch_size": 1, "threads": 1}}) == (1, 1)
    assert decide_point({**lat, "threads": None})[1] == torch.get_num_threads()
    timings = {"cpu": {1: {32: "a"}, 2: {1: "b"}}}
    assert points(timings) == [("cpu, 1 thread, batch 32", "a"), ("cpu, 2 threads, batch 1", "b")]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compare_times_both_networks_on_cuda():
    net = AlexNetCIFAR().eval()
    approx = copy.deepcopy(net)
    approx.conv3 = LowRankExpConvV2.from_conv(net.conv3, 8)
    out = compare(net, approx, 32, batch_size=2, device="cuda", estimator=QUICK)
    assert out["setup"]["device"] == torch.cuda.get_device_name() and out["conv_speedup"] > 0
    assert next(net.parameters()).device.type == "cpu"  # compare hands the networks back on their own device


def test_compare_rejects_unknown_memory_format():
    net = AlexNetCIFAR()
    with pytest.raises(ValueError, match="channels_first.*contiguous"):
        compare(net, net, 32, memory_format="channels_first")


def test_guard_restores_the_original_conv_with_its_exact_weights_unless_its_lower_quartile_is_above_one():
    net = AlexNetCIFAR().eval()
    approx = copy.deepcopy(net)
    for name in ("conv2", "conv3", "conv4"):
        approx.set_submodule(name, LowRankExpConvV2.from_conv(net.get_submodule(name), 4))
    records = [{"name": "conv2"}, {"name": "conv3"}, {"name": "conv4"}]
    timings = {  # conv3: faster by its median, not confidently
        "conv2": {"speedup": 0.8, "speedup_iqr": [0.75, 0.85]},
        "conv3": {"speedup": 1.05, "speedup_iqr": [0.97, 1.1]},
        "conv4": {"speedup": 1.7, "speedup_iqr": [1.6, 1.8]},
    }
    assert put_back_slower(approx, net, records, timings, "cpu, 2 threads, batch 32") == ["conv2", "conv3"]
    assert isinstance(approx.conv2, nn.Conv2d) and approx.conv2 is not net.conv2
    assert torch.equal(approx.conv2.weight, net.conv2.weight)
    assert isinstance(approx.conv4, LowRankExpConvV2)
    assert records[0]["kept"] is False and "0.80x" in records[0]["put_back_reason"]
    assert "lower quartile 0.97x" in records[1]["put_back_reason"] and "batch 32" in records[1]["put_back_reason"]
    assert records[2]["kept"] is True and records[2]["guard"]["speedup_iqr"] == [1.6, 1.8]


def test_eval_mode_puts_each_module_back_in_its_own_mode_even_after_an_error():
    a, b = nn.Conv2d(1, 1, 1).train(), nn.Conv2d(1, 1, 1).eval()
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(a, b) as modules:
            assert modules == [a, b] and not a.training and not b.training
            raise RuntimeError("inside")
    assert a.training and not b.training


def test_memory_format_hands_the_modules_back_contiguous():
    net = AlexNetCIFAR()
    with memory_format(torch.channels_last, net):
        assert net.conv2.weight.is_contiguous(memory_format=torch.channels_last)
        assert not net.conv2.weight.is_contiguous()
    assert all(p.is_contiguous() for p in net.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the check runs in full (minutes)")
def test_the_cuda_check_exits_at_once_without_cuda_saying_so():
    import subprocess

    from tests.conftest import REPO

    res = subprocess.run(["bash", str(REPO / "scripts" / "cuda_check.sh")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "no CUDA device here" in res.stdout
