"""What a run tells its loggers: names, summary metrics, the layer table, and loggers that fail."""

import logging

import pytest
from omegaconf import open_dict

from lrx.run.tracking import LAYER_COLUMNS, layer_rows, log_results, make_loggers, run_name, summary_metrics
from tests.conftest import compose_cfg


@pytest.mark.parametrize(
    "overrides, name",
    [
        (["model=alexnet", "decomp.bases=8"], "alexnet cifar10 s1 M8 l2"),
        (
            ["decomp=scheme2", "decomp.bases=[16,32]", "decomp.layers=[conv2,conv4]"],
            "alexnet_cifar cifar10 s2 K16/32 l2,4",
        ),
        (["decomp=scheme2", "decomp.layers=[2,3,4,5]", "data=cifar100"], "alexnet_cifar cifar100 s2 K8 l2-5"),
        (["decomp=channel_svd", "decomp.bases=24"], "alexnet_cifar cifar10 csvd K24 l2"),
        (
            ["decomp=plan", "planner.target_speedup=2.5", "planner.metric=latency"],
            "alexnet_cifar cifar10 plan 2.5x latency lall",
        ),
        (["decomp=none"], "alexnet_cifar cifar10 baseline"),
    ],
)
def test_run_names_read_like_the_users(overrides, name, tmp_path):
    assert run_name(compose_cfg(overrides, tmp_path)) == name


def _results() -> dict:
    layer = {
        "name": "conv2",
        "shape": [128, 48, 5, 5],
        "method": "scheme1",
        "bases": 8,
        "rel_error": 0.5,
        "macs_speedup": 2.9,
        "solve_time_s": 0.4,
        "measured_speedup": {"cpu": 1.3},
        "lambda": {"schedule": "fixed", "start": 1e-4, "end": 1.0},
        "data_recon": {"rel_error_after": 0.2},
    }
    side = {"acc1": 80.0, "acc1_test": 79.0, "macs": 2e6, "params": 3e5, "latency_ms": {"cpu": 4.0}}
    return {
        "baseline": side,
        "final": {**side, "macs": 1e6},
        "layers": [layer],
        "speedup": {"macs": 2.0, "conv": {"cpu": 1.5}, "model": {"cpu": 1.2}},
        "stages": {"filter": {"acc1": 60.0, "acc1_test": 61.0}, "data": {"acc1": 78.0, "acc1_test": 77.0}},
    }


def test_summary_metrics_are_flat_and_named_once():
    s = summary_metrics(_results())
    assert s["baseline/macs_m"] == 2.0 and s["final/macs_m"] == 1.0 and s["final/params_m"] == 0.3
    assert s["speedup/conv/cpu"] == 1.5 and s["speedup/model/cpu"] == 1.2 and s["speedup/macs"] == 2.0
    assert s["stage/filter/acc1"] == 60.0 and s["stage/data/acc1_test"] == 77.0
    assert s["final/latency_ms/cpu"] == 4.0
    assert all(isinstance(v, float) for v in s.values())


def _deployed(best: bool = True) -> dict:
    """:func:`_results` deployed to two targets (an ONNX export beside them), with or without a best dense."""
    res = _results()

    def sides(dense_ms, final_ms):
        return {
            "baseline": {"ms": dense_ms, "acc1": 80.0, "check": {}},
            "final": {"ms": final_ms, "acc1": 79.5, "check": {}},
            "speedup": dense_ms / final_ms,
            "speedup_iqr": [1.0, 3.0],
            "unstable": False,
        }

    targets = {"torch-fp32": sides(4.0, 2.0), "openvino-int8": sides(2.0, 1.6)}
    res["deploy"] = {"onnx": {"exported": True}, "targets": targets, "best": None, "batch_size": 32}
    res["speedup"] |= {"vs_best_dense": 1.25 if best else None, "vs_best_dense_iqr": [1.1, 1.4] if best else None}
    return res


def test_summary_metrics_of_a_deployed_run():
    s = summary_metrics(_deployed())
    assert s["speedup/vs_best_dense"] == 1.25
    assert s["deploy/torch-fp32/baseline/ms"] == 4.0 and s["deploy/torch-fp32/final/ms"] == 2.0
    assert s["deploy/openvino-int8/baseline/ms"] == 2.0 and s["deploy/openvino-int8/final/acc1"] == 79.5
    assert {k for k in s if k.startswith("deploy/")} == {
        f"deploy/{t}/{side}/{key}"
        for t in ("torch-fp32", "openvino-int8")
        for side in ("baseline", "final")
        for key in ("ms", "acc1")
    }
    assert all(isinstance(v, float) for v in s.values())
    assert "speedup/vs_best_dense" not in summary_metrics(_deployed(best=False))  # no dense target kept its acc@1


@pytest.mark.parametrize("deploy", [None, {"onnx": {"exported": True}}])
def test_summary_metrics_of_a_run_not_deployed_to_targets(deploy):
    s = summary_metrics({**_results(), "deploy": deploy})
    assert not [k for k in s if k.startswith("deploy/") or k == "speedup/vs_best_dense"]
    assert s == summary_metrics(_results())


def test_layer_table_has_one_row_per_layer():
    (row,) = layer_rows(_results())
    assert dict(zip(LAYER_COLUMNS, row)) == {
        "name": "conv2",
        "shape": "128x48x5x5",
        "method": "scheme1",
        "bases": "8",
        "lambda": "0.0001",
        "rel_error": 0.5,
        "rel_error_data": 0.2,
        "macs_speedup": 2.9,
        "measured_speedup_cpu": 1.3,
        "measured_speedup_cuda": None,
        "solve_time_s": 0.4,
    }


class _Broken:
    def log_metrics(self, metrics, step=None):
        raise ConnectionError("no server")


def test_a_failing_logger_becomes_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        log_results([_Broken()], _results())
    assert "_Broken failed to log the summary metrics" in caplog.text and "no server" in caplog.text


def test_a_logger_that_cannot_start_is_dropped(tmp_path, caplog):
    cfg = compose_cfg(["logger=csv", "logger.csv._target_=lrx.no_such.Logger"], tmp_path)
    with caplog.at_level(logging.WARNING):
        assert make_loggers(cfg, None) == []
    assert "logger 'csv' could not start" in caplog.text


def test_csv_logger_gets_the_resolved_config(tmp_path):
    cfg = compose_cfg(["logger=csv"], tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # as lrx.train receives it
    (lg,) = make_loggers(cfg, None)
    log_results([lg], _results())
    lg.save()
    metrics = (tmp_path / "csv").rglob("metrics.csv")
    header = next(metrics).read_text().splitlines()[0].split(",")
    assert "speedup/conv/cpu" in header and "stage/data/acc1" in header
    hparams = next((tmp_path / "csv").rglob("hparams.yaml")).read_text()
    assert "decomp:" in hparams and "alexnet_cifar" in hparams


@pytest.mark.parametrize(
    "overrides, name",
    [
        (["decomp=tucker2", "decomp.bases=16", "decomp.layers=[conv3]"], "alexnet_cifar cifar10 tucker2 R16 l3"),
        (
            ["decomp=cp", "decomp.bases={conv2: 32, conv3: 64}", "decomp.layers=[conv2,conv3]"],
            "alexnet_cifar cifar10 cp R32/64 l2,3",
        ),
    ],
)
def test_peer_run_names(overrides, name, tmp_path):
    assert run_name(compose_cfg(overrides, tmp_path)) == name
