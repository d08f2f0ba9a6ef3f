"""python -m lrx.retime: a finished run re-timed per conv in PyTorch and as a whole network in a
target, each setting in its own process, into one retime.json that the report and the serving
recommendation read; bad input refused in one line before any work."""

from __future__ import annotations

import copy
import json
import re
import shlex

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import lrx.measure.load
from lrx.io import write_json
from lrx.lowrank import method_class
from lrx.measure.latency import conv_names
from lrx.measure.load import quiet_and_busy
from lrx.results.files import RETIMED, recommended_serving
from lrx.results.saved import save_network
from lrx.retime import sections
from lrx.retime.__main__ import estimator_changes, main, parser
from lrx.retime.settings import settings, thread_counts, wait_policies
from lrx.run.serving_choice import recommend
from lrx.runtime.serving import Serving
from tests.conftest import REPO
from tests.helpers.timing import QUICK

NET = {"_target_": "lrx.models.AlexNetCIFAR", "num_classes": 10, "widths": [8, 16, 16, 16, 8]}
COMMITTED = REPO / "results" / "runs" / "plan_openvino_int8_1.55x_ft4"  # has model.pt


@pytest.fixture
def finished_run(tmp_path, tiny_root):
    """A finished run made by hand, on the tiny data: a small untrained AlexNet, and the same with
    conv2 in Scheme 2."""
    torch.manual_seed(0)
    baseline = instantiate(OmegaConf.create(NET)).eval()
    torch.save(baseline.state_dict(), tmp_path / "baseline.pt")
    final = copy.deepcopy(baseline)
    final.conv2 = method_class("scheme2").from_conv(final.conv2, 2).eval()
    save_network(tmp_path / "model.pt", final, NET)
    latency = {"batch_sizes": [2], "memory_format": "contiguous", "estimator": QUICK.as_dict(), "quiet_wait_s": 0}
    data = {
        **{"_target_": "lrx.data.CIFAR10DataModule", "name": "cifar10", "root": str(tiny_root), "num_classes": 10},
        **{"input_size": 32, "batch_size": 8, "eval_batch_size": 8, "val_size": 10, "split_seed": 0},
        **{"num_workers": 0, "resize": 32, "augment": False, "download": False},
    }
    results = {
        "status": "complete",
        "baseline": {"origin": {"path": str(tmp_path / "baseline.pt")}, "acc1": 0.0},  # any target is close to it
        "config": {"model": {"net": NET, "input_size": 32}, "latency": latency, "data": data},
        "speedup": {"conv": {"cpu": 1.5}, "model": {"cpu": 1.2}},
    }
    write_json(tmp_path / "results.json", results)
    return tmp_path


