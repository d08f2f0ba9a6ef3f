"""Top-1 accuracy of a classifier over a data loader."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from lrx.modes import eval_mode


@torch.inference_mode()
def accuracy(net: nn.Module, loader, max_batches: int | None = None, desc: str = "eval") -> float:
    """acc@1 in percent over ``loader`` (the first ``max_batches`` batches if given)."""
    with eval_mode(net):
        return _accuracy(net, loader, max_batches, desc)


def _accuracy(net: nn.Module, loader, max_batches: int | None, desc: str) -> float:
    device = next(net.parameters()).device
    correct = total = 0
    n = len(loader) if max_batches is None else min(max_batches, len(loader))
    for i, (x, y) in enumerate(tqdm(loader, total=n, desc=desc, leave=False)):
        if i == n:
            break
        correct += (net(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    return 100.0 * correct / total
