"""The structured channel pruning peer (lrx.compress.torch_pruning_peer, scripts/prune_peer.py): which channels
it keeps and how many, the network it saves, the conv timing of a pruned pair, and bad flags."""

from __future__ import annotations

import copy
import importlib.util
import sys
from argparse import Namespace

import pytest
import torch
from omegaconf import OmegaConf

from lrx.compress.torch_pruning_peer import convs, kept_channels, prune_channels
from lrx.measure.complexity import count_macs
from lrx.measure.latency import compare
from lrx.models import AlexNetCIFAR
from lrx.results.saved import load_network, save_network
from tests.conftest import REPO
from tests.helpers.timing import ON_PARAM_CLOCK, param_clock, size
from tests.helpers.tiny import TinyNet

pytest.importorskip("torch_pruning")

WIDTHS = (16, 32, 48, 48, 32)


def _script():
    spec = importlib.util.spec_from_file_location("prune_peer", REPO / "scripts" / "prune_peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prune_peer = _script()


def _trained_like() -> AlexNetCIFAR:
    """A small AlexNetCIFAR with random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    net = AlexNetCIFAR(widths=WIDTHS).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net


def _config(net_node: dict, name: str = "alexnet_cifar"):
    return OmegaConf.create({"model": {"name": name, "input_size": 32, "net": net_node}})


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


def test_the_pruned_network_is_the_model_with_smaller_widths_and_saves_and_loads_exactly(tmp_path):
    net = _trained_like()
    rebuilt, node, records = prune_peer.pruned_copy(net, _config(ALEXNET), Namespace(ratio=0.3, round_to=8))
    assert type(rebuilt) is AlexNetCIFAR and node["widths"] == [r["bases"] for r in records] == [8, 16, 32, 32, 16]
    save_network(tmp_path / "model.pt", rebuilt, node)
    loaded = load_network(tmp_path / "model.pt")
    assert loaded.state_dict().keys() == rebuilt.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), rebuilt(x))


def test_a_model_whose_net_takes_no_widths_is_refused_naming_it():
    node = {"_target_": "tests.helpers.tiny.TinyNet", "num_classes": 10}
    with pytest.raises(ValueError, match=r"model=tiny: .*valid: a model whose net takes widths"):
        prune_peer.pruned_copy(TinyNet(), _config(node, "tiny"), Namespace(ratio=0.3, round_to=8))


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
    ("argv", "expected"),
    [
        (["--ratio", "1.5"], "--ratio=1.5: valid: a fraction in (0, 1)"),
        (["--ratio", "0"], "--ratio=0: valid: a fraction in (0, 1)"),
        (["--ratio", "0.3", "--round-to", "0"], "--round-to=0: valid: an integer >= 1"),
    ],
)
def test_a_bad_flag_is_one_error_naming_it(argv, expected, capsys, tmp_path):
    assert prune_peer.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prune_peer.py: error: ") and expected in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_without_the_extra_it_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # what find_spec reads as "not installed"
    assert prune_peer.main(["--ratio", "0.3"]) == 2
    assert 'needs torch_pruning: install the extra with pip install -e ".[prune]"' in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--ratio", "0.9"], "--ratio=0.9 --round-to=16: ratio 0.9 rounded down to multiples of 16 leaves conv1"),
        (["--ratio", "0.3", "finetune.epochs=0"], "finetune.epochs=0"),
    ],
)
def test_a_ratio_the_model_cannot_take_or_a_bad_override_is_refused_before_any_work(
    argv, expected, tiny_root, capsys, tmp_path
):
    data = [f"data.root={tiny_root}", "data.val_size=10"]
    assert prune_peer.main([*argv, "--out", str(tmp_path / "out"), *data]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
