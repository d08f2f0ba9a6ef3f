import copy

import pytest
import torch
from torch import nn

from lrx.latency import compare, interleaved_ms, layer_inputs
from lrx.lowrank import LowRankExpConvV2
from lrx.lowrank.guard import put_back_slower
from lrx.models import AlexNetCIFAR
from lrx.modes import eval_mode, memory_format
from tests.helpers.methods import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_interleaved_runs_every_call_round_robin():
    order = []
    calls = {k: (lambda k=k: order.append(k)) for k in "abc"}
    times = interleaved_ms(calls, torch.device("cpu"), warmup=1, repeats=4)
    assert set(times) == {"a", "b", "c"} and all(t >= 0 for t in times.values())
    assert order == list("abc") * 5


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
    out = compare(net, approx, 32, batch_size=2, warmup=1, repeats=3, memory_format=memory_format)
    assert out["setup"]["batch_size"] == 2 and out["setup"]["memory_format"] == memory_format
    assert out["setup"]["device"] == "cpu" and out["setup"]["threads"] == torch.get_num_threads()
    assert [k for k, v in out["layers"].items() if v["replaced"]] == ["conv3"]
    untouched = out["layers"]["conv1"]
    assert untouched["baseline_ms"] == untouched["approx_ms"]
    total = sum(v["baseline_ms"] for v in out["layers"].values()) / sum(v["approx_ms"] for v in out["layers"].values())
    assert out["conv_speedup"] == pytest.approx(total)
    assert out["model_speedup"] == pytest.approx(out["model_ms"]["baseline"] / out["model_ms"]["approx"])
    assert net.conv1.weight.is_contiguous()  # memory format restored


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compare_times_both_networks_on_cuda():
    net = AlexNetCIFAR().eval()
    approx = copy.deepcopy(net)
    approx.conv3 = LowRankExpConvV2.from_conv(net.conv3, 8)
    out = compare(net, approx, 32, batch_size=2, device="cuda", warmup=1, repeats=3)
    assert out["setup"]["device"] == torch.cuda.get_device_name() and out["conv_speedup"] > 0
    assert next(net.parameters()).device.type == "cpu"  # compare hands the networks back on their own device


def test_compare_rejects_unknown_memory_format():
    net = AlexNetCIFAR()
    with pytest.raises(ValueError, match="channels_first.*contiguous"):
        compare(net, net, 32, memory_format="channels_first")


def test_guard_restores_the_original_conv_with_its_exact_weights():
    net = AlexNetCIFAR().eval()
    approx = copy.deepcopy(net)
    approx.conv2 = LowRankExpConvV2.from_conv(net.conv2, 4)
    approx.conv4 = LowRankExpConvV2.from_conv(net.conv4, 4)
    records = [{"name": "conv2"}, {"name": "conv4"}]
    timings = {"conv2": {"speedup": 0.8}, "conv4": {"speedup": 1.7}}
    assert put_back_slower(approx, net, records, timings) == ["conv2"]
    assert isinstance(approx.conv2, nn.Conv2d) and approx.conv2 is not net.conv2
    assert torch.equal(approx.conv2.weight, net.conv2.weight)
    assert isinstance(approx.conv4, LowRankExpConvV2)
    assert records[0]["kept"] is False and "0.80x" in records[0]["put_back_reason"]
    assert records[1]["kept"] is True


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
