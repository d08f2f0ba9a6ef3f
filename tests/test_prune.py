"""lrx's own channel pruning (lrx.compress.prune) and the planner's pruning candidates: which convs
can be pruned on each shipped architecture, exactness against the unpruned network where the removed
channels carry nothing, saved networks that reload, bad input refused in one line."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from lrx.compress import planner, prune
from lrx.lowrank import DecompositionError, method_class
from lrx.measure.complexity import count_macs
from lrx.models.alexnet_cifar import AlexNetCIFAR
from lrx.models.resnet20_cifar import ResNet20CIFAR
from lrx.results.saved import load_network, save_network
from tests.helpers.timing import QUICK

RESNET20 = {"_target_": "lrx.models.ResNet20CIFAR", "num_classes": 10}


def _prunable(net: nn.Module) -> list[str]:
    return [n for n, g in prune.groups(net).items() if isinstance(g, prune.Group)]


def test_which_convs_can_be_pruned_follows_the_graph():
    assert _prunable(AlexNetCIFAR()) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert prune.groups(AlexNetCIFAR())["conv5"] == prune.Group("conv5", ("bn5",), (), ("fc",))
    found = prune.groups(ResNet20CIFAR())
    # inside each basic block only: conv1's channels reach conv2; conv2's reach the residual addition
    assert _prunable(ResNet20CIFAR()) == [f"stage{s}.block{b}.conv1" for s in (1, 2, 3) for b in (1, 2, 3)]
    assert "residual addition" in found["stage1.block1.conv2"] and "residual addition" in found["conv1"]
    r18 = _prunable(torchvision.models.resnet18(num_classes=10))
    assert r18 == [f"layer{s}.{b}.conv1" for s in (1, 2, 3, 4) for b in (0, 1)]
    r50 = prune.groups(torchvision.models.resnet50(num_classes=10))
    # a bottleneck's first two convs; the stem's channels reach both the first block and its downsample
    assert isinstance(r50["layer1.0.conv2"], prune.Group) and isinstance(r50["layer1.0.conv3"], str)
    assert r50["conv1"].convs == ("layer1.0.conv1", "layer1.0.downsample.0")


@pytest.mark.parametrize(
    "make, size",
    [(AlexNetCIFAR, 32), (ResNet20CIFAR, 32), (lambda: torchvision.models.resnet50(num_classes=10), 64)],
)
def test_pruning_channels_that_carry_nothing_leaves_the_function_unchanged(make, size):
    """Zero the BatchNorm after each prunable conv on half its channels: after ReLU they are 0, so
    removing them (and the readers' matching inputs) computes the same logits."""
    torch.manual_seed(0)
    net = make().eval()
    found = prune.groups(net)
    names = [n for n, g in found.items() if isinstance(g, prune.Group) and g.norms]
    keep = {}
    with torch.no_grad():
        for n in names:
            bn = net.get_submodule(found[n].norms[0])
            keep[n] = torch.arange(0, bn.num_features, 2)
            drop = torch.arange(1, bn.num_features, 2)
            bn.weight[drop], bn.bias[drop] = 0.0, -1.0  # ReLU(-1) = 0
    x = torch.randn(2, 3, size, size)
    pruned = copy.deepcopy(net)
    for n in names:
        prune.remove_channels(pruned, found[n], keep[n])
    assert torch.allclose(pruned(x), net(x), atol=1e-5)
    assert count_macs(pruned, size) < count_macs(net, size)


def test_prune_keeps_the_most_important_channels_rounded_to_the_multiple():
    net = AlexNetCIFAR().eval()
    with torch.no_grad():
        net.conv2.weight[:50] *= 100  # the 50 largest filters by far
    records = prune.prune(net, {"conv2": 0.6}, "l1", multiple=16)
    assert net.conv2.out_channels == net.bn2.num_features == net.conv3.in_channels == 48  # round(51.2 / 16) * 16
    assert records[0] | {"bases": 48, "shape": [128, 48, 5, 5], "consumers": ["conv3"]} == records[0]
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert prune.kept_channels(128, 0.6, 16) == 48 and prune.kept_channels(20, 0.9, 8) == 8


def test_taylor_importance_is_zero_for_a_channel_that_carries_nothing():
    torch.manual_seed(0)
    net = AlexNetCIFAR().eval()
    with torch.no_grad():
        net.bn4.weight[3], net.bn4.bias[3] = 0.0, -1.0
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    scores = prune.taylor_importance(net, ["conv4"], batches)["conv4"]
    assert scores.shape == (192,) and scores[3] == 0 and (scores > 0).sum() > 100
    assert all(p.grad is None for p in net.parameters())


def test_a_pruned_network_with_low_rank_layers_saves_and_reloads(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    net = instantiate(OmegaConf.create(RESNET20)).eval()
    prune.prune(net, {"stage1.block1.conv1": 0.5, "stage3.block2.conv1": 0.25}, "l2", multiple=8)
    conv = net.get_submodule("stage1.block1.conv2")
    net.set_submodule("stage1.block1.conv2", method_class("scheme2").from_conv(conv, 4).eval())
    save_network(tmp_path / "model.pt", net, RESNET20)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["pruned"]["stage1.block1.conv1"] == [8, 16] and saved["pruned"]["stage1.block1.bn1"] == [8]
    back = load_network(tmp_path / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), net(x))


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda n: prune.prune(n, {"conv2": 1.0}), ["decomp.ratio[conv2]=1.0", "(0, 1)"]),
        (lambda n: prune.prune(n, {"conv2": 0.0}), ["decomp.ratio[conv2]=0.0", "(0, 1)"]),
        (lambda n: prune.prune(n, {"conv2": 0.5}, "l3"), ["decomp.criterion='l3'", "l1, l2, taylor"]),
        (lambda n: prune.prune(n, {"conv1": 0.5}, multiple=64), ["rank_multiple=64", "48 channels", "'conv1'"]),
        (lambda n: prune.prune(n, {"fc": 0.5}), ["'fc' is not an nn.Conv2d"]),
    ],
)
def test_bad_pruning_requests_are_refused_in_one_line(call, words):
    net = AlexNetCIFAR()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(DecompositionError) as e:
        call(net)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing half-pruned


