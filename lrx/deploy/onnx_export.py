"""Deploy: the baseline and the final network as ONNX graphs, checked, and timed in ONNX Runtime
(``python -m lrx.export RUN_DIR`` does it for a finished run).

Each network is written as an ONNX graph (:func:`lrx.runtime.onnxruntime.write_graph`: the dynamo
exporter, a dynamic batch axis, the TorchScript exporter only where it fails). A graph is kept
only after ``onnx.checker`` passes and ONNX Runtime reproduces the torch network on real
validation images within tolerance; otherwise :class:`ExportError` and no file. Both networks are
then timed in ONNX Runtime like torch times them (:func:`lrx.measure.latency.compare` with
``runtime="onnxruntime"``: every conv as its own graph, and the whole networks). Needs the
``onnx`` extra: ``pip install -e ".[onnx]"``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from lrx.io import write_bytes
from lrx.measure.estimator import DEFAULT_ESTIMATOR, Estimator
from lrx.measure.latency import compare_at
from lrx.modes import eval_mode
from lrx.runtime.onnxruntime import OPSET, run, session, write_graph

RTOL = 1e-4  # max |onnx - torch| / max |torch| over the check images
BASELINE_ONNX, MODEL_ONNX = "baseline.onnx", "model.onnx"


class ExportError(RuntimeError):
    """A graph that cannot be exported, fails onnx.checker, or disagrees with its torch network."""


def export_checked(net: nn.Module, path: Path, images: torch.Tensor, opset: int = OPSET, rtol: float = RTOL) -> dict:
    """Export ``net`` (CPU) to ``path`` and check it on ``images`` (B, 3, H, W); the file appears
    only once both checks passed. Returns the exporter, opset and the max abs / rel error."""
    import onnx

    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        tmp = Path(folder) / path.name
        with eval_mode(net):
            exporter = write_graph(net, images[:2], tmp, opset)
            onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
            with torch.no_grad():
                ref = net(images)
        out = run(session(tmp, torch.get_num_threads()), images)
        abs_err = float((out - ref).abs().max())
        rel_err = abs_err / max(float(ref.abs().max()), torch.finfo(ref.dtype).tiny)
        if not rel_err <= rtol:
            raise ExportError(
                f"{path.name}: ONNX Runtime disagrees with the torch network on {len(images)} "
                f"validation images: max relative error {rel_err:.2e} > {rtol:.0e}"
            )
        write_bytes(path, tmp.read_bytes())  # atomic: the file exists only once checked
    return {
        "file": path.name,
        "exporter": exporter,
        "opset": opset,
        "max_abs_error": abs_err,
        "max_rel_error": rel_err,
        "check_images": len(images),
    }


def export_and_time(
    baseline: nn.Module,
    final: nn.Module,
    run_dir: Path,
    images: torch.Tensor,
    input_size: int,
    batch_sizes,
    threads=None,
    estimator: Estimator = DEFAULT_ESTIMATOR,
    opset: int = OPSET,
) -> tuple[dict, dict]:
    """Export and check both networks into ``run_dir``, then time them in ONNX Runtime at every
    thread count x batch size. Returns the export records and ``{threads: {batch size:
    compare(...)}}`` in ONNX Runtime."""
    run_dir = Path(run_dir)
    exported = {
        "baseline": export_checked(baseline, run_dir / BASELINE_ONNX, images, opset),
        "final": export_checked(final, run_dir / MODEL_ONNX, images, opset),
    }
    return exported, compare_at(
        baseline, final, input_size, batch_sizes, threads, "cpu", estimator, runtime="onnxruntime"
    )
