"""Deploy a finished run: both networks as ONNX graphs, checked, and timed in ONNX Runtime.

    python -m lrx.export RUN_DIR [--data-root DIR] [--opset N]

Writes ``baseline.onnx``, ``model.onnx`` and ``deploy.json`` into the run directory
(:mod:`lrx.deploy.onnx_export`), then prints how to serve each deployment target: the threads and
wait policy recommended for the run (:func:`lrx.results.files.recommended_serving`), else those the
run timed with. Needs the ``onnx`` extra: ``pip install -e ".[onnx]"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrx.compress.execution import reset_strategies
from lrx.deploy.onnx_export import BASELINE_ONNX, MODEL_ONNX, ExportError, export_and_time
from lrx.io import write_json
from lrx.measure.estimator import Estimator
from lrx.measure.latency import points
from lrx.results.files import ORT, RESULTS, RETIMED, SERVING, read_finished, recommended_serving
from lrx.results.saved import datamodule_of, load_models
from lrx.runtime.onnxruntime import OPSET, require_onnx
from lrx.runtime.serving import Serving


def serving_lines(run_dir: Path) -> list[str]:
    """How to serve each target of the run: the settings recommended for it (``serving.json`` or
    ``retime.json`` beside the run), else the ones its deployments were timed with."""
    chosen = recommended_serving(run_dir)
    if chosen:
        source = f"recommended by {SERVING} or {RETIMED}"
    else:
        results, _ = read_finished(Path(run_dir) / RESULTS)
        targets = ((results or {}).get("deploy") or {}).get("targets") or {}
        chosen = {t: row["final"]["serving"] for t, row in targets.items() if "serving" in row["final"]}
        source = "as its deployments were timed (none recommended: python -m lrx.retime --threads all --wait all)"
    return [f"serve {t} ({source}): {Serving(**s).how()}" for t, s in chosen.items()]


def main(argv: list[str] | None = None) -> int:

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
        images = next(iter(datamodule_of(results, args.data_root).val_dataloader()))[0][: args.images]
        lat = results["config"]["latency"]
        exported, timings = export_and_time(
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
        print(f"lrx.deploy.onnx_export: error: {e}", file=sys.stderr)
        return 1
    write_json(args.run_dir / "deploy.json", {"onnx": exported, ORT: timings})
    print(
        f"wrote {args.run_dir / BASELINE_ONNX}, {args.run_dir / MODEL_ONNX}, {args.run_dir / 'deploy.json'}; "
        + "; ".join(
            f"{where}: conv {t['conv_speedup']:.2f}x, model {t['model_speedup']:.2f}x"
            for where, t in points({ORT: timings})
        )
    )
    print("\n".join(serving_lines(args.run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
