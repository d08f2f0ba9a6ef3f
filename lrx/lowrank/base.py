"""The base class of every low-rank layer, which builds a layer from a conv (``from_conv``) and
reports on it, and the registry of methods its subclasses join."""

import time

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lrx.lowrank.checks import DecompositionError, check_bases, check_conv, round_rank
from lrx.lowrank.geometry import ConvGeometry, dense_macs

# The registry: every LowRankConv subclass declared with ``method=`` is a decomposition method,
# found by that name (or an alias) by surgery, the planner, the config checks and the reports.
METHODS: dict[str, type["LowRankConv"]] = {}
ALIASES: dict = {}
# Theoretical speed-ups whose ranks the planner tries by default: 1.25x to 16x in steps of about
# 15%, so that each layer's rank can land close to what a target needs.
PLANNER_TARGETS = (
    1.25,
    1.4,
    1.6,
    1.8,
    2.0,
    2.25,
    2.5,
    2.8,
    3.2,
    3.6,
    4.0,
    4.5,
    5.0,
    5.7,
    6.5,
    7.5,
    8.5,
    10.0,
    12.0,
    14.0,
    16.0,
)


def method_class(name) -> type["LowRankConv"]:
    """The registered method called ``name`` (or an alias: 1 and 2 for the paper's schemes)."""
    valid_type = isinstance(name, str) or (isinstance(name, int) and not isinstance(name, bool))
    key = ALIASES.get(name, name) if valid_type else None
    if key not in METHODS:
        raise DecompositionError(
            f"method {name!r} is unknown; valid: {', '.join(METHODS)} (aliases: {', '.join(f'{a!r}' for a in ALIASES)})"
        )
    return METHODS[key]


