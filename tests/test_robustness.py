"""Bad inputs fail early in one line and write nothing; NaN weights, killed writes and reruns are
handled; two runs with the same seed agree exactly."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from lrx.compress.planner import plan
from lrx.io import write_json
from lrx.lowrank import DecompositionError, decompose
from lrx.models import AlexNetCIFAR
from lrx.results.files import RESULTS
from lrx.run.baseline import load_state_dict
from lrx.run.job import prepare
from lrx.run.train import finished
from tests.conftest import REPO, compose_cfg, run_train
from tests.helpers.data import smoke_args
from tests.helpers.methods import NAMES, fast_options

RESNET18 = ["model.net._target_=torchvision.models.resnet18", "~model.net.widths"]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["decomp.layers=[fc*]"], ["'fc*'", "no decomposable conv", "valid conv layers", "'conv5'"]),
        (["decomp.bases=0"], ["'conv2'", "bases=0", "[1, 25]"]),  # Scheme 1: M <= 5 * 5
        (["decomp.bases=26"], ["'conv2'", "bases=26", "[1, 25]"]),
        (
            ["decomp=scheme2", "decomp.layers=[conv3]", "decomp.bases=385"],
            ["'conv3'", "bases=385", "method 'scheme2'", "[1, 384]"],
        ),  # min(128 * 3, 192 * 3)
        (["decomp.layers=[conv2,conv3]", "decomp.bases=[4,4,4]"], ["length 3", "2 layers", "'conv3'"]),
        (["decomp.lam.schedule=fixed", "decomp.lam.start=-0.1"], ["decomp.lam.start=-0.1", ">= 0"]),
        (["decomp.lam.schedule=ascending", "decomp.lam.steps=0"], ["decomp.lam.steps=0", ">= 1"]),  # no schedule
        (["decomp.layers=[bn1]"], ["'bn1'", "BatchNorm2d", "nn.Conv2d"]),
        ([*RESNET18, "decomp.layers=[layer2.0.downsample.0]"], ["'layer2.0.downsample.0'", "1x1"]),
    ],
    ids=[
        "unknown-pattern",
        "bases-0",
        "bases-above-scheme1",
        "bases-above-scheme2",
        "bases-list-length",
        "negative-lambda",
        "empty-lambda-schedule",
        "not-a-conv",
        "1x1-conv",
    ],
)
def test_prepare_refuses_bad_decomposition_settings(tiny_root, overrides, words):
    with pytest.raises(ValueError) as info:
        prepare(compose_cfg([*smoke_args(tiny_root), *overrides]))
    assert all(w in str(info.value) for w in words), str(info.value)


def test_prepare_refuses_an_unknown_plan_error(tiny_root):
    with pytest.raises(ValueError, match="planner.error='mse' is invalid; valid: data, kl, filter"):
        prepare(compose_cfg([*smoke_args(tiny_root), "decomp=plan", "planner.error=mse"]))


def _mismatched_checkpoint(path):
    torch.save(AlexNetCIFAR(widths=[48, 64, 192, 192, 128]).state_dict(), path)


def _truncated_checkpoint(path):
    data = (REPO / "checkpoints" / "alexnet_cifar.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_checkpoint(path):
    state = AlexNetCIFAR().state_dict()
    state["conv2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_ckpt, overrides, words",
    [
        (None, ["decomp.layers=[conv9]"], ["'conv9'", "valid conv layers", "'conv1'", "'conv5'"]),
        (_mismatched_checkpoint, [], ["does not match the model", "'conv2.weight'", "(64, 48, 5, 5)"]),
        (_truncated_checkpoint, [], ["cannot be read", "truncated or not a torch checkpoint"]),
        (_nan_checkpoint, [], ["baseline.ckpt=", "conv2.weight holds 1 NaN/Inf value(s)"]),  # found in prepare
    ],
    ids=["unknown-layer", "mismatched-checkpoint", "truncated-checkpoint", "nan-weight"],
)
def test_bad_input_exits_with_one_line_and_writes_nothing(tmp_path, tiny_root, make_ckpt, overrides, words):
    args = [
        *smoke_args(tiny_root),
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"baseline.cache_dir={tmp_path / 'baselines'}",
    ]
    if make_ckpt:
        make_ckpt(tmp_path / "baseline.pt")
        args.append(f"baseline.ckpt={tmp_path / 'baseline.pt'}")
    res = run_train(args, cwd=tmp_path, timeout=300)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("lrx: error: ")]
    assert all(w in line for w in words), line
    assert not list(tmp_path.rglob(RESULTS)) and not (tmp_path / "baselines").exists()


@pytest.mark.parametrize("method", NAMES)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_baseline_weight_stops_filter_reconstruction(tmp_path, method, value):
    small = (16, 24, 32, 32, 24)
    state = AlexNetCIFAR(widths=small).state_dict()
    state["conv3.weight"][5, 7, 1, 1] = value
    torch.save(state, tmp_path / "baseline.pt")
    net = AlexNetCIFAR(widths=small)
    load_state_dict(net, tmp_path / "baseline.pt")
    with pytest.raises(DecompositionError, match=r"filter reconstruction of layer 'conv3'.*NaN/Inf"):
        decompose(net, ["conv2", "conv3"], method, 4, **fast_options(method))
    assert type(net.conv2) is nn.Conv2d and type(net.conv3) is nn.Conv2d  # nothing replaced


def test_non_finite_weight_stops_the_planner_too():
    net = AlexNetCIFAR()
    with torch.no_grad():
        net.conv4.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(DecompositionError, match=r"layer 'conv4'.*NaN/Inf"):
        plan(net, ["conv3", "conv4"], 1.5, "macs", progress=False)  # a target these two layers can reach


# json.dump asks the dict for its items: the process is killed half-way through writing them.
KILLED_WRITE = """
import os, signal, sys
from lrx.io import write_json

