"""Tiny datasets the tests write themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_cifar10(folder: Path, n_train: int = 20, n_test: int = 7, seed: int = 0) -> Path:
    """A ``cifar-10-batches-bin/`` of random images: 5 training batches of ``n_train`` records
    and a test batch of ``n_test`` (1 label byte + 3072 pixel bytes each)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, n in enumerate([n_train] * 5 + [n_test]):
        name = f"data_batch_{i + 1}.bin" if i < 5 else "test_batch.bin"
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        np.concatenate([labels, pixels], axis=1).tofile(folder / name)
    return folder


def smoke_args(root) -> list[str]:
    """experiment=smoke on the data under ``root``, without a logger, on a 10-image validation split."""
    return ["experiment=smoke", "logger=none", f"data.root={root}", "data.val_size=10"]
