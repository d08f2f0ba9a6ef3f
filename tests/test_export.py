"""ONNX export of decomposed networks: checked graphs, a dynamic batch axis, agreement with torch
in ONNX Runtime, the fallback exporter, and a mismatch that keeps no file."""

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[onnx]'")

from lrx import export  # noqa: E402
from lrx.lowrank import METHODS, decompose  # noqa: E402
from lrx.models import AlexNetCIFAR  # noqa: E402


@pytest.fixture(scope="module")
def mixed_net():
    """AlexNetCIFAR with a layer of every method."""
    torch.manual_seed(0)
    net = AlexNetCIFAR(widths=(16, 24, 32, 32, 24)).eval()
    bases = {"scheme1": 4, "scheme2": 8, "tucker2": 8, "cp": 8, "channel_svd": 8}
    for layer, method in zip(["conv1", "conv2", "conv3", "conv4", "conv5"], METHODS):
        decompose(net, [layer], method, bases[method], **({"lam_steps": 2} if method == "scheme1" else {}))
    return net


def test_every_method_exports_and_agrees_with_torch_at_any_batch_size(mixed_net, tmp_path):
    images = torch.randn(6, 3, 32, 32)
    record = export.export_checked(mixed_net, tmp_path / "model.onnx", images)
    assert record["exporter"] == "dynamo" and record["opset"] == export.OPSET
    assert record["max_rel_error"] <= export.RTOL
    sess = export.session(tmp_path / "model.onnx", threads=1)
    for batch in (1, 3):  # the batch axis is dynamic
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = mixed_net(x)
        torch.testing.assert_close(export._run(sess, x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_a_graph_that_disagrees_is_refused_and_not_kept(mixed_net, tmp_path, monkeypatch):
    real = export._run
    monkeypatch.setattr(export, "_run", lambda sess, x: real(sess, x) + 1.0)
    with pytest.raises(export.ExportError, match=r"model.onnx: ONNX Runtime disagrees.*max relative error"):
        export.export_checked(mixed_net, tmp_path / "model.onnx", torch.randn(4, 3, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_the_torchscript_exporter_is_the_fallback(tmp_path, monkeypatch, caplog):
    real = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("unsupported op")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    net = AlexNetCIFAR(widths=(8, 8, 8, 8, 8)).eval()
    record = export.export_checked(net, tmp_path / "baseline.onnx", torch.randn(3, 3, 32, 32))
    assert record["exporter"] == "torchscript" and (tmp_path / "baseline.onnx").is_file()
    assert "dynamo ONNX exporter failed (RuntimeError: unsupported op)" in caplog.text


def test_onnx_runtime_times_both_graphs_at_every_batch_size(mixed_net, tmp_path):
    base = AlexNetCIFAR(widths=(16, 24, 32, 32, 24)).eval()
    images = torch.randn(2, 3, 32, 32)
    export.export_checked(base, tmp_path / "baseline.onnx", images)
    export.export_checked(mixed_net, tmp_path / "model.onnx", images)
    t = export.ort_latency(
        tmp_path / "baseline.onnx", tmp_path / "model.onnx", 32, [1, 4], threads=1, warmup=1, repeats=2
    )
    assert set(t["batches"]) == {1, 4} and t["setup"]["runtime"].startswith("onnxruntime ")
    for v in t["batches"].values():
        assert v["model_speedup"] == pytest.approx(v["model_ms"]["baseline"] / v["model_ms"]["approx"])


def test_without_the_extra_the_error_names_it(monkeypatch):
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"deploy.onnx=true needs onnx, onnxscript, onnxruntime.*\.\[onnx\]"):
        export.require_onnx()


@pytest.mark.slow
def test_a_smoke_run_with_deploy_onnx_writes_checked_graphs_and_ort_timings(tmp_path, tiny_root):
    import json

    from omegaconf import open_dict

    from lrx.pipeline import prepare, run
    from tests.conftest import compose_cfg
    from tests.helpers.data import smoke_args

    cfg = compose_cfg(
        [
            *smoke_args(tiny_root),
            "deploy.onnx=true",
            "latency.guard=false",
            "finetune.epochs=1",
            f"baseline.cache_dir={tmp_path / 'cache'}",
        ],
        run_dir=tmp_path,
    )
    with open_dict(cfg):
        del cfg["hydra"]
    results = run(prepare(cfg), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["deploy"] == json.loads(json.dumps(results["deploy"]))
    for side in ("baseline", "final"):
        assert results["deploy"]["onnx"][side]["max_rel_error"] <= 1e-4
    assert results["deploy"][export.RUNTIME]["setup"]["runtime"].startswith("onnxruntime ")
    assert results["speedup"]["model"][export.RUNTIME] > 0 and results["final"]["latency_ms"][export.RUNTIME] > 0
    final = torch.load(tmp_path / "model.pt", weights_only=False).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = final(x)
    out = export._run(export.session(tmp_path / "model.onnx", 1), x)
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


@pytest.mark.slow
def test_a_committed_run_is_exported_after_the_fact(tmp_path, monkeypatch, data_root):
    import shutil

    from tests.conftest import REPO

    run_dir = tmp_path / "cp_headline"
    run_dir.mkdir()
    for name in ("results.json", "model.pt"):
        shutil.copy(REPO / "results" / "runs" / "cp_headline" / name, run_dir / name)
    monkeypatch.chdir(REPO)  # the run names its baseline checkpoint relative to the repository
    assert export.main([str(run_dir), "--data-root", str(data_root), "--images", "8"]) == 0
    deployed = __import__("json").loads((run_dir / "deploy.json").read_text())
    assert {r["file"] for r in deployed["onnx"].values()} == {"baseline.onnx", "model.onnx"}
    assert all(r["max_rel_error"] <= export.RTOL for r in deployed["onnx"].values())
    assert set(deployed[export.RUNTIME]["batches"]) == {"1", "32"}
