"""What every low-rank layer shares: the error type, the checks on the original conv, the split of
its geometry into a vertical (kh x 1) and a horizontal (1 x kw) pass, small solver helpers, and
the base class that builds a layer from a conv (``from_conv``) and reports on it.

Zero padding, stride and dilation are separable: padding / striding / dilating the rows in the
vertical pass and the columns in the horizontal pass gives exactly the 2-D conv's output, as long
as no bias is added between the passes (the bias always goes on the last pass).
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
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
            f"{name!r} is a {type(conv).__name__}, not an nn.Conv2d: only 2-D convs can be decomposed")
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
        raise DecompositionError(
            f"{name!r} has a {kh}x{kw} kernel: both kernel sides must be > 1 to separate it")


def check_finite(conv: nn.Module, name: str = "conv") -> None:
    """DecompositionError naming the layer if its weight or bias holds a NaN/Inf."""
    bad = sum(int((~p.isfinite()).sum()) for p in conv.parameters())
    if bad:
        raise DecompositionError(
            f"filter reconstruction of layer {name!r}: {bad} NaN/Inf value(s) in its weight or bias; "
            "the baseline is broken (check its checkpoint or training)")


def is_decomposable(conv: nn.Module) -> bool:
    try:
        check_conv(conv)
    except DecompositionError:
        return False
    return True


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_bases(bases, full_rank: int, scheme: int | str, name: str = "conv") -> None:
    if not is_int(bases) or not 1 <= bases <= full_rank:
        raise DecompositionError(
            f"{name!r}: bases={bases!r} is invalid for scheme {scheme!r}; valid: an integer in [1, {full_rank}]")


@dataclass(frozen=True)
class ConvGeometry:
    """Shape and geometry of the original conv: weight (N, C, kh, kw), stride, padding, dilation."""

    in_channels: int  # C
    out_channels: int  # N
    kernel_size: tuple[int, int]  # (kh, kw)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)  # ints, or 'same' / 'valid' as nn.Conv2d accepts
    dilation: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1) -> "ConvGeometry":
        """Normalise nn.Conv2d-style arguments (int or pair) to pairs."""
        check_kernel(kernel_size)
        return cls(in_channels, out_channels, _pair(kernel_size), _pair(stride),
                   padding if isinstance(padding, str) else _pair(padding), _pair(dilation))

    def vertical(self) -> dict:
        """Conv kwargs of the (kh x 1) pass: the row stride / padding / dilation."""
        pad = self.padding if isinstance(self.padding, str) else (self.padding[0], 0)
        return dict(stride=(self.stride[0], 1), padding=pad, dilation=(self.dilation[0], 1))

    def horizontal(self) -> dict:
        """Conv kwargs of the (1 x kw) pass: the column stride / padding / dilation."""
        pad = self.padding if isinstance(self.padding, str) else (0, self.padding[1])
        return dict(stride=(1, self.stride[1]), padding=pad, dilation=(1, self.dilation[1]))


def solve_dtype(device: torch.device) -> torch.dtype:
    """Solvers work in float64 (the problems are small, and it keeps Gram matrices accurate), except
    on devices without float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


