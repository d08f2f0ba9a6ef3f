"""The registry of decomposition methods (lrx.lowrank.base.METHODS): names and aliases, refusals,
and a method defined here registering itself and being used by surgery like the built-in ones."""

import copy
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrx.compress.data_recon import reconstruct
from lrx.lowrank import METHODS, DecompositionError, LowRankConv, decompose, method_class, validate
from lrx.lowrank.base import ALIASES
from lrx.lowrank.geometry import dense_macs
from lrx.lowrank.methods import discover
from lrx.lowrank.methods.channel_svd import ChannelSVDConv
from lrx.lowrank.methods.cp import CPConv
from lrx.lowrank.methods.scheme1 import Scheme1Conv
from lrx.lowrank.methods.scheme2 import Scheme2Conv
from lrx.lowrank.methods.tucker2 import Tucker2Conv
from tests.helpers.convs import small_model

BUILT_IN = {
    "scheme1": Scheme1Conv,
    "scheme2": Scheme2Conv,
    "tucker2": Tucker2Conv,
    "cp": CPConv,
    "channel_svd": ChannelSVDConv,
}


@contextmanager
def registry_restored():
    """Whatever a block registers is gone after it (the registry is global: other tests must not
    see a method defined here)."""
    methods, aliases = dict(METHODS), dict(ALIASES)
    try:
        yield
    finally:
        METHODS.clear()
        METHODS.update(methods)
        ALIASES.clear()
        ALIASES.update(aliases)


def define_toy(name: str = "toy_dense", aliases: tuple = ("toy",)) -> type[LowRankConv]:
    """A throwaway method: the 'decomposition' of rank 1 that keeps one dense conv, holding the
    kernel times the solver option ``scale``."""

    class ToyDense(LowRankConv, method=name, label="toy", letter="T", aliases=aliases):
        options = {"scale": 1.0}

        def build(self, g, bases, bias, factory):
            self.conv = nn.Conv2d(g.in_channels, g.out_channels, g.kernel_size, bias=bias, **g.spatial(), **factory)

        @property
        def bias(self):
            return self.conv.bias

        @staticmethod
        def full_rank(geometry):
            return 1

        @classmethod
        def macs(cls, geometry, bases):
            return dense_macs(geometry)

        @classmethod
        def _check_options(cls, options, name):
            if not options["scale"] > 0:
                raise DecompositionError(f"{name('scale')}={options['scale']!r}: must be > 0")

        def fit_filters(self, weight, scale):
            with torch.no_grad():
                self.conv.weight.copy_(scale * weight)
            return {"scale": scale}

        def dense_weight(self):
            return self.conv.weight

        def final_features(self, x):
            g = self.geometry
            return F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride)  # (B, C*kh*kw, L)

        def set_final(self, final, bias):
            with torch.no_grad():
                self.conv.weight.copy_(final.reshape(self.conv.weight.shape))
                if bias is not None:
                    self.conv.bias.copy_(bias)

        def forward(self, x):
            return self.conv(x)

    return ToyDense


def test_the_built_in_methods_in_their_order():
    assert list(METHODS)[: len(BUILT_IN)] == list(BUILT_IN)
    assert {name: METHODS[name] for name in BUILT_IN} == BUILT_IN


def test_every_method_is_registered_under_its_own_name():
    for name, cls in METHODS.items():
        assert cls.method == name and method_class(name) is cls
        assert isinstance(cls.label, str) and cls.label and isinstance(cls.letter, str) and cls.letter
    labels = [cls.label for cls in METHODS.values()]
    assert len(set(labels)) == len(labels)  # run names tell the methods apart
    # importing the package discovers every module of lrx/lowrank/methods, each registering its method
    assert {f"lrx.lowrank.methods.{m}" for m in discover()} <= {cls.__module__ for cls in METHODS.values()}
    assert set(ALIASES.values()) <= set(METHODS)


@pytest.mark.parametrize(
    "name, cls",
    [
        (1, Scheme1Conv),
        ("1", Scheme1Conv),
        ("scheme1", Scheme1Conv),
        (2, Scheme2Conv),
        ("2", Scheme2Conv),
        ("scheme2", Scheme2Conv),
        ("tucker2", Tucker2Conv),
        ("cp", CPConv),
        ("channel_svd", ChannelSVDConv),
    ],
)
def test_names_and_aliases_resolve(name, cls):
    assert method_class(name) is cls


