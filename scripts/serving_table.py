"""Which thread count and wait policy serve a finished run's networks fastest on this CPU, quiet and
next to other work (:mod:`lrx.run.serving_choice`): every setting of ``lrx.runtime.serving``
(threads x wait policy, per runtime) timed in its own fresh process, both networks BatchNorm-folded
and side by side in each target, quiet and then next to ``--busy`` neighbour processes each
keeping a core busy; ``--rounds`` timings of each, taking turns (one timing per setting can
mislead where threads spin: docs/RESULTS.md section 11).

    python scripts/serving_table.py RUN_DIR [--targets torch-fp32 onnxruntime-fp32 openvino-int8] \\
        [--busy 1] [--rounds 3] [--data-root ../shared/data]

Prints one table per target (ms of both networks and the speed-up, quiet and busy) with the
recommended setting, and writes ``RUN_DIR/serving.json``. Run it on a machine doing nothing else:
the neighbours must be the only other work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrx.deploy.targets import TargetError, servable
from lrx.results.files import SERVING
from lrx.run.serving_choice import choose, table
from lrx.runtime.calibration import CALIBRATION_IMAGES

DEFAULT_TARGETS = ("torch-fp32", "onnxruntime-fp32", "openvino-int8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    parser.add_argument("--busy", type=int, default=1, help="neighbour processes keeping a core busy (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="timings per setting, quiet and busy (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES)
    parser.add_argument("--data-root", help="where the run's dataset is, if not where it read it")
    args = parser.parse_args(argv)
    try:
        targets = servable(args.targets, "--targets")
        out = choose(
            args.run_dir, targets, args.busy, args.batch_size, args.calibration_images, args.data_root, args.rounds
        )
    except (TargetError, ValueError) as e:
        parser.error(str(e))
    for name, t in out["targets"].items():
        print(table(name, t["points"], t["recommended"]), "\n", flush=True)
    print(f"written to {args.run_dir / SERVING}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
