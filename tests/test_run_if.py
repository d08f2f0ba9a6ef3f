"""tests/helpers/run_if.py: a condition skips exactly where what decides it in a run says no, with
that code's own reason; the CPU's features are torch's."""

import pytest
import torch

from lrx.runtime import cpu
from lrx.runtime import openvino as ov
from tests.conftest import pytest_collection_modifyitems
from tests.helpers import run_if as helper
from tests.helpers.run_if import run_if


def _skips(mark: pytest.MarkDecorator) -> bool:
    assert mark.name == "skipif"
    return mark.args[0]


@pytest.mark.parametrize(
    "capabilities, skips",
    [
        ({"avx512_vnni": True, "cpu_name": "Xeon"}, False),
        ({"avx_vnni": True, "avx512_vnni": False, "cpu_name": "Core"}, False),
        ({"amx_int8": True, "cpu_name": "Xeon"}, False),
        ({"avx2": True, "avx512_vnni": False, "avx_vnni": False, "cpu_name": "Old EPYC"}, True),
    ],
)
def test_vnni_follows_the_cpus_features(monkeypatch, capabilities, skips):
    monkeypatch.setattr(cpu, "capabilities", lambda: capabilities)
    mark = run_if(vnni=True)
    assert _skips(mark) is skips
    assert ("Old EPYC has none" in mark.kwargs["reason"]) is skips


def test_the_cpus_features_are_torchs():
    assert cpu.capabilities() == torch.cpu.get_capabilities()
    assert cpu.flags() == {f: bool(torch.cpu.get_capabilities().get(f, False)) for f in cpu.FLAGS}


def test_a_target_skips_with_lrxs_own_reason(monkeypatch):
    pytest.importorskip("openvino")

    class NoBF16:
        def get_property(self, device, name):
            return {"OPTIMIZATION_CAPABILITIES": ["FP32", "INT8"], "FULL_DEVICE_NAME": "Old CPU"}[name]

    monkeypatch.setattr(ov, "_core", NoBF16)
    mark = run_if(target="openvino-bf16")
    assert _skips(mark) and "openvino-bf16 is not served natively on this CPU" in mark.kwargs["reason"]
    assert "no BF16 on Old CPU" in mark.kwargs["reason"]
    assert not _skips(run_if(target="openvino-int8")) and not _skips(run_if(target="torch-fp32"))


def test_bf16_asks_onednn_as_lrx_does(monkeypatch):
    for supported in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda s=supported: s)
        mark = run_if(bf16=True)
        assert _skips(mark) is not supported and ("oneDNN" in mark.kwargs["reason"]) is not supported


def test_conditions_combine_and_name_every_missing_one(monkeypatch):
    monkeypatch.setattr(helper, "_missing_packages", lambda *names: list(names))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mark = run_if(cuda=True, onnxruntime=True, openvino=True)
    assert _skips(mark)
    assert mark.kwargs["reason"].split("; ")[0] == "needs a CUDA device"
    assert "onnx extra" in mark.kwargs["reason"] and "openvino, nncf missing" in mark.kwargs["reason"]
    assert not _skips(run_if())


def test_a_cuda_test_carries_the_cuda_marker_for_pytest_m_cuda():
    class Item:
        def __init__(self, mark):
            self.marks = [mark.mark]

        def iter_markers(self, name):
            return (m for m in self.marks if m.name == name)

        def add_marker(self, mark):
            self.marks.append(mark.mark)

    cuda, other = Item(run_if(cuda=True)), Item(run_if(openvino=True))
    pytest_collection_modifyitems([cuda, other])
    assert [m.name for m in cuda.marks] == ["skipif", "cuda"] and [m.name for m in other.marks] == ["skipif"]
