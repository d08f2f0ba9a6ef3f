"""Time filter reconstruction on every conv of AlexNet and AlexNetCIFAR and print a markdown table.

    python scripts/bench_solvers.py                       # random (default-initialised) weights
    python scripts/bench_solvers.py --ckpt baseline.pt    # trained AlexNetCIFAR weights

Every method of the registry (or --methods) runs at the ranks that give each --speedups
theoretical MAC speed-up. 'solve s' is wall time, 'cpu s' the process CPU time (the fair figure
on a shared CPU).
"""

import argparse
import time

import torch

from lrx.lowrank import METHODS, ConvGeometry, method_class, select_convs
from lrx.models import AlexNet, AlexNetCIFAR


def load_weights(model: torch.nn.Module, path: str) -> None:
    """A torch.save'd raw state_dict or {'state_dict': ...}; a common 'net.' / 'model.' prefix is dropped."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    for prefix in ("net.", "model."):
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    model.load_state_dict(state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="state_dict of alexnet_cifar (raw or {'state_dict': ...})")
    parser.add_argument(
        "--models", nargs="+", default=["alexnet", "alexnet_cifar"], choices=["alexnet", "alexnet_cifar"]
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--speedups", nargs="+", type=float, default=[1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    models = {"alexnet": AlexNet(), "alexnet_cifar": AlexNetCIFAR()}
    if args.ckpt:
        load_weights(models["alexnet_cifar"], args.ckpt)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"weights: {'alexnet_cifar from ' + args.ckpt if args.ckpt else 'random'}\n"
    )
    print("| model | layer | shape | method | bases | rel_error | macs_speedup | solve s | cpu s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name in args.models:
        for name, conv in select_convs(models[model_name], "all"):
            g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size)
            runs = [
                (cls, bases)
                for cls in map(method_class, args.methods)
                for bases in dict.fromkeys(cls.bases_for_speedup(g, s) for s in args.speedups)
            ]
            for cls, bases in runs:
                cpu = time.process_time()
                r = cls.from_conv(conv, bases).report
                cpu = time.process_time() - cpu
                print(
                    f"| {model_name} | {name} | {tuple(conv.weight.shape)} | {r['method']} | {bases} | "
                    f"{r['rel_error']:.4f} | {r['macs_speedup']:.2f} | {r['solve_time_s']:.3f} | {cpu:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
