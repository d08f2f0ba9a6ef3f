"""The pipeline's stage order: the latency guard decides right after filter reconstruction, so data
reconstruction and fine-tuning fit only the layers that stay."""

import pytest
from omegaconf import open_dict
from torch import nn

import lrx.pipeline
from lrx.latency import conv_names
from lrx.pipeline import prepare, run
from tests.conftest import compose_cfg
from tests.test_robustness import _smoke, tiny_root  # noqa: F401 (a fixture)


def _fake_compare(conv2_speedup: float):
    """lrx.latency.compare with made-up times: conv2, where replaced, runs at ``conv2_speedup``."""
    def compare(baseline, approx, *args, **kwargs):
        layers = {}
        for name in conv_names(baseline):
            replaced = type(approx.get_submodule(name)) is not nn.Conv2d
            speedup = conv2_speedup if replaced else 1.0
            layers[name] = {"baseline_ms": 1.0, "approx_ms": 1.0 / speedup, "speedup": speedup, "replaced": replaced}
        conv = {"baseline": float(len(layers)), "approx": sum(v["approx_ms"] for v in layers.values())}
        return {"setup": {}, "layers": layers, "conv_ms": conv, "conv_speedup": conv["baseline"] / conv["approx"],
                "model_ms": {"baseline": 2.0, "approx": 2.0}, "model_speedup": 1.0}
    return compare


@pytest.mark.parametrize("conv2_speedup", [0.5, 2.0])
def test_guard_decides_before_data_reconstruction_and_finetuning(tmp_path, monkeypatch, tiny_root, conv2_speedup):
    monkeypatch.setattr(lrx.pipeline, "compare", _fake_compare(conv2_speedup))
    cfg = compose_cfg([*_smoke(tiny_root), f"baseline.cache_dir={tmp_path}"], run_dir=tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # as lrx.train receives it
    job = prepare(cfg)
    results = run(job, tmp_path)
    (layer,) = results["layers"]
    if conv2_speedup < 1:  # put back: the fitting stages have nothing left to fit, the model is the baseline
        assert list(results["stages"]) == ["filter", "guard"]
        assert layer["kept"] is False and "0.50x" in layer["put_back_reason"] and "data_recon" not in layer
        assert results["final"]["acc1"] == results["baseline"]["acc1"]
        assert results["final"]["macs"] == results["baseline"]["macs"]
    else:
        assert list(results["stages"]) == ["filter", "data", "finetune"]
        assert layer["kept"] is True and "data_recon" in layer
        assert results["final"]["macs"] < results["baseline"]["macs"]
