"""ONNX export of decomposed networks: checked graphs, a dynamic batch axis, agreement with torch
in ONNX Runtime, the fallback exporter, a mismatch that keeps no file, and timing in ONNX Runtime
(every layer as its own graph) for the deploy record, the guard and the planner."""

import copy
import importlib.util
from collections import OrderedDict

import pytest
import torch
from torch import nn

from lrx.deploy import onnx_export as export
from lrx.lowrank import METHODS, decompose
from lrx.measure.latency import compare, conv_names, layer_inputs
from lrx.models import AlexNetCIFAR
from lrx.results.files import ORT
from lrx.run import export as export_cli
from lrx.runtime import onnxruntime as onnx_graphs
from tests.helpers.convs import geometry_of
from tests.helpers.methods import fast_options, one_thread  # noqa: F401
from tests.helpers.run_if import run_if
from tests.helpers.timing import QUICK

pytestmark = [run_if(onnxruntime=True), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def mixed_net():
    """A 3x3 conv for every registered method, each replaced by a layer of its method (named after it)."""
    torch.manual_seed(0)
    convs = [(name, nn.Conv2d(8, 8, 3, padding=1)) for name in METHODS]
    net = nn.Sequential(OrderedDict([("stem", nn.Conv2d(3, 8, 1)), *convs, ("pool", nn.AdaptiveAvgPool2d(1))])).eval()
    for name, cls in METHODS.items():
        bases = cls.bases_for_speedup(geometry_of(net.get_submodule(name)), 1.5)
        decompose(net, [name], name, {name: bases}, **fast_options(name))
    return net


@pytest.fixture
def dynamo_fails(monkeypatch):
    """The dynamo exporter fails, so the TorchScript one exports: tens of milliseconds a graph against
    1-2 s, for the tests that only time graphs (every method exports with dynamo below)."""
    real = torch.onnx.export

    def export_without_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("unsupported op")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export_without_dynamo)


