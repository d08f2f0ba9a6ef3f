"""Finished runs' dense and final networks on a CUDA device, in float32, float16 and bfloat16.

For each run (``lrx.results.saved.load_models``), both networks have their BatchNorm folded
(``lrx.compress.fold``), are cast to each dtype in channels_last with ``cudnn.benchmark`` on (what
a user serving on a GPU would run), have their layer executions chosen on the GPU
(``lrx.compress.execution.tune``), and are then

- evaluated: acc@1 on the CIFAR-10 test images found in ``--test-batch`` (a binary batch file), in
  that dtype;
- timed side by side at each batch size by the estimator (``lrx.measure.estimator``: paired
  rounds, the speed-up the median of per-round ratios, with its interquartile range).

Writes a markdown table (``--out``):

    python scripts/cuda_networks.py results/runs/cp_multiple16_ft2 results/runs/scheme2_3x \\
        --test-batch ../shared/data/cifar-10-batches-bin/test_batch.bin --out docs/cuda_networks.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
from pathlib import Path

import torch

from lrx.compress.execution import tune
from lrx.compress.fold import fold_bn
from lrx.data.cifar import CIFAR10_SPEC, CIFARTensors, read_binary_batch
from lrx.io import write_text
from lrx.measure.estimator import Estimator
from lrx.measure.latency import time_modules
from lrx.results.saved import load_models

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def test_images(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch file's images, normalised, ``(n, 3, 32, 32)`` float32, and labels ``(n,)``."""
    data = CIFARTensors(*read_binary_batch(path), CIFAR10_SPEC.mean, CIFAR10_SPEC.std)  # normalised as lrx trains
    return torch.stack([data[i][0] for i in range(len(data))]), data.labels.long()


@torch.inference_mode()
def acc1(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    starts = range(0, len(y), batch)
    hits = sum((net(x[i : i + batch]).argmax(1).cpu() == y[i : i + batch]).sum().item() for i in starts)
    return 100.0 * hits / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--test-batch", type=Path, required=True, help="a CIFAR-10 binary batch file")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32, 256])
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_networks: no CUDA device here (torch.cuda.is_available() is False)")
    device, estimator = torch.device("cuda"), Estimator()
    torch.backends.cudnn.benchmark = True
    images, labels = test_images(args.test_batch)
    if max(args.batch_sizes) > len(labels):
        sys.exit(f"--batch-sizes: {max(args.batch_sizes)} is more than the {len(labels)} test images")
    lines = [
        "# Dense and low-rank networks on CUDA",
        "",
        f"Device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}; {datetime.date.today()}. Command: "
        f"`python scripts/cuda_networks.py {' '.join(sys.argv[1:])}`. BatchNorm folded, channels_last, "
        f"cudnn.benchmark on, executions chosen on the GPU. acc@1 on the {len(labels)} test images, in that "
        f"dtype. ms: median per call; speed-up: dense / low-rank, the median of per-round paired ratios "
        f"[interquartile range] ({estimator}).",
        "",
        "| run | dtype | acc@1 dense | acc@1 low-rank | batch | dense ms | low-rank ms | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in args.runs:
        baseline, final, _ = load_models(run)
        baseline, final = fold_bn(baseline), fold_bn(final)
        for name in args.dtypes:
            dense, approx = (
                copy.deepcopy(m).to(device, DTYPES[name], memory_format=torch.channels_last).eval()
                for m in (baseline, final)
            )
            x_eval = images.to(device, DTYPES[name]).contiguous(memory_format=torch.channels_last)
            tune(approx, x_eval[:32], estimator, "channels_last")
            approx.to(memory_format=torch.channels_last)
            accs = acc1(dense, x_eval, labels), acc1(approx, x_eval, labels)
            for bs in args.batch_sizes:
                x = x_eval[:bs].contiguous(memory_format=torch.channels_last)
                speedup = {"speedup": lambda r: r["dense"] / r["lowrank"]}
                t = time_modules({"dense": dense, "lowrank": approx}, x, estimator, ratios=speedup)
                r = t.ratios["speedup"]
                line = (
                    f"| {run.name} | {name} | {accs[0]:.2f}% | {accs[1]:.2f}% | {bs} | {t.ms['dense']:.3f} "
                    f"| {t.ms['lowrank']:.3f} | {r.median:.2f}x [{r.q25:.2f}-{r.q75:.2f}] |"
                )
                lines.append(line)
                print(line, flush=True)
    if args.out:
        write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