@pytest.mark.parametrize("name", ["svd", 3, "Scheme1", "s1", None, 1.0, "", (1,)])
def test_an_unknown_name_lists_the_valid_ones(name):
    with pytest.raises(DecompositionError) as info:
        method_class(name)
    message = str(info.value)
    assert message.startswith(f"method {name!r} is unknown; valid: {', '.join(METHODS)}")
    assert all(repr(alias) in message for alias in ALIASES)


@pytest.mark.parametrize("name", [["scheme1"], {"method": "cp"}])
def test_an_unhashable_name_is_a_decomposition_error(name):
    with pytest.raises(DecompositionError, match=r"is unknown; valid: scheme1"):
        method_class(name)


def test_a_bool_is_not_a_method():
    with pytest.raises(DecompositionError, match="method True is unknown"):
        method_class(True)


def test_a_name_registered_twice_is_refused():
    with registry_restored():
        with pytest.raises(ValueError, match=r"name or alias 'scheme1' is already registered"):
            define_toy("scheme1", aliases=())
        toy = define_toy()
        with pytest.raises(ValueError, match=r"ToyDense: the method name or alias 'toy_dense' is already registered"):
            define_toy()
        assert METHODS["scheme1"] is Scheme1Conv and METHODS["toy_dense"] is toy
    assert "toy_dense" not in METHODS


@pytest.mark.parametrize(
    "name, aliases, taken, owner",
    [("toy_dense", (1,), 1, Scheme1Conv), ("toy_dense", ("cp",), "cp", CPConv), ("2", (), "2", Scheme2Conv)],
)
def test_a_name_or_alias_already_taken_is_refused(name, aliases, taken, owner):
    with registry_restored():
        with pytest.raises(ValueError):
            define_toy(name, aliases)
        assert method_class(taken) is owner


def test_a_subclass_without_a_name_is_not_a_method():
    with registry_restored():

        class Faster(Scheme2Conv):
            pass

        assert Faster.method == "scheme2" and METHODS["scheme2"] is Scheme2Conv
        assert Faster not in METHODS.values()


def test_a_new_method_is_found_and_used_by_surgery():
    torch.manual_seed(0)
    with registry_restored():
        toy = define_toy()
        assert method_class("toy_dense") is toy and method_class("toy") is toy
        assert (toy.method, toy.label, toy.letter) == ("toy_dense", "toy", "T")
        model = small_model().eval()
        x = torch.randn(2, 3, 8, 8)
        before = model(x).detach()
        records = decompose(model, "all", "toy", 1)
        assert isinstance(model.conv1, toy) and isinstance(model.conv2, toy)
        torch.testing.assert_close(model(x), before)
        for r in records:
            assert (r["method"], r["bases"], r["scale"], r["macs_speedup"]) == ("toy_dense", 1, 1.0, 1.0)
            assert r["rel_error"] == 0.0
        # its options go to it, and are checked by it
        model = small_model().eval()
        before = model(x).detach()
        (r,) = decompose(model, "conv2", "toy_dense", 1, scale=2.0)
        assert r["scale"] == 2.0 and r["rel_error"] == pytest.approx(1.0)
        torch.testing.assert_close(model(x), 2 * before)  # conv2 is the last layer and has no bias
        for options, match in (
            ({"scale": -1.0}, r"scale=-1.0: must be > 0"),
            (
                {"lam_start": 0.1},
                r"lam_start: not an option of method 'toy_dense'; its options: "
                r"scale",
            ),
            ({}, None),
        ):
            if match is None:
                with pytest.raises(
                    DecompositionError,
                    match=r"bases=2 is invalid for method 'toy_dense'; valid: "
                    r"an integer in \[1, 1\]",
                ):
                    validate(small_model(), "all", "toy_dense", 2)
            else:
                with pytest.raises(DecompositionError, match=match):
                    validate(small_model(), "all", "toy_dense", 1, **options)
        # and data reconstruction refits its last pass like any other
        net = small_model().eval()
        approx = copy.deepcopy(net)
        decompose(approx, "conv1", "toy", 1, scale=0.5)
        batches = [torch.randn(8, 3, 8, 8) for _ in range(3)]
        (r,) = reconstruct(net, approx, ["conv1"], batches, steps=0, progress=False)
        assert r["rel_error_before"] > 0.1 and r["rel_error_after"] < 1e-4  # the refit finds W back
    assert "toy_dense" not in METHODS and "toy" not in ALIASES
    with pytest.raises(DecompositionError, match="method 'toy' is unknown"):
        method_class("toy")