@pytest.mark.slow
def test_every_method_exports_and_agrees_with_torch_at_any_batch_size(mixed_net, tmp_path):
    images = torch.randn(6, 3, 32, 32)
    record = export.export_checked(mixed_net, tmp_path / "model.onnx", images)
    assert record["exporter"] == "dynamo" and record["opset"] == onnx_graphs.OPSET
    assert record["max_rel_error"] <= export.RTOL
    sess = onnx_graphs.session(tmp_path / "model.onnx", threads=1)
    for batch in (1, 3):  # the batch axis is dynamic
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = mixed_net(x)
        torch.testing.assert_close(onnx_graphs.run(sess, x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_a_graph_that_disagrees_is_refused_and_not_kept(mixed_net, tmp_path, monkeypatch):
    real = export.run
    monkeypatch.setattr(export, "run", lambda sess, x: real(sess, x) + 1.0)
    with pytest.raises(export.ExportError, match=r"model.onnx: ONNX Runtime disagrees.*max relative error"):
        export.export_checked(mixed_net, tmp_path / "model.onnx", torch.randn(4, 3, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_the_torchscript_exporter_is_the_fallback(tmp_path, dynamo_fails, caplog):
    net = AlexNetCIFAR(widths=(8, 8, 8, 8, 8)).eval()
    record = export.export_checked(net, tmp_path / "baseline.onnx", torch.randn(3, 3, 32, 32))
    assert record["exporter"] == "torchscript" and (tmp_path / "baseline.onnx").is_file()
    assert "dynamo ONNX exporter failed (RuntimeError: unsupported op)" in caplog.text


@pytest.mark.slow
def test_each_layer_runs_as_its_own_graph_and_computes_what_torch_does(mixed_net):
    x = torch.randn(3, 3, 32, 32)
    inputs = layer_inputs(mixed_net, list(METHODS), x)
    for name, layer_input in inputs.items():  # one layer of every method
        module = mixed_net.get_submodule(name)
        assert type(module) is METHODS[name]
        with torch.no_grad():
            ref = module(layer_input)
        (out,) = onnx_graphs.graph_call(module, layer_input, threads=1)()
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_onnx_runtime_times_every_conv_and_both_networks(monkeypatch, dynamo_fails):
    graphs, real_graph_call = [], onnx_graphs.graph_call
    monkeypatch.setattr(
        onnx_graphs,
        "graph_call",
        lambda module, *args, **kw: graphs.append(module) or real_graph_call(module, *args, **kw),
    )
    base = AlexNetCIFAR(widths=(8, 8, 8, 8, 8)).eval()
    approx = copy.deepcopy(base)
    decompose(approx, ["conv2"], "scheme2", 4)
    t = compare(base, approx, 32, 1, estimator=QUICK, memory_format="channels_last", runtime="onnxruntime")
    assert t["setup"]["runtime"].startswith("onnxruntime ") and t["setup"]["memory_format"] == "contiguous"
    convs = [base.get_submodule(n) for n in conv_names(base)]
    assert graphs == [*convs, approx.conv2, base, approx]  # each its own graph: every conv, then both networks
    assert [n for n, v in t["layers"].items() if v["replaced"]] == ["conv2"]
    assert all(v["baseline_ms"] > 0 and v["approx_ms"] > 0 for v in t["layers"].values())
    assert t["model_ms"]["baseline"] > 0 and t["model_ms"]["approx"] > 0


def test_onnx_runtime_needs_the_cpu():
    with pytest.raises(ValueError, match="runtime=onnxruntime times on the CPU only"):
        compare(AlexNetCIFAR(), AlexNetCIFAR(), 32, 1, "meta", runtime="onnxruntime")


def test_the_planner_times_its_candidates_in_onnx_runtime(monkeypatch, dynamo_fails):
    """Every candidate really runs in ONNX Runtime; the speed-up it reports is then fixed (low-rank
    twice as fast: 1.11x over the five convs), so that the plan does not depend on this machine's timing."""
    from lrx.compress import planner
    from tests.helpers.runs import fix_planner_speedups

    timed = fix_planner_speedups(monkeypatch)
    torch.manual_seed(0)
    net = AlexNetCIFAR(widths=(8, 16, 16, 16, 8)).eval()
    chosen, report = planner.plan(
        net, ["conv3"], 1.1, "latency", batch_size=2, methods=["channel_svd"], progress=False, rank_multiple=8,
        timed=planner.Timed(QUICK, runtime="onnxruntime"),
    )  # fmt: skip
    assert report["runtime"] == "onnxruntime" and chosen["conv3"].method == "channel_svd"
    assert timed and all(t["runtime"] == "onnxruntime" for t in timed)
    assert {"dense", "lowrank"} in [t["calls"] for t in timed]


def test_without_the_extra_the_error_names_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"deploy.onnx=true needs onnx, onnxscript, onnxruntime.*\.\[onnx\]"):
        onnx_graphs.require_onnx()


@pytest.mark.slow
def test_a_smoke_run_with_deploy_onnx_writes_checked_graphs_and_ort_timings(tmp_path, tiny_root):
    import json

    from lrx.results.saved import load_models
    from tests.helpers.runs import run_smoke

    results = run_smoke(tmp_path, tiny_root, "deploy.onnx=true", "latency.guard=false", "finetune.epochs=1")
    assert json.loads((tmp_path / "results.json").read_text())["deploy"] == json.loads(json.dumps(results["deploy"]))
    for side in ("baseline", "final"):
        assert results["deploy"]["onnx"][side]["max_rel_error"] <= 1e-4
    ort = ORT
    for threads, by_bs in results["latency"][ort].items():  # timed like torch: every conv, and both networks
        for bs, t in by_bs.items():
            assert t["setup"]["runtime"].startswith("onnxruntime ") and set(t["layers"]) == set(
                results["latency"]["cpu"][threads][bs]["layers"]
            )
    assert results["speedup"]["model"][ort] > 0 and results["speedup"]["conv"][ort] > 0
    assert results["final"]["latency_ms"][ort] > 0 and ort in results["layers"][0]["measured_speedup"]
    _, final, _ = load_models(tmp_path)  # the saved final network, rebuilt
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = final(x)
    out = onnx_graphs.run(onnx_graphs.session(tmp_path / "model.onnx", 1), x)
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


@pytest.mark.slow
def test_a_committed_run_is_exported_after_the_fact(tmp_path, monkeypatch, data_root):
    import json
    import shutil

    from tests.conftest import REPO
    from tests.helpers.timing import QUICK

    run_dir = tmp_path / "cp_headline"
    run_dir.mkdir()
    shutil.copy(REPO / "results" / "runs" / "cp_headline" / "model.pt", run_dir / "model.pt")
    results = json.loads((REPO / "results" / "runs" / "cp_headline" / "results.json").read_text())
    results["config"]["latency"].update(batch_sizes=[2], estimator=QUICK.as_dict())  # timed, not for its figures
    (run_dir / "results.json").write_text(json.dumps(results))
    monkeypatch.chdir(REPO)  # the run names its baseline checkpoint relative to the repository
    assert export_cli.main([str(run_dir), "--data-root", str(data_root), "--images", "8"]) == 0
    deployed = json.loads((run_dir / "deploy.json").read_text())
    assert {r["file"] for r in deployed["onnx"].values()} == {"baseline.onnx", "model.onnx"}
    assert all(r["max_rel_error"] <= export.RTOL for r in deployed["onnx"].values())
    (by_batch,) = deployed[ORT].values()  # one thread count: the run's config predates threads
    assert set(by_batch) == {"2"} and all(t["conv_speedup"] > 0 for t in by_batch.values())