class LowRankConv(nn.Module):
    """Base of the low-rank layers, and the registry of methods.

    A method is a subclass declared as ``class X(LowRankConv, method="name", label="s1", letter="M",
    aliases=(1,))``. It defines ``build`` (its passes; the nn.Conv2d-like constructor is shared),
    ``full_rank``, ``macs`` (its cost per output pixel for a rank), ``fit_filters`` and
    ``dense_weight`` (``final_features``/``set_final`` for data reconstruction), and where they
    differ from the defaults: ``options`` (its solver options and their defaults) with
    ``_check_options``, ``valid_bases`` (when its bases are not one integer), ``bases_for_speedup``
    and ``planner_ranks``.

    ``report`` (dict, filled by ``from_conv``): method, its label and letter, bases, rel_error
    (||W - W_hat||_F / ||W||_F), macs_speedup (theoretical, per output pixel), solve_time_s, plus
    the method's own solver info.
    """

    method: str  # the registry name
    label: str  # short, for run names and reports
    letter: str  # what the method calls its bases (M, K, R)
    order: int  # where listings show the method (then by name)
    options: dict = {}  # solver options (keywords of from_conv) and their defaults
    planner_targets: tuple = PLANNER_TARGETS
    # A layer whose forward pass can run in more than one way (the same function, different speed)
    # names its default here and its alternatives in :meth:`executions`; ``strategy`` is the one its
    # forward uses. Fitting always uses the default: the executions agree only to float rounding.
    default_strategy: str | None = None

    def __init_subclass__(
        cls,
        method: str | None = None,
        label: str | None = None,
        letter: str = "R",
        aliases: tuple = (),
        order: int = 100,
        **kwargs,
    ):
        super().__init_subclass__(**kwargs)
        if method is None:  # a shared base such as PointwiseOutConv, not a method
            return
        taken = [n for n in (method, *aliases) if n in METHODS or n in ALIASES]
        if taken:
            raise ValueError(f"{cls.__name__}: the method name or alias {taken[0]!r} is already registered")
        cls.method, cls.label, cls.letter, cls.order = method, label or method, letter, order
        METHODS[method] = cls
        ranked = sorted(METHODS.items(), key=lambda item: (item[1].order, item[0]))
        METHODS.clear()
        METHODS.update(ranked)
        ALIASES.update({alias: method for alias in aliases})

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        bases,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        """nn.Conv2d's arguments plus the bases; the method's passes come from :meth:`build`."""
        super().__init__()
        self.geometry = ConvGeometry.of(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.bases = self.valid_bases(self.geometry, bases, type(self).__name__)
        self.report: dict = {}
        self.build(self.geometry, self.bases, bias, {"device": device, "dtype": dtype})

    def build(self, g: ConvGeometry, bases, bias: bool, factory: dict) -> None:
        """Create the layer's passes (and parameters) for geometry ``g`` and the checked ``bases``;
        ``factory`` holds the device and dtype, ``bias`` whether the last pass has one."""
        raise NotImplementedError

    @staticmethod
    def full_rank(geometry: ConvGeometry) -> int:
        """The number of bases that reproduces any kernel of this shape exactly (Tucker-2: the
        pair of ranks)."""
        raise NotImplementedError

    @classmethod
    def macs(cls, geometry: ConvGeometry, bases) -> float:
        """MACs per output pixel at ``bases`` (every intermediate map counted at output resolution)."""
        raise NotImplementedError

    @classmethod
    def theoretical_speedup(cls, geometry: ConvGeometry, bases) -> float:
        """Dense MACs / low-rank MACs per output pixel."""
        return dense_macs(geometry) / cls.macs(geometry, bases)

    @classmethod
    def valid_bases(cls, geometry: ConvGeometry, bases, name: str = "conv"):
        """``bases`` in normal form; DecompositionError (naming ``name``) if not in [1, full_rank]."""
        check_bases(bases, cls.full_rank(geometry), cls.method, name)
        return bases

    @classmethod
    def round_bases(cls, geometry: ConvGeometry, bases, multiple: int, name: str = "conv"):
        """Valid ``bases`` rounded to the nearest multiple of ``multiple`` (hardware-friendly
        channel counts), within [multiple, the full rank rounded down]."""
        return round_rank(bases, multiple, cls.full_rank(geometry), name)

    @classmethod
    def bases_for_speedup(cls, geometry: ConvGeometry, target: float):
        """The largest rank whose theoretical speed-up is >= ``target`` (1 if none is): the cost
        grows with the rank, so a bisection over [1, full_rank]."""
        lo, hi = 1, cls.full_rank(geometry)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cls.theoretical_speedup(geometry, mid) >= target else (lo, mid - 1)
        return lo

    @classmethod
    def planner_ranks(cls, geometry: ConvGeometry, speedups=None) -> list:
        """The ranks the planner tries: those of ``speedups`` (default ``planner_targets``), below
        the full rank."""
        full = cls.full_rank(geometry)
        targets = speedups or cls.planner_targets
        return sorted({b for b in (cls.bases_for_speedup(geometry, t) for t in targets) if b != full})

    @classmethod
    def check_options(cls, options: dict | None = None, names: dict | None = None) -> dict:
        """``options`` (solver keywords) checked and merged with the defaults. ``names`` maps a
        keyword to what the user calls it (a config key) for the error messages."""
        options = dict(options or {})
        name = lambda k: (names or {}).get(k, k)
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            raise DecompositionError(
                f"{', '.join(map(name, unknown))}: not an option of method {cls.method!r}; its options: "
                f"{', '.join(map(name, sorted(cls.options))) or 'none'}"
            )
        merged = {**cls.options, **options}
        cls._check_options(merged, name)
        return merged

    @classmethod
    def _check_options(cls, options: dict, name) -> None:
        """Range and type checks of a method's merged options (``name(keyword)`` for messages)."""

    @classmethod
    def unused_options(cls, options: dict) -> dict[str, str]:
        """The options (merged) that have no effect given the others, each with the reason; an
        option at its default does not count."""
        return {}

    @classmethod
    def bases_for_weight(cls, weight: torch.Tensor, bases):
        """The bases to fit ``weight`` with (a method that chooses ranks from the weight, such as
        Tucker-2's 'vbmf', does it here)."""
        return bases

    def fit_filters(self, weight: torch.Tensor, **options) -> dict:
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

    def fold_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        """Fold ``bn`` (eval mode, applied to this layer's output) into the last pass: with
        bn(y) = s * y + t per output channel and y = F z + b, the layer computes
        (s F) z + (s b + t); the layer gains a bias where it had none (:mod:`lrx.compress.fold`)."""
        raise NotImplementedError

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bases, **options) -> "LowRankConv":
        """A layer with ``conv``'s geometry, device and dtype, fitted to its weight; bias copied."""
        check_conv(conv)
        options = cls.check_options(options)
        g = ConvGeometry.of(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation
        )
        w = conv.weight
        bases = cls.bases_for_weight(w.detach(), cls.valid_bases(g, bases))
        layer = cls(
            g.in_channels,
            g.out_channels,
            g.kernel_size,
            bases,
            g.stride,
            g.padding,
            g.dilation,
            bias=conv.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        start = time.perf_counter()
        info = layer.fit_filters(w.detach(), **options)
        if w.is_cuda:
            torch.cuda.synchronize(w.device)
        solve_time = time.perf_counter() - start
        with torch.no_grad():
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
            dtype = torch.promote_types(w.dtype, torch.float32)
            err = torch.linalg.norm(w.to(dtype) - layer.dense_weight().to(dtype)) / torch.linalg.norm(w.to(dtype))
        layer.report = dict(
            method=cls.method,
            label=cls.label,
            letter=cls.letter,
            bases=layer.bases,
            rel_error=float(err),
            macs_speedup=cls.theoretical_speedup(g, layer.bases),
            solve_time_s=solve_time,
            **info,
        )
        return layer

    def executions(self, x: torch.Tensor) -> dict:
        """``{strategy: call}``: every way this layer can run on input ``x`` (B, C, H, W), each a
        call without arguments computing the same function (or the part of it that differs);
        empty for a layer with a single execution. :mod:`lrx.compress.execution` times them."""
        return {}

    def spec(self) -> dict:
        """What rebuilds this layer (its weights aside): the method, nn.Conv2d's geometry, the
        bases, whether it has a bias and the execution it runs (:mod:`lrx.results.saved`)."""
        g = self.geometry
        return {
            "method": self.method,
            "in_channels": g.in_channels,
            "out_channels": g.out_channels,
            "kernel_size": list(g.kernel_size),
            "stride": list(g.stride),
            "padding": g.padding if isinstance(g.padding, str) else list(g.padding),
            "dilation": list(g.dilation),
            "bases": list(self.bases) if isinstance(self.bases, (list, tuple)) else self.bases,
            "bias": self.bias is not None,
            "strategy": getattr(self, "strategy", None),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> "LowRankConv":
        """An unfitted layer as :meth:`spec` describes it (load its weights after)."""
        layer = method_class(spec["method"])(
            spec["in_channels"],
            spec["out_channels"],
            spec["kernel_size"],
            spec["bases"],
            spec["stride"],
            spec["padding"],
            spec["dilation"],
            bias=spec["bias"],
        )
        if spec["strategy"] is not None:
            layer.strategy = spec["strategy"]
        return layer

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"method={self.method}, {g.in_channels}->{g.out_channels}, kernel={g.kernel_size}, "
            f"stride={g.stride}, padding={g.padding}, dilation={g.dilation}, bases={self.bases}, "
            f"macs_speedup={self.theoretical_speedup(g, self.bases):.2f}x"
        )


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

    def fold_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        self.pointwise_out = fuse_conv_bn_eval(self.pointwise_out.eval(), bn.eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_out(self.features(x))
