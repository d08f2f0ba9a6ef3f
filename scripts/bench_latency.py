"""Measured speed of every decomposition method against nn.Conv2d on every conv shape of our models.

For each conv layer of the models (on its real input shape) and each batch size, the dense conv
and the low-rank layers run side by side in this process, timed by the estimator of
``lrx.measure.estimator`` (paired rounds; each figure the median of the per-round speed-ups, with its
interquartile range and the busy cores of other work while it was timed): every method of the
registry (or --methods) at the ranks that give 1.5x, 2x, 3x and 4x theoretical speed-up; a layer
with several executions (Scheme 1, CP) in its default one (Scheme 1's textbook three convs) and
in the one chosen by measurement. Timing does not depend on the weights' values, so the layers keep random
weights. Writes a markdown table:

    python scripts/bench_latency.py --out docs/latency.md
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch
from torch import nn

from lrx.compress.execution import has_choice, select
from lrx.io import write_text
from lrx.lowrank import METHODS, ConvGeometry, method_class
from lrx.measure.estimator import Estimator
from lrx.measure.latency import MEMORY_FORMATS, conv_names, dense_vs_lowrank, layer_inputs, machine, setup_for
from lrx.measure.load import busy_cores
from lrx.models import AlexNet, AlexNetCIFAR, ResNet20CIFAR

MODELS = {"alexnet": AlexNet, "alexnet_cifar": AlexNetCIFAR, "resnet20_cifar": ResNet20CIFAR}
TARGETS = (1.5, 2.0, 3.0, 4.0)


def layer_kwargs(conv: nn.Conv2d) -> dict:
    return dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None)


def bench_layer(
    conv: nn.Conv2d, x: torch.Tensor, methods, estimator: Estimator, fmt: torch.memory_format
) -> list[dict]:
    n, c, kh, kw = conv.weight.shape
    g = ConvGeometry.of(c, n, (kh, kw))
    rows = []
    for cls in map(method_class, methods):
        for bases in dict.fromkeys(cls.bases_for_speedup(g, t) for t in TARGETS):
            layer = cls(c, n, (kh, kw), bases, **layer_kwargs(conv)).to(x.device, memory_format=fmt).eval()
            row = {"method": cls.method, "bases": bases, "theory": cls.theoretical_speedup(g, bases)}
            if has_choice(layer):  # timed in its default execution, then in the fastest
                layer.strategy = layer.default_strategy
                row["default"] = dense_vs_lowrank(conv, layer, x, estimator).ratios["speedup"]
                row["strategy"] = select(layer, x, estimator)["strategy"]
            t = dense_vs_lowrank(conv, layer, x, estimator)
            row["measured"], row["dense_ms"], row["busy"] = t.ratios["speedup"], t.ms["dense"], t.busy_cores
            rows.append(row)
    return rows


def _cell(r) -> str:
    """``2.10x [2.02-2.16]``: a speed-up's median and interquartile range (lrx.measure.estimator.Ratio)."""
    return f"{r.median:.2f}x [{r.q25:.2f}-{r.q75:.2f}]" + (" unstable" if r.unstable else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["alexnet", "alexnet_cifar"], choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-format", default="channels_last", choices=list(MEMORY_FORMATS))
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    args = parser.parse_args()
    device, fmt = torch.device(args.device), MEMORY_FORMATS[args.memory_format]
    estimator, busy_before = Estimator(), busy_cores()
    lines = [
        "# Measured layer speed-ups against nn.Conv2d",
        "",
        f"Machine: {machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, device {setup_for(device, 0).device}; {datetime.date.today()}; "
        f"other work kept {busy_before:.2f} cores busy before the start.",
        f"Command: `python scripts/bench_latency.py {' '.join(sys.argv[1:])}`. Each figure is dense ms / "
        "low-rank ms: the median of per-round paired ratios, its interquartile range in brackets "
        f"(lrx.measure.estimator, {estimator}), on the layer's real input shape, float32, {args.memory_format} "
        "memory format for the dense conv and the low-rank layer alike; 'busy': cores other work kept "
        "busy while that row was timed. 'measured (default)': a layer with several "
        "executions (Scheme 1, CP) in its default one (Scheme 1: the textbook three convs); 'measured': "
        "in the execution chosen by measurement.",
        "",
        "| model | layer | weight | input | batch | method | bases | theory | measured (default) | measured "
        "| execution | dense ms | busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model_name in args.models:
        net = MODELS[model_name]().to(device, memory_format=fmt).eval()
        size = net.input_size
        convs = conv_names(net)
        for bs in args.batch_sizes:
            x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=fmt)
            inputs = layer_inputs(net, convs, x)
            for name in convs:
                conv = net.get_submodule(name)
                for r in bench_layer(conv, inputs[name], args.methods, estimator, fmt):
                    default = _cell(r["default"]) if "default" in r else ""
                    line = (
                        f"| {model_name} | {name} | {tuple(conv.weight.shape)} | {tuple(inputs[name].shape[1:])} "
                        f"| {bs} | "
                        f"{r['method']} | {r['bases']} | {r['theory']:.2f}x | {default} | {_cell(r['measured'])} | "
                        f"{r.get('strategy', '')} | {r['dense_ms']:.3f} | {r['busy']} |"
                    )
                    lines.append(line)
                    print(line, flush=True)
        if args.out:  # after each model: a run cut short keeps what it measured
            write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
