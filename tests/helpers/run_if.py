"""``run_if``: a test that needs what this machine or installation may lack is skipped, saying what
is missing, never failed. Each condition asks the code that decides it in a run (lrx's own checks
where lrx has one), so a test skips exactly where lrx would refuse or fall back:

    @run_if(cuda=True)                     # a CUDA device; also marks the test `cuda` (scripts/cuda_check.sh)
    @run_if(onnxruntime=True)              # the onnx extra
    @run_if(openvino=True)                 # the openvino extra (openvino and nncf)
    @run_if(bf16=True)                     # bfloat16 in oneDNN's own kernels (AVX-512 BF16 or AMX), as lrx asks
    @run_if(vnni=True)                     # int8 products summed without saturation (AVX-512 VNNI, AVX-VNNI, AMX)
    @run_if(target="openvino-bf16")        # a deployment target this installation and CPU serve

Conditions combine (all must hold). The mark is a ``pytest.mark.skipif`` with its reason;
``cuda=True`` adds ``cuda=True`` to it, which tests/conftest.py turns into the ``cuda`` marker.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import pytest
import torch

# The CPU features that sum u8 x s8 products in 32 bits (vpdpbusd, AMX tiles). Without them x86
# int8 kernels (oneDNN, ONNX Runtime's MLAS) fall back to AVX2's vpmaddubsw, which saturates pairs of
# products in 16 bits: int8 then loses several times more than its quantization steps.
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


@cache
def cpu_capabilities() -> dict:
    """This CPU's features as torch reads them (pytorch's cpuinfo: ``{"avx512_vnni": False, ...,
    "cpu_name": ...}``), on every OS torch runs on."""
    return dict(torch.cpu.get_capabilities())


def has_vnni() -> bool:
    caps = cpu_capabilities()
    return any(caps.get(flag, False) for flag in VNNI)


def _missing_packages(*names: str) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def _why_not_target(name: str) -> str | None:
    from lrx.deploy.targets import Target, TargetError

    try:
        Target.of(name).require()
    except TargetError as e:
        return str(e)
    return None


def _why_not_bf16() -> str | None:
    from lrx.measure.latency import unsupported

    return unsupported("torch", "bf16")


def run_if(
    *,
    cuda: bool = False,
    onnxruntime: bool = False,
    openvino: bool = False,
    bf16: bool = False,
    vnni: bool = False,
    target: str | None = None,
) -> pytest.MarkDecorator:
    """A skipif mark: skip unless every condition asked holds, giving the reasons of those that do not."""
    reasons = []
    if cuda and not torch.cuda.is_available():
        reasons.append("needs a CUDA device")
    if onnxruntime and _missing_packages("onnxruntime"):
        reasons.append("needs the onnx extra: pip install -e '.[onnx]'")
    if openvino and (missing := _missing_packages("openvino", "nncf")):
        reasons.append(f"needs the openvino extra ({', '.join(missing)} missing): pip install -e '.[openvino]'")
    if bf16 and (why := _why_not_bf16()):
        reasons.append(f"needs native bfloat16: {why}")
    if vnni and not has_vnni():
        name = cpu_capabilities().get("cpu_name", "this CPU")
        reasons.append(f"needs VNNI for exact int8 sums ({' or '.join(VNNI)}); {name} has none")
    if target and (why := _why_not_target(target)):
        reasons.append(why)  # lrx's own refusal, naming the target
    marks = {"cuda": True} if cuda else {}  # tests/conftest.py adds the cuda marker
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "runs here", **marks)
