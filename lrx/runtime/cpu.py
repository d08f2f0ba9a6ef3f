"""The CPU features that decide int8 and bf16 speed and accuracy, as torch reads them (pytorch's
cpuinfo, on every OS torch runs on), recorded with every figure."""

from __future__ import annotations

from functools import cache

import torch

# What a figure is recorded with: AVX-512, its int8 (VNNI) and bf16 extensions, AMX, and AVX-VNNI.
FLAGS = ("avx2", "avx512_f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16")
# The features that sum u8 x s8 products in 32 bits (vpdpbusd, AMX tiles). Without them x86 int8
# kernels (oneDNN, ONNX Runtime's MLAS) fall back to AVX2's vpmaddubsw, which saturates pairs of
# products in 16 bits: int8 then loses several times more than its quantization steps, unless the
# weights use 7 bits (NNCF's overflow fix, ONNX Runtime's reduce_range).
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


@cache
def capabilities() -> dict:
    """This CPU's features: ``{"avx512_vnni": False, ..., "cpu_name": ...}``."""
    return dict(torch.cpu.get_capabilities())


def flags() -> dict[str, bool]:
    """The features of :data:`FLAGS`, each True or False."""
    caps = capabilities()
    return {f: bool(caps.get(f, False)) for f in FLAGS}


def has_vnni() -> bool:
    caps = capabilities()
    return any(caps.get(f, False) for f in VNNI)
