"""The checks every low-rank method shares: a conv lrx can decompose, a rank it can take, and the
error that names the bad value and what would be valid."""

from torch import nn
from torch.nn.modules.utils import _pair


class DecompositionError(ValueError):
    """A layer, rank or solver option that lrx cannot decompose; the message names the bad value
    and what would be valid."""


def check_conv(conv: nn.Module, name: str = "conv") -> None:
    """Raise DecompositionError unless ``conv`` is an nn.Conv2d that lrx can decompose:
    groups == 1, zero padding, and a kernel with both sides > 1."""
    if not isinstance(conv, nn.Conv2d):
        raise DecompositionError(
            f"{name!r} is a {type(conv).__name__}, not an nn.Conv2d: only 2-D convs can be decomposed"
        )
    if conv.groups != 1:
        raise DecompositionError(f"{name!r} has groups={conv.groups}: only groups=1 convs can be decomposed")
    if conv.padding_mode != "zeros":
        raise DecompositionError(f"{name!r} has padding_mode={conv.padding_mode!r}: only 'zeros' is supported")
    check_kernel(conv.kernel_size, name)


def check_kernel(kernel_size, name: str = "conv") -> None:
    kh, kw = _pair(kernel_size)
    if kh == 1 and kw == 1:
        raise DecompositionError(f"{name!r} has a 1x1 kernel: nothing to separate")
    if min(kh, kw) == 1:
        raise DecompositionError(f"{name!r} has a {kh}x{kw} kernel: both kernel sides must be > 1 to separate it")


def check_finite(conv: nn.Module, name: str = "conv") -> None:
    """DecompositionError naming the layer if its weight or bias holds a NaN/Inf."""
    bad = sum(int((~p.isfinite()).sum()) for p in conv.parameters())
    if bad:
        raise DecompositionError(
            f"filter reconstruction of layer {name!r}: {bad} NaN/Inf value(s) in its weight or bias; "
            "the baseline is broken (check its checkpoint or training)"
        )


def is_decomposable(conv: nn.Module) -> bool:
    try:
        check_conv(conv)
    except DecompositionError:
        return False
    return True


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_bases(bases, full_rank: int, method: str, name: str = "conv") -> None:
    if not is_int(bases) or not 1 <= bases <= full_rank:
        raise DecompositionError(
            f"{name!r}: bases={bases!r} is invalid for method {method!r}; valid: an integer in [1, {full_rank}]"
        )


def round_rank(rank: int, multiple: int, full: int, name: str = "conv") -> int:
    """``rank`` rounded to the nearest multiple of ``multiple`` in [multiple, full rounded down];
    DecompositionError when no multiple fits the full rank."""
    if multiple == 1:
        return rank
    if full < multiple:
        raise DecompositionError(
            f"{name!r}: its full rank {full} holds no multiple of rank_multiple={multiple}; "
            f"valid: rank_multiple <= {full}"
        )
    return min(max(multiple, round(rank / multiple) * multiple), full // multiple * multiple)