@pytest.mark.slow  # a process per setting and target
def test_a_run_is_retimed_in_torch_and_in_a_target_each_setting_in_its_own_process(finished_run, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # this process's: no timing process inherits it
    recorded = (finished_run / "results.json").read_text()
    argv = [str(finished_run), "--targets", "torch-fp32", "--rounds", "2", "--busy", "0", "--threads", "1"]
    assert main([*argv, "--wait", "torch=spin", "torch=passive"]) == 0
    retimed = json.loads((finished_run / RETIMED).read_text())
    convs, network = retimed["convs"], retimed["network"]
    spin, passive = Serving.of("torch", 1, "spin"), Serving.of("torch", 1, "passive")
    for timed in (convs["settings"], network["targets"]["torch-fp32"]["settings"]):
        assert [Serving(**t["serving"]) for t in timed] == [spin, passive]
        assert [t["env"] for t in timed] == [{}, {"OMP_WAIT_POLICY": "PASSIVE"}]  # applied where it timed
        assert all("busy" not in t for t in timed)  # --busy 0: quiet only
    assert len(convs["settings"][0]["quiet"]["conv_speedup"]["rounds"]) == 2 and convs["rounds"] == 2
    assert set(convs["settings"][1]["quiet"]["layers"]) == set(conv_names(instantiate(OmegaConf.create(NET))))
    assert convs["conv_speedup"] == convs["settings"][0]["quiet"]["conv_speedup"]  # what the report shows
    assert convs["recorded"] == {"conv": 1.5, "model": 1.2} and convs["estimator"] == QUICK.as_dict()
    chosen = retimed["serving"]["torch-fp32"]["serving"]
    assert chosen in [spin.as_dict(), passive.as_dict()] and retimed["serving"]["torch-fp32"]["date"] == convs["date"]
    assert len(network["targets"]["torch-fp32"]["settings"][0]["quiet"]["speedup_rounds"]) == 2
    assert recommended_serving(finished_run) == {"torch-fp32": chosen}  # the next re-timing's default
    assert (finished_run / "results.json").read_text() == recorded  # left as it was


@pytest.mark.slow  # the deployment runs in its own process
def test_a_run_is_deployed_again_with_its_acc1_in_each_target_beside_the_network_timings(finished_run):
    argv = [str(finished_run), "--targets", "torch-fp32", "--no-convs", "--deploy", "--rounds", "1", "--busy", "0"]
    assert main(argv) == 0
    retimed = json.loads((finished_run / RETIMED).read_text())
    assert set(retimed) == {"network", "serving", "deploy"} and retimed["serving"] == {}  # one setting: no choice
    deployed = retimed["deploy"]["targets"]["torch-fp32"]
    assert 0 <= deployed["baseline"]["acc1"] <= 100 and deployed["final"]["ms"] > 0 and deployed["speedup"] > 0
    assert retimed["deploy"]["best"]["dense"] == retimed["deploy"]["best"]["final"] == "torch-fp32"
    assert retimed["deploy"]["bn_folded"] and retimed["deploy"]["estimator"] == QUICK.as_dict()


def test_a_section_not_timed_again_is_kept_and_a_file_from_before_the_sections_is_replaced(tmp_path):
    write_json(tmp_path / RETIMED, {"conv_speedup": {"median": 2.0}, "points": {}})  # scripts/retime.py's
    sections.write(tmp_path, {"network": {"targets": {}}, "serving": {"torch-fp32": "chosen"}})
    assert json.loads((tmp_path / RETIMED).read_text()) == {
        "network": {"targets": {}},
        "serving": {"torch-fp32": "chosen"},
    }
    sections.write(tmp_path, {"convs": {"settings": []}, "serving": {"openvino-int8": "chosen"}})
    assert json.loads((tmp_path / RETIMED).read_text()) == {
        "network": {"targets": {}},
        "serving": {"torch-fp32": "chosen", "openvino-int8": "chosen"},  # each target's latest choice
        "convs": {"settings": []},
    }


def test_quiet_and_busy_rounds_take_turns_with_the_neighbours_running_only_for_busy(monkeypatch):
    running = []

    class Neighbours:
        def __init__(self, count):
            self.count = count

        def __enter__(self):
            running.append(self.count)

        def __exit__(self, *exc):
            running.pop()

    monkeypatch.setattr(lrx.measure.load, "busy_neighbours", Neighbours)
    measure_once = lambda: tuple(running)  # noqa: E731
    assert quiet_and_busy(measure_once, 2, 1) == {"quiet": [(), ()], "busy": [(1,), (1,)]}
    assert quiet_and_busy(measure_once, 3, 0) == {"quiet": [(), (), ()]}


def test_the_settings_are_those_asked_for_else_the_recommended_else_the_runs_threads_and_the_runtimes_wait():
    recommended = Serving.of("torch", 2, "passive").as_dict()
    assert settings("torch", recommended, 1, None, {}) == [Serving.of("torch", 2, "passive")]
    assert settings("openvino", None, 2, None, {}) == [Serving.of("openvino", 2, "pinned")]
    asked = settings("torch", recommended, 1, [1, 2], {"torch": ["spin"]})
    assert asked == [Serving.of("torch", 1, "spin"), Serving.of("torch", 2, "spin")]
    assert settings("onnxruntime", None, 1, None, wait_policies(["all"])) == [
        Serving.of("onnxruntime", 1, "spin"),
        Serving.of("onnxruntime", 1, "passive"),
    ]
    assert thread_counts(["all"]) == list(range(1, lrx.measure.load.cores() + 1)) and thread_counts(None) is None


def test_a_target_timed_quiet_only_is_recommended_on_its_quiet_times():
    point = lambda wait, final_ms: {  # noqa: E731
        "serving": Serving.of("torch", 2, wait).as_dict(),
        "quiet": {"ms": {"baseline": 10.0, "final": final_ms}, "speedup": 10.0 / final_ms},
    }
    chosen = recommend([point("spin", 5.0), point("passive", 4.0)])
    assert chosen["serving"] == point("passive", 4.0)["serving"] and chosen["robust"] and chosen["regret"] == 1.0


@pytest.mark.parametrize(
    "argv, words",
    [
        (["nowhere"], "RUN_DIR nowhere is not a directory with a results.json; valid: a finished run's directory"),
        ([str(COMMITTED), "--targets", "tpu-fp8"], "--targets tpu-fp8 is unknown; valid: torch-fp32, torch-bf16, "),
        ([str(COMMITTED), "--rounds", "0"], "--rounds 0 is invalid; valid: an integer >= 1"),
        ([str(COMMITTED), "--busy", "99"], "--busy 99 is invalid; valid: 0 to "),
        ([str(COMMITTED), "--threads", "0"], "--threads 0 is invalid; valid: 1 to "),
        ([str(COMMITTED), "--wait", "torch=sleepy"], "--wait torch=sleepy: wait 'sleepy' is unknown for torch; valid"),
        ([str(COMMITTED), "--wait", "passive"], "--wait passive is invalid; valid: RUNTIME=WAIT (torch=spin, "),
        ([str(COMMITTED), "--estimator", "max=1"], "--estimator max=1 is invalid; valid: KEY=VALUE, KEY one of "),
        ([str(COMMITTED), "--targets", "none", "--no-convs"], "--targets none with --no-convs leaves nothing to time"),
    ],
)
def test_bad_input_is_refused_in_one_line_naming_the_flag_before_any_work(argv, words, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and words in err
    assert not (COMMITTED / RETIMED).exists()


def _documented() -> list[list[str]]:
    """The arguments of every ``python -m lrx.retime`` line in the bash blocks of the README and
    docs/ (a synopsis, in brackets, left out)."""
    commands = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.split()[:3] == ["python", "-m", "lrx.retime"] and "[" not in line:
                    commands.append(shlex.split(line, comments=True)[3:])
    return commands


@pytest.mark.parametrize("argv", _documented(), ids=" ".join)
def test_every_documented_command_names_valid_flags(argv):
    args = parser().parse_args(argv)
    thread_counts(args.threads), wait_policies(args.wait), estimator_changes(args.estimator)
