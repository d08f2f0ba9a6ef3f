"""Measured speed of Scheme 1 and Scheme 2 against nn.Conv2d on every conv shape of our models.

For each conv layer of ``alexnet`` and ``alexnet_cifar`` (on its real input shape) and each batch
size, the dense conv and the low-rank layers run side by side, interleaved, in this process:
Scheme 1 at M in {1, 2, 4, 8} (textbook execution and the measured fastest strategy) and Scheme 2
at the K that gives 1.5x, 2x, 3x and 4x theoretical speed-up. Timing does not depend on the
weights' values, so the layers keep random weights. Writes a markdown table:

    python scripts/bench_latency.py --out docs/latency.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys

import torch
from torch import nn

from lrx.io import write_text
from lrx.latency import MEMORY_FORMATS, conv_names, layer_inputs, modules_ms, setup_for
from lrx.lowrank import LowRankExpConvV1, LowRankExpConvV2
from lrx.lowrank.planner import scheme2_bases
from lrx.lowrank.scheme1_exec import DEFAULT as TEXTBOOK
from lrx.models import AlexNet, AlexNetCIFAR

MODELS = {"alexnet": AlexNet, "alexnet_cifar": AlexNetCIFAR}
SCHEME1_BASES = (1, 2, 4, 8)
SCHEME2_TARGETS = (1.5, 2.0, 3.0, 4.0)


def layer_kwargs(conv: nn.Conv2d) -> dict:
    return dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None)


def bench_layer(conv: nn.Conv2d, x: torch.Tensor, warmup: int, repeats: int, fmt: torch.memory_format) -> list[dict]:
    n, c, kh, kw = conv.weight.shape
    candidates: dict[str, tuple[nn.Module, str, int]] = {}
    for m in SCHEME1_BASES:
        if m < kh * kw:
            candidates[f"s1_M{m}"] = (LowRankExpConvV1(c, n, (kh, kw), m, **layer_kwargs(conv)), "Scheme 1", m)
    for target in SCHEME2_TARGETS:
        k = scheme2_bases(conv, target)
        candidates[f"s2_{target}"] = (LowRankExpConvV2(c, n, (kh, kw), k, **layer_kwargs(conv)), "Scheme 2", k)
    rows = []
    for key, (layer, scheme, bases) in candidates.items():
        layer.to(x.device, memory_format=fmt).eval()
        row = {"scheme": scheme, "bases": bases, "theory": layer.theoretical_speedup(layer.geometry, bases)}
        if scheme == "Scheme 1":
            layer.strategy = TEXTBOOK
            textbook = modules_ms({"dense": conv, "lowrank": layer}, x, warmup, repeats)
            row["textbook"] = textbook["dense"] / textbook["lowrank"]
            row["strategy"] = layer.select_strategy(x, warmup, repeats)["strategy"]
        t = modules_ms({"dense": conv, "lowrank": layer}, x, warmup, repeats)
        row["measured"] = t["dense"] / t["lowrank"]
        row["dense_ms"] = t["dense"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-format", default="channels_last", choices=list(MEMORY_FORMATS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    args = parser.parse_args()
    device, fmt = torch.device(args.device), MEMORY_FORMATS[args.memory_format]
    lines = [
        "# Measured layer speed-ups against nn.Conv2d",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, device {setup_for(device, 0).device}; {datetime.date.today()}.",
        f"Command: `python scripts/bench_latency.py {' '.join(sys.argv[1:])}`. Each figure is dense ms / low-rank ms, medians of {args.repeats} "
        f"interleaved runs on the layer's real input shape, float32, {args.memory_format} memory format "
        "for the dense conv and the low-rank layer alike. 'measured (textbook)': Scheme 1 in the "
        "textbook execution; 'measured': in the strategy chosen by measurement (the before/after "
        "of lrx's execution work).",
        "",
        "| model | layer | weight | input | batch | scheme | bases | theory | measured (textbook) | measured | Scheme 1 strategy | dense ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
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
                for r in bench_layer(conv, inputs[name], args.warmup, args.repeats, fmt):
                    textbook = f"{r['textbook']:.2f}x" if "textbook" in r else ""
                    line = (
                        f"| {model_name} | {name} | {tuple(conv.weight.shape)} | {tuple(inputs[name].shape[1:])} | {bs} | "
                        f"{r['scheme']} | {r['bases']} | {r['theory']:.2f}x | {textbook} | {r['measured']:.2f}x | "
                        f"{r.get('strategy', '')} | {r['dense_ms']:.3f} |"
                    )
                    lines.append(line)
                    print(line, flush=True)
    if args.out:
        write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
