"""The run folder's files and the keys results.json uses for where a network was timed; reading a
results file needs neither torch nor Lightning (the report reads nothing else)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = "results.json"  # a run's results, written last (the run is finished once it exists)
MODEL = "model.pt"  # the final network (lrx.results.saved)
DEPLOYED_DIR = "deployed"  # beside it: every deployment target's graphs, deployed/<target>/<side>/ (deploy.targets)
DEPLOYED = "deploy_targets.json"  # beside older runs, from the former scripts/deploy_table.py: results["deploy"]'s shape
SERVING = "serving.json"  # beside it, from deploy.serving=auto: each target's serving settings, timed
RETIMED = "retime.json"  # beside it, from python -m lrx.retime: the run timed (and deployed) again, one section a kind
ORT = "onnxruntime-cpu"  # the device key of ONNX Runtime timings
FOLDED = " (BN folded)"  # "<device> (BN folded)": the timings of both networks with their BatchNorms folded


def read_finished(path: Path) -> tuple[dict | None, str]:
    """``(results, "")`` if ``path`` is a complete results file, else ``(None, why not)``: the one
    definition of "finished" that re-runs (lrx.train) and reports share."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None, "unparsable JSON"
    if not isinstance(results, dict) or "status" not in results:
        return None, "status missing"
    if results["status"] != "complete":
        return None, f"status {results['status']!r}"
    return results, ""


def recommended_serving(run_dir: Path) -> dict[str, dict]:
    """``{target: the serving setting recommended for it}`` (a Serving's fields, lrx.runtime.serving):
    where ``python -m lrx.retime`` timed a target in several settings, its recommendation
    (``retime.json``'s ``serving`` section), else the run's (``serving.json``, deploy.serving=auto);
    {} without either."""
    out = {}
    serving, retimed = Path(run_dir) / SERVING, Path(run_dir) / RETIMED
    if serving.is_file():
        out |= {t: v["recommended"]["serving"] for t, v in json.loads(serving.read_text())["targets"].items()}
    if retimed.is_file():  # a file from before its sections has no serving section
        out |= {t: v["serving"] for t, v in json.loads(retimed.read_text()).get("serving", {}).items()}
    return out
