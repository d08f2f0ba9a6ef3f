"""Deploy: the baseline and the final network as ONNX graphs, checked, and timed in ONNX Runtime.

    python -m lrx.export RUN_DIR [--data-root DIR] [--opset N]

Each network is written as an ONNX graph (:func:`lrx.onnx_graphs.write_graph`: the dynamo
exporter, a dynamic batch axis, the TorchScript exporter only where it fails). A graph is kept
only after ``onnx.checker`` passes and ONNX Runtime reproduces the torch network on real
validation images within tolerance; otherwise :class:`ExportError` and no file. Both networks are
then timed in ONNX Runtime like torch times them (:func:`lrx.latency.compare` with
``runtime="onnxruntime"``: every conv as its own graph, and the whole networks). Needs the
``onnx`` extra: ``pip install -e ".[onnx]"``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from lrx.estimator import DEFAULT_ESTIMATOR, Estimator
from lrx.io import write_bytes
from lrx.latency import compare_at, points
from lrx.modes import eval_mode
from lrx.onnx_graphs import OPSET, RUNTIME, require_onnx, run, session, write_graph

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


def deploy(
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


def _validation_images(results: dict, data_root: str | None, count: int) -> torch.Tensor:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = OmegaConf.create(results["config"]["data"])
    if data_root:
        data.root = data_root
    dm = instantiate(data)
    dm.setup("fit")
    return next(iter(dm.val_dataloader()))[0][:count]


def main(argv: list[str] | None = None) -> int:
    from lrx.io import write_json
    from lrx.lowrank.execution import reset_strategies
    from lrx.pipeline import load_models

    parser = argparse.ArgumentParser(prog="python -m lrx.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory (results.json, model.pt)")
    parser.add_argument("--data-root", help="where the run's dataset is, if not where the run read it")
    parser.add_argument("--opset", type=int, default=OPSET)
    parser.add_argument("--images", type=int, default=16, help="validation images the graphs are checked on")
    args = parser.parse_args(argv)
    try:
        require_onnx("python -m lrx.export")
        baseline, final, results = load_models(args.run_dir)
        reset_strategies(final)
        images = _validation_images(results, args.data_root, args.images)
        lat = results["config"]["latency"]
        exported, timings = deploy(
            baseline,
            final,
            args.run_dir,
            images,
            results["config"]["model"]["input_size"],
            lat["batch_sizes"],
            lat.get("threads"),
            Estimator.of(lat.get("estimator")),
            args.opset,
        )
    except (ValueError, OSError, ImportError, ExportError) as e:
        print(f"lrx.export: error: {e}", file=sys.stderr)
        return 1
    write_json(args.run_dir / "deploy.json", {"onnx": exported, RUNTIME: timings})
    print(
        f"wrote {args.run_dir / BASELINE_ONNX}, {args.run_dir / MODEL_ONNX}, {args.run_dir / 'deploy.json'}; "
        + "; ".join(
            f"{where}: conv {t['conv_speedup']:.2f}x, model {t['model_speedup']:.2f}x"
            for where, t in points({RUNTIME: timings})
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