class Dying(dict):
    def items(self):
        yield "status", "complete"
        os.kill(os.getpid(), signal.SIGKILL)

write_json(sys.argv[1], Dying(status="complete", config={}))
"""

CFG = OmegaConf.create({"seed": 0, "decomp": {"method": "scheme1", "bases": 4}})


def test_a_write_killed_midway_leaves_only_a_temp_file(tmp_path):
    res = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(tmp_path / RESULTS)], capture_output=True)
    assert res.returncode == -signal.SIGKILL
    assert not (tmp_path / RESULTS).exists()
    assert len(list(tmp_path.glob(f".{RESULTS}.*.tmp"))) == 1
    assert not finished(tmp_path, CFG)


@pytest.mark.parametrize("damage", ["truncated", "no-status"])
def test_an_incomplete_results_file_is_not_finished(tmp_path, damage):
    complete = {"status": "complete", "final": {"acc1": 50.0}, "config": OmegaConf.to_container(CFG)}
    write_json(tmp_path / RESULTS, complete)
    assert finished(tmp_path, CFG)
    text = (tmp_path / RESULTS).read_text()
    if damage == "truncated":
        (tmp_path / RESULTS).write_text(text[: len(text) // 2])
    else:
        write_json(tmp_path / RESULTS, {k: v for k, v in complete.items() if k != "status"})
    assert not finished(tmp_path, CFG)


@pytest.mark.slow
def test_two_runs_with_the_same_seed_agree_exactly(tmp_path, data_root):
    results = []
    for i in (1, 2):  # each run trains its own baseline, in its own cache
        run_dir = tmp_path / f"run{i}"
        # no guard: it decides on measured times, which differ from run to run
        res = run_train(
            [
                "experiment=smoke",
                "logger=none",
                "latency.guard=false",
                "latency.batch_sizes=[1]",
                f"hydra.run.dir={run_dir}",
                f"baseline.cache_dir={tmp_path / f'baselines{i}'}",
            ],
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        results.append(json.loads((run_dir / RESULTS).read_text()))
    a, b = results
    assert a["baseline"]["origin"]["source"] == b["baseline"]["origin"]["source"] == "trained"
    assert a["baseline"]["origin"]["metrics"] == b["baseline"]["origin"]["metrics"]  # the last training loss
    assert a["baseline"]["acc1"] == b["baseline"]["acc1"]
    assert list(a["stages"]) == ["filter", "data", "finetune"]
    assert {s: v["acc1"] for s, v in a["stages"].items()} == {s: v["acc1"] for s, v in b["stages"].items()}
    layers = [[(r["name"], r["rel_error"], r["data_recon"]["rel_error_after"]) for r in x["layers"]] for x in results]
    assert layers[0] == layers[1]
