"""The Torch-Pruning peer (lrx.compress.torch_pruning_peer, ``decomp=prune decomp.engine=torch_pruning``):
which channels it keeps and how many, the network it saves, the conv timing of a pruned pair, and
bad settings refused before any work."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from lrx.compress.torch_pruning_peer import convs, kept_channels, prune_channels
from lrx.measure.complexity import count_macs
from lrx.measure.latency import compare
from lrx.models import AlexNetCIFAR
from lrx.results.saved import load_network, save_network
from lrx.run.config import ConfigError
from lrx.run.job import prepare
from tests.conftest import compose_cfg
from tests.helpers.timing import ON_PARAM_CLOCK, param_clock, size

pytest.importorskip("torch_pruning")

WIDTHS = (16, 32, 48, 48, 32)


def _trained_like() -> AlexNetCIFAR:
    """A small AlexNetCIFAR with random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    net = AlexNetCIFAR(widths=WIDTHS).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net


ALEXNET = {"_target_": "lrx.models.AlexNetCIFAR", "num_classes": 10, "widths": list(WIDTHS)}


@pytest.mark.parametrize(("ratio", "round_to"), [(0.3, 8), (0.5, 8), (0.45, 1)])
def test_each_conv_keeps_its_rounded_share_of_filters_and_the_macs_drop(ratio, round_to):
    net = _trained_like()
    pruned = copy.deepcopy(net)
    records = prune_channels(pruned, ratio, round_to, 32)
    for (name, conv), record in zip(convs(net).items(), records):
        kept = pruned.get_submodule(name).out_channels
        assert kept == record["bases"] == kept_channels(conv.out_channels, ratio, round_to)
        assert kept % round_to == 0 and 0 < kept < conv.out_channels
    assert pruned.fc.out_features == 10
    assert count_macs(pruned, 32) < count_macs(net, 32)
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_the_filters_of_largest_l1_norm_are_kept_with_their_batchnorm_and_next_layer_inputs():
    net = _trained_like()
    pruned = copy.deepcopy(net)
    prune_channels(pruned, 0.5, 8, 32)
    kept = {}
    for name, conv in convs(net).items():
        n = pruned.get_submodule(name).out_channels
        kept[name] = conv.weight.abs().sum((1, 2, 3)).topk(n).indices.sort().values
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pruned.conv1(x), net.conv1(x)[:, kept["conv1"]])
    assert torch.equal(pruned.bn1.running_mean, net.bn1.running_mean[kept["conv1"]])  # not moved by the tracing
    assert torch.equal(pruned.bn3.weight, net.bn3.weight[kept["conv3"]])
    assert torch.equal(pruned.conv2.weight, net.conv2.weight[kept["conv2"]][:, kept["conv1"]])
    assert torch.equal(pruned.fc.weight, net.fc.weight[:, kept["conv5"]])


def test_the_pruned_network_saves_and_loads_exactly(tmp_path):
    net = _trained_like()
    records = prune_channels(net, 0.3, 8, 32)
    assert [r["bases"] for r in records] == [8, 16, 32, 32, 16]
    save_network(tmp_path / "model.pt", net, ALEXNET)  # the model's own node: the pruned shapes are recorded
    loaded = load_network(tmp_path / "model.pt")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in net.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_a_pruned_pair_times_every_conv_of_both_networks_on_its_own_input(monkeypatch):
    """On the parameter clock a module's time is its parameter count, so every speed-up is known."""
    net = _trained_like()
    pruned = copy.deepcopy(net)
    prune_channels(pruned, 0.5, 8, 32)
    with param_clock(monkeypatch):
        out = compare(net, pruned, 32, 2, "cpu", ON_PARAM_CLOCK, "channels_last", threads=1)
    names = list(convs(net))
    assert list(out["layers"]) == names and all(v["replaced"] for v in out["layers"].values())
    for name in names:
        layer = out["layers"][name]
        b, p = size(net.get_submodule(name)), size(pruned.get_submodule(name))
        assert (layer["baseline_ms"], layer["approx_ms"], layer["speedup"]) == (1e3 * b, 1e3 * p, b / p)
    sums = [sum(size(m.get_submodule(n)) for n in names) for m in (net, pruned)]
    assert out["conv_speedup"] == pytest.approx(sums[0] / sums[1])
    assert out["model_speedup"] == pytest.approx(size(net) / size(pruned))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["decomp.ratio=0.9", "decomp.rank_multiple=16"], "decomp.ratio=0.9 rounded down to multiples of"),
        (["decomp.layers=[conv2]"], "decomp.engine=torch_pruning prunes every conv by one ratio"),
        (["decomp.criterion=l2"], "decomp.criterion=l1"),
    ],
)
def test_a_setting_the_peer_cannot_take_is_refused_before_any_work(overrides, expected, tiny_root):
    cfg = compose_cfg(
        ["decomp=prune", "decomp.engine=torch_pruning", f"data.root={tiny_root}", "data.val_size=10", *overrides]
    )
    with pytest.raises((ConfigError, ValueError), match=expected):
        prepare(cfg)


def test_without_the_extra_it_names_the_extra(monkeypatch, tiny_root):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # what find_spec reads as "not installed"
    cfg = compose_cfg(["decomp=prune", "decomp.engine=torch_pruning", f"data.root={tiny_root}", "data.val_size=10"])
    with pytest.raises(ConfigError, match=r'needs torch_pruning: install the extra with pip install -e "\.\[prune\]"'):
        prepare(cfg)
