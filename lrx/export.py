"""Deploy: the baseline and the final network as ONNX graphs, checked, and timed in ONNX Runtime.

    python -m lrx.export RUN_DIR [--data-root DIR] [--opset N]

Each network is exported with ``torch.onnx.export(..., dynamo=True)`` (the current exporter, on
onnxscript) with a dynamic batch axis, falling back to the TorchScript exporter only where the
new one fails (said in the log and in the returned record). A graph is kept only after
``onnx.checker`` passes and ONNX Runtime reproduces the torch network on real validation images
within tolerance; otherwise :class:`ExportError` and no file. onnx, onnxscript and onnxruntime
are the ``onnx`` extra: ``pip install -e ".[onnx]"``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from lrx.io import write_bytes
from lrx.modes import eval_mode

log = logging.getLogger(__name__)

EXTRA = "onnx"  # pip install -e ".[onnx]"
PACKAGES = ("onnx", "onnxscript", "onnxruntime")
OPSET = 18
RTOL = 1e-4  # max |onnx - torch| / max |torch| over the check images
BASELINE_ONNX, MODEL_ONNX = "baseline.onnx", "model.onnx"
RUNTIME = "onnxruntime-cpu"  # the device key of ONNX Runtime timings in results.json


class ExportError(RuntimeError):
    """A graph that cannot be exported, fails onnx.checker, or disagrees with its torch network."""


def missing_packages() -> list[str]:
    return [p for p in PACKAGES if importlib.util.find_spec(p) is None]


def require_onnx(key: str = "deploy.onnx") -> None:
    """A clear error, before any work, when the onnx extra is not installed."""
    missing = missing_packages()
    if missing:
        raise ImportError(f'{key}=true needs {", ".join(missing)}: install the extra with pip install -e ".[{EXTRA}]"')


def _export(net: nn.Module, x: torch.Tensor, path: Path, opset: int) -> str:
    """Write ``net`` to ``path``; returns the exporter that worked ("dynamo" or "torchscript")."""
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            net,
            (x,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        program.save(str(path))
        return "dynamo"
    except Exception as e:  # noqa: BLE001 - any failure of the new exporter falls back, and is reported
        log.warning(
            "the dynamo ONNX exporter failed (%s: %s); falling back to the TorchScript exporter",
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
    torch.onnx.export(
        net,
        (x,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    return "torchscript"


def session(path: Path, threads: int):
    """An ONNX Runtime CPU session with every graph optimisation and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(sess, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def export_checked(net: nn.Module, path: Path, images: torch.Tensor, opset: int = OPSET, rtol: float = RTOL) -> dict:
    """Export ``net`` (CPU) to ``path`` and check it on ``images`` (B, 3, H, W); the file appears
    only once both checks passed. Returns the exporter, opset and the max abs / rel error."""
    import onnx

    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        tmp = Path(folder) / path.name
        with eval_mode(net):
            exporter = _export(net, images[:2], tmp, opset)
            onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
            with torch.no_grad():
                ref = net(images)
        out = _run(session(tmp, torch.get_num_threads()), images)
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


def ort_latency(
    baseline: Path, model: Path, input_size: int, batch_sizes, threads: int, warmup: int, repeats: int
) -> dict:
    """Both graphs timed in this process, interleaved (one call each per round, median ms), at each
    batch size; ``{batch size: {"model_ms": {...}, "model_speedup": ...}}`` and the set-up."""
    import onnxruntime as ort

    sessions = {"baseline": session(baseline, threads), "approx": session(model, threads)}
    out = {}
    for bs in batch_sizes:
        x = torch.randn(bs, 3, input_size, input_size)
        for _ in range(warmup):
            for s in sessions.values():
                _run(s, x)
        times = {k: [] for k in sessions}
        for _ in range(repeats):
            for k, s in sessions.items():
                start = time.perf_counter()
                _run(s, x)
                times[k].append((time.perf_counter() - start) * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        out[bs] = {"model_ms": ms, "model_speedup": ms["baseline"] / ms["approx"]}
    return {
        "setup": {
            "runtime": f"onnxruntime {ort.__version__}",
            "provider": "CPUExecutionProvider",
            "threads": threads,
            "graph_optimization": "ORT_ENABLE_ALL",
        },
        "batches": out,
    }


def deploy(
    baseline: nn.Module,
    final: nn.Module,
    run_dir: Path,
    images: torch.Tensor,
    input_size: int,
    batch_sizes,
    warmup: int,
    repeats: int,
    opset: int = OPSET,
) -> dict:
    """Export and check both networks into ``run_dir``, then time them in ONNX Runtime."""
    run_dir = Path(run_dir)
    exported = {
        "baseline": export_checked(baseline, run_dir / BASELINE_ONNX, images, opset),
        "final": export_checked(final, run_dir / MODEL_ONNX, images, opset),
    }
    timing = ort_latency(
        run_dir / BASELINE_ONNX, run_dir / MODEL_ONNX, input_size, batch_sizes, torch.get_num_threads(), warmup, repeats
    )
    return {"onnx": exported, RUNTIME: timing}


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
        deployed = deploy(
            baseline,
            final,
            args.run_dir,
            images,
            results["config"]["model"]["input_size"],
            lat["batch_sizes"],
            lat["warmup"],
            lat["repeats"],
            args.opset,
        )
    except (ValueError, OSError, ImportError, ExportError) as e:
        print(f"lrx.export: error: {e}", file=sys.stderr)
        return 1
    write_json(args.run_dir / "deploy.json", deployed)
    t = deployed[RUNTIME]
    print(
        f"wrote {args.run_dir / BASELINE_ONNX}, {args.run_dir / MODEL_ONNX}, {args.run_dir / 'deploy.json'}; "
        f"{t['setup']['runtime']}, {t['setup']['threads']} threads: model speed-up "
        + ", ".join(f"{v['model_speedup']:.2f}x at batch {bs}" for bs, v in t["batches"].items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