def test_pruning_a_conv_that_feeds_a_shortcut_is_refused_naming_it():
    with pytest.raises(DecompositionError, match=r"cannot prune 'stage2.block1.conv2'.*residual addition"):
        prune.prune(ResNet20CIFAR(), {"stage2.block1.conv2": 0.5})


def test_the_planner_prunes_when_pruning_is_the_cheapest_way_to_the_target():
    """MAC costs: on ResNet-20 only the blocks' first convs can be pruned, and the planner's plan
    both reaches about the MAC target it predicts and runs."""
    torch.manual_seed(0)
    net = ResNet20CIFAR().eval()
    chosen, report = planner.plan(net, "all", 1.3, "macs", methods=["prune"], progress=False, rank_multiple=4)
    picked = {n: c for n, c in chosen.items() if c.method is not None}
    assert picked and all(c.method == "prune" and n.endswith("conv1") for n, c in picked.items())
    approx = copy.deepcopy(net)
    records = planner.apply(approx, chosen)
    assert [r["name"] for r in records] == list(picked) and all(r["bases"] % 4 == 0 for r in records)
    measured = count_macs(net, 32) / count_macs(approx, 32)
    assert measured == pytest.approx(report["predicted_conv_speedup"], rel=0.05)  # fvcore counts the fc too
    assert approx(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_pruned_reader_timed_on_its_full_input_computes_what_the_pruned_network_does():
    torch.manual_seed(0)
    conv, keep = nn.Conv2d(16, 8, 3, padding=1), torch.tensor([0, 3, 5, 9, 12, 15])
    x = torch.randn(2, 16, 8, 8)
    reader = planner._ReadingKept(prune.narrowed(conv, keep, 1), keep)
    torch.testing.assert_close(reader(x), conv(prune.masked(x, keep, 16)))


def test_latency_planning_times_each_pruning_against_the_dense_convs():
    """metric=latency: every pruning candidate gets a finite cost from paired timings, and the plan
    installs and runs."""
    torch.manual_seed(0)
    net = AlexNetCIFAR().eval()
    timed = planner.Timed(QUICK)
    chosen, report = planner.plan(net, ["conv2"], 1.05, "latency", methods=["prune"], progress=False, timed=timed)
    pruned = [c for c in report["candidates"]["conv2"] if c["method"] == "prune"]
    assert pruned and all(math.isfinite(c["cost"]) for c in pruned)
    planner.apply(net, chosen)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_low_rank_layer_whose_inputs_are_pruned_is_solved_again_for_the_narrower_conv():
    torch.manual_seed(0)
    net = AlexNetCIFAR().eval()
    conv3 = net.conv3
    chosen = {
        "conv2": planner.Candidate("conv2", "prune", 64, 0.1, 1.0, None, torch.arange(64), 0.5, "l1"),
        "conv3": planner.Candidate("conv3", "scheme2", 96, 0.1, 1.0, method_class("scheme2").from_conv(conv3, 96)),
    }
    planner.apply(net, chosen)
    assert net.conv3.geometry.in_channels == 64 and net.conv3.bases == 96
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_planner_pruning_options_are_checked():
    with pytest.raises(DecompositionError, match=r"planner.prune.ratios=1.5.*\(0, 1\)"):
        planner.Pruning((0.5, 1.5)).check()
    with pytest.raises(DecompositionError, match=r"planner.prune.criterion='taylor'.*l1, l2"):
        planner.Pruning((0.5,), "taylor").check()