@contextmanager
def single_thread(device: torch.device):
    """Run tiny-matrix solver loops on one CPU thread. Threads cannot speed up (M, M) or (P, P)
    ops, and on a busy CPU every multi-threaded LAPACK call waits for a descheduled thread:
    milliseconds instead of microseconds (measured: 8x8 torch.linalg.solve 16 ms on 2 threads
    next to a training run, 30 us on one)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def solve_psd(mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """mat^-1 rhs for a symmetric positive semi-definite ``mat``, with a tiny relative jitter."""
    jitter = 1e-12 * mat.diagonal().mean() * torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device)
    return torch.linalg.solve(mat + jitter, rhs)


def converged(objective: list[float], tol: float) -> bool:
    """The last round lowered the objective by less than tol (relative)."""
    return len(objective) > 1 and objective[-2] - objective[-1] <= tol * abs(objective[-1])


def top_left_singular_vectors(mat: torch.Tensor, k: int) -> torch.Tensor:
    """The k leading left singular vectors of ``mat`` (rows, cols) as columns (all ``rows`` of them
    if k > rows), from the eigendecomposition of the (rows, rows) Gram matrix."""
    return torch.linalg.eigh(mat @ mat.T)[1].flip(1)[:, :k]


class LowRankConv(nn.Module):
    """Base of the low-rank layers. A subclass defines ``scheme``, ``full_rank``,
    ``theoretical_speedup``, ``check_options``, ``fit_filters`` and ``dense_weight`` (and
    ``valid_bases`` when its bases are not one integer).

    ``report`` (dict, filled by ``from_conv``): scheme, bases, rel_error (||W - W_hat||_F / ||W||_F),
    macs_speedup (theoretical, per output pixel), solve_time_s, plus the scheme's own solver info.
    """

    scheme: int | str

    def __init__(self, geometry: ConvGeometry, bases):
        super().__init__()
        self.geometry = geometry
        self.bases = self.valid_bases(geometry, bases, type(self).__name__)
        self.report: dict = {}

    @staticmethod
    def full_rank(geometry: ConvGeometry) -> int:
        """The number of bases that reproduces any kernel of this shape exactly (Tucker-2: the
        pair of ranks)."""
        raise NotImplementedError

    @classmethod
    def valid_bases(cls, geometry: ConvGeometry, bases, name: str = "conv"):
        """``bases`` in normal form; DecompositionError (naming ``name``) if not in [1, full_rank]."""
        check_bases(bases, cls.full_rank(geometry), cls.scheme, name)
        return bases

    @staticmethod
    def theoretical_speedup(geometry: ConvGeometry, bases: int) -> float:
        """Dense MACs / low-rank MACs per output pixel."""
        raise NotImplementedError

    @staticmethod
    def check_options(**solver_options) -> dict:
        """Validate solver options (DecompositionError naming the bad one); return them with defaults."""
        raise NotImplementedError

    def fit_filters(self, weight: torch.Tensor, **solver_options) -> dict:
        """Set the parameters by filter reconstruction of ``weight`` (N, C, kh, kw); return solver info."""
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense kernel (N, C, kh, kw)."""
        raise NotImplementedError

    def final_features(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output is linear in its LAST pass: out[b, :, l] = F @ Z[b, :, l] + bias at
        each of the L output pixels. Returns Z (B, P, L) for input ``x``; data reconstruction fits
        F (N, P) by least squares on it (:meth:`set_final`)."""
        raise NotImplementedError

    def set_final(self, final: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Set the last pass from F (N, P) of :meth:`final_features` (and the bias, if the layer has one)."""
        raise NotImplementedError

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bases, **solver_options) -> "LowRankConv":
        """A layer with ``conv``'s geometry, device and dtype, fitted to its weight; bias copied."""
        check_conv(conv)
        g = ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                            conv.padding, conv.dilation)
        w = conv.weight
        layer = cls(g.in_channels, g.out_channels, g.kernel_size, bases, g.stride, g.padding, g.dilation,
                    bias=conv.bias is not None, device=w.device, dtype=w.dtype)
        start = time.perf_counter()
        info = layer.fit_filters(w.detach(), **solver_options)
        if w.is_cuda:
            torch.cuda.synchronize(w.device)
        solve_time = time.perf_counter() - start
        with torch.no_grad():
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
            dtype = torch.promote_types(w.dtype, torch.float32)
            err = torch.linalg.norm(w.to(dtype) - layer.dense_weight().to(dtype)) / torch.linalg.norm(w.to(dtype))
        layer.report = dict(scheme=cls.scheme, bases=layer.bases, rel_error=float(err),
                            macs_speedup=cls.theoretical_speedup(g, layer.bases), solve_time_s=solve_time, **info)
        return layer

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"scheme={self.scheme}, {g.in_channels}->{g.out_channels}, kernel={g.kernel_size}, "
                f"stride={g.stride}, padding={g.padding}, dilation={g.dilation}, bases={self.bases}, "
                f"macs_speedup={self.theoretical_speedup(g, self.bases):.2f}x")


class PointwiseOutConv(LowRankConv):
    """A low-rank layer whose last pass is ``pointwise_out``, a 1x1 nn.Conv2d R -> N with the bias,
    applied to ``features(x)`` (B, R, H', W') (Tucker-2 and CP)."""

    pointwise_out: nn.Conv2d

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Every pass but the last."""
        raise NotImplementedError

    @property
    def bias(self) -> torch.Tensor | None:
        return self.pointwise_out.bias

    def final_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(2)  # (B, R, L)

    def set_final(self, final: torch.Tensor, bias: torch.Tensor | None) -> None:
        with torch.no_grad():
            self.pointwise_out.weight.copy_(final[:, :, None, None])  # (N, R) -> (N, R, 1, 1)
            if bias is not None:
                self.pointwise_out.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_out(self.features(x))
