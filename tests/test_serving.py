"""Serving settings (lrx.runtime.serving): each runtime's thread count and wait policy is checked,
and applied where that runtime reads it: the environment of a fresh process (torch's OpenMP), the
session options (ONNX Runtime), the compile properties (OpenVINO)."""

import subprocess
import sys

import pytest
import torch

from lrx.deploy.targets import Target, TargetError, deploy
from lrx.models import AlexNetCIFAR
from lrx.runtime.serving import WAITS, Serving, choices, openmp_env
from tests.helpers.run_if import run_if


@pytest.mark.parametrize(
    "runtime, threads, wait, words",
    [
        ("tensorrt", 2, None, "runtime 'tensorrt' is unknown; valid: torch, onnxruntime, openvino"),
        ("torch", 2, "sleepy", "wait 'sleepy' is unknown for torch; valid: spin, passive, short-spin"),
        ("openvino", 0, "pinned", "threads=0 is invalid"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_key_and_the_valid_values(runtime, threads, wait, words):
    with pytest.raises(ValueError, match=f"serving.torch: {words}"):
        Serving.of(runtime, threads, wait, key="serving.torch")


def test_the_choices_are_one_thread_then_every_wait_at_each_larger_count():
    got = [(s.threads, s.wait) for s in choices("torch", 3)]
    assert got == [(1, "spin"), *[(t, w) for t in (2, 3) for w in WAITS["torch"]]]


@pytest.mark.slow
def test_a_fresh_process_gets_torchs_wait_policy_in_its_environment():
    serving = Serving.of("torch", 2, "passive")
    code = "import os, torch; print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads() > 0)"
    env = {"PATH": "", **serving.env()}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["PASSIVE", "True"]
    assert Serving.of("onnxruntime", 2, "passive").env() == {}  # a session option, not the process's


def _net():
    return AlexNetCIFAR(num_classes=10).eval()


@pytest.mark.slow
@run_if(onnxruntime=True)
def test_onnx_runtime_applies_the_wait_policy_to_its_session(tmp_path):
    serving = Serving.of("onnxruntime", 2, "passive")
    d = deploy(_net(), Target.of("onnxruntime-fp32"), torch.randn(2, 3, 32, 32), 1, tmp_path, serving=serving)
    options = d.run.args[0].get_session_options()  # run = partial(ort.run, session)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2 and d.info["serving"]["wait"] == "passive"


@pytest.mark.slow
@run_if(openvino=True)
def test_openvino_applies_the_pinning_to_its_compiled_model(tmp_path):
    for wait, pinned in (("unpinned", False), ("pinned", True)):
        serving = Serving.of("openvino", 1, wait)
        d = deploy(_net(), Target.of("openvino-fp32"), torch.randn(2, 3, 32, 32), 2, tmp_path, serving=serving)
        compiled = d.run.args[0]  # run = partial(ov.run, compiled)
        assert bool(compiled.get_property("ENABLE_CPU_PINNING")) is pinned
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_a_setting_for_another_runtime_is_refused(tmp_path):
    with pytest.raises(TargetError, match="torch-fp32 cannot be served with a setting for openvino"):
        deploy(
            _net(), Target.of("torch-fp32"), torch.randn(2, 3, 32, 32), 1, tmp_path, serving=Serving.of("openvino", 1)
        )


def _point(threads, wait, quiet_ms, busy_ms):
    """A timed setting: (dense, final) ms quiet and busy."""
    cond = lambda ms: {"ms": {"baseline": ms[0], "final": ms[1]}, "speedup": ms[0] / ms[1]}  # noqa: E731
    return {"serving": Serving.of("torch", threads, wait).as_dict(), "quiet": cond(quiet_ms), "busy": cond(busy_ms)}


def test_the_recommendation_is_the_least_regret_among_settings_that_keep_the_speed_up_under_load():
    from lrx.run.serving_choice import recommend

    spin = _point(2, "spin", (30.0, 9.0), (60.0, 24.0))  # fastest quiet, keeps 75% of 3.33x busy
    one = _point(1, "spin", (50.0, 15.0), (52.0, 16.0))  # keeps 98%: regret 15 / 9
    passive = _point(2, "passive", (32.0, 18.0), (52.0, 16.0))  # keeps 182%: regret 18 / 9
    chosen = recommend([spin, one, passive])
    assert chosen["serving"] == one["serving"] and chosen["robust"] and chosen["regret"] == 15.0 / 9.0
    fragile = recommend([spin, _point(2, "passive", (30.0, 12.0), (60.0, 70.0))])  # none keeps it
    assert fragile["serving"] == spin["serving"] and not fragile["robust"]


@pytest.mark.slow
def test_a_run_with_serving_auto_times_every_setting_in_its_own_process(tmp_path, tiny_root):
    import json

    from lrx.measure.load import cores
    from tests.helpers.runs import run_smoke

    overrides = ("deploy.serving=auto", "latency.guard=false", "finetune.epochs=1", "latency.decide_at.busy=1")
    results = run_smoke(tmp_path, tiny_root, *overrides)
    assert results["load"]["final"]["neighbours"] == 1 and results["deploy"]["load"]["neighbours"] == 1  # shared
    assert results["latency_env"] == openmp_env()  # what this process's torch timings ran under
    assert results["deploy"]["targets"]["torch-fp32"]["final"]["serving"]["runtime"] == "torch"  # what it timed with
    chosen = json.loads((tmp_path / "serving.json").read_text())["targets"]["torch-fp32"]
    assert [Serving(**p["serving"]) for p in chosen["points"]] == choices("torch", cores())
    for point in chosen["points"]:  # each setting applied in the process that timed it
        assert point["env"] == Serving(**point["serving"]).env()
        assert point["quiet"]["ms"]["final"] > 0 and point["busy"]["ms"]["final"] > 0
    assert chosen["recommended"]["serving"] in [p["serving"] for p in chosen["points"]]


def test_export_prints_how_to_serve_with_the_recommended_settings(tmp_path):
    from lrx.io import write_json
    from lrx.run.export import serving_lines

    recommended = {
        "torch-fp32": Serving.of("torch", 2, "passive"),
        "onnxruntime-int8": Serving.of("onnxruntime", 2, "passive"),
        "openvino-int8": Serving.of("openvino", 1, "unpinned"),
    }
    targets = {t: {"recommended": {"serving": s.as_dict()}} for t, s in recommended.items()}
    write_json(tmp_path / "serving.json", {"targets": targets})
    lines = serving_lines(tmp_path)
    assert len(lines) == 3 and all("recommended by serving.json or retime.json" in line for line in lines)
    assert "OMP_WAIT_POLICY=PASSIVE; torch.set_num_threads(2)" in lines[0]
    assert "add_session_config_entry('session.intra_op.allow_spinning', '0')" in lines[1]
    assert "{'INFERENCE_NUM_THREADS': 1, 'ENABLE_CPU_PINNING': False}" in lines[2]
