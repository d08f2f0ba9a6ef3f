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

import pytest
import torch

from lrx.runtime import cpu


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
    if vnni and not cpu.has_vnni():
        name = cpu.capabilities().get("cpu_name", "this CPU")
        reasons.append(f"needs VNNI for exact int8 sums ({' or '.join(cpu.VNNI)}); {name} has none")
    if target and (why := _why_not_target(target)):
        reasons.append(why)  # lrx's own refusal, naming the target
    marks = {"cuda": True} if cuda else {}  # tests/conftest.py adds the cuda marker
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "runs here", **marks)
