import copy

import pytest
import torch
from torch import nn

from lrx.compress.guard import put_back_slower
from lrx.lowrank.methods.scheme2 import Scheme2Conv
from lrx.measure.estimator import Estimator
from lrx.measure.latency import compare, conv_names, decide_point, layer_inputs, points
from lrx.models import AlexNetCIFAR
from lrx.modes import eval_mode, memory_format
from tests.helpers.convs import small_model
from tests.helpers.methods import one_thread  # noqa: F401
from tests.helpers.run_if import run_if
from tests.helpers.timing import ON_PARAM_CLOCK, QUICK, param_clock, size

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def clock(monkeypatch):
    with param_clock(monkeypatch) as c:
        yield c


def test_layer_inputs_are_the_real_inputs():
    net = AlexNetCIFAR().eval()
    x = torch.randn(2, 3, 32, 32)
    inputs = layer_inputs(net, ["conv1", "conv3"], x)
    assert torch.equal(inputs["conv1"], x)
    assert inputs["conv3"].shape == (2, 128, 8, 8)


def _net_and_approx() -> tuple[nn.Module, nn.Module]:
    """A small AlexNetCIFAR, and a copy of it with conv3 replaced by Scheme 2."""
    torch.manual_seed(0)
    net = AlexNetCIFAR(widths=(16, 24, 32, 32, 24)).eval()
    approx = copy.deepcopy(net)
    approx.conv3 = Scheme2Conv.from_conv(net.conv3, 4)
    return net, approx


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_compare_reports_every_conv_and_both_speedups(clock, memory_format):
    """On the parameter clock a module's time is its parameter count, so every speed-up is known."""
    net, approx = _net_and_approx()
    out = compare(net, approx, 32, batch_size=2, estimator=ON_PARAM_CLOCK, memory_format=memory_format)
    assert out["setup"]["batch_size"] == 2 and out["setup"]["memory_format"] == memory_format
    assert out["setup"]["device"] == "cpu" and out["setup"]["threads"] == torch.get_num_threads()
    names = conv_names(net)
    assert [k for k, v in out["layers"].items() if v["replaced"]] == ["conv3"]
    conv3 = out["layers"]["conv3"]
    assert conv3["baseline_ms"] == 1e3 * size(net.conv3) and conv3["approx_ms"] == 1e3 * size(approx.conv3)
    assert conv3["speedup"] == size(net.conv3) / size(approx.conv3) > 1
    for name in names:  # each conv timed on its own input; an untouched one once, counting on both sides
        layer = out["layers"][name]
        assert layer["baseline_ms"] == 1e3 * size(net.get_submodule(name))
        assert name == "conv3" or layer["approx_ms"] == layer["baseline_ms"]
    convs = [sum(size(m.get_submodule(n)) for n in names) for m in (net, approx)]
    assert out["conv_ms"] == {"baseline": 1e3 * convs[0], "approx": 1e3 * convs[1]}
    assert out["conv_speedup"] == convs[0] / convs[1] and out["conv_speedup_iqr"] == [out["conv_speedup"]] * 2
    assert out["model_speedup"] == size(net) / size(approx) < out["conv_speedup"]  # the rest of the network counts
    assert out["model_ms"] == {"baseline": 1e3 * size(net), "approx": 1e3 * size(approx)}
    assert not out["conv_unstable"] and not out["model_unstable"]
    for timing in (out["conv_timing"], out["model_timing"]):  # settled at once: every round reads the same
        assert timing["rounds"] == ON_PARAM_CLOCK.min_rounds and timing["threads"] == torch.get_num_threads()
    assert net.conv1.weight.is_contiguous()  # memory format restored


def test_an_exact_copy_reads_one_while_the_machine_changes_speed_between_rounds(clock):
    """Each round times both networks, so a machine three times slower for a while slows both sides
    of the rounds it lasts: the speed-up of a network over its exact copy stays 1.0, with no spread."""
    net = AlexNetCIFAR(widths=(16, 24, 32, 32, 24)).eval()
    period = 30 * size(net)  # about 15 rounds at full speed, then 5 at a third of it, and so on
    clock.speed = lambda now: 3 if (now // period) % 2 else 1
    rounds = Estimator(warmup_s=0.0, block_s=1e-9, min_rounds=40, max_rounds=40)
    out = compare(net, copy.deepcopy(net), 32, batch_size=2, estimator=rounds)
    assert out["model_speedup"] == 1.0 and out["model_speedup_iqr"] == [1.0, 1.0]
    assert out["model_timing"]["rounds"] == 40 and clock.speeds == {1, 3}


def test_compare_times_at_the_thread_count_asked_and_restores_torchs(clock):
    net = small_model().eval()
    before = torch.get_num_threads()
    out = compare(net, net, 8, batch_size=1, estimator=ON_PARAM_CLOCK, threads=before + 1)
    assert out["setup"]["threads"] == before + 1 and out["model_timing"]["threads"] == before + 1
    assert torch.get_num_threads() == before


def test_the_decide_at_point_defaults_to_the_largest_batch_and_thread_count():
    lat = {"batch_sizes": [1, 32], "threads": [1, 2], "decide_at": {"batch_size": None, "threads": None}}
    assert decide_point(lat) == (32, 2)
    assert decide_point({**lat, "decide_at": {"batch_size": 1, "threads": 1}}) == (1, 1)
    assert decide_point({**lat, "threads": None})[1] == torch.get_num_threads()
    timings = {"cpu": {1: {32: "a"}, 2: {1: "b"}}}
    assert points(timings) == [("cpu, 1 thread, batch 32", "a"), ("cpu, 2 threads, batch 1", "b")]


@run_if(cuda=True)
def test_compare_times_both_networks_on_cuda():
    net = AlexNetCIFAR().eval()
    approx = copy.deepcopy(net)
    approx.conv3 = Scheme2Conv.from_conv(net.conv3, 8)
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
        approx.set_submodule(name, Scheme2Conv.from_conv(net.get_submodule(name), 4))
    records = [{"name": "conv2"}, {"name": "conv3"}, {"name": "conv4"}]
    timings = {  # conv3: faster by its median, not confidently
        "conv2": {"speedup": 0.8, "speedup_iqr": [0.75, 0.85]},
        "conv3": {"speedup": 1.05, "speedup_iqr": [0.97, 1.1]},
        "conv4": {"speedup": 1.7, "speedup_iqr": [1.6, 1.8]},
    }
    assert put_back_slower(approx, net, records, timings, "cpu, 2 threads, batch 32") == ["conv2", "conv3"]
    assert isinstance(approx.conv2, nn.Conv2d) and approx.conv2 is not net.conv2
    assert torch.equal(approx.conv2.weight, net.conv2.weight)
    assert isinstance(approx.conv4, Scheme2Conv)
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


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the check runs in full (minutes)")
def test_the_cuda_check_exits_at_once_without_cuda_saying_so():
    import subprocess

    from tests.conftest import REPO

    res = subprocess.run(["bash", str(REPO / "scripts" / "cuda_check.sh")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "no CUDA device here" in res.stdout
