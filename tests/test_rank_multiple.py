"""decomp.rank_multiple: explicit bases and the planner's candidates rounded to multiples of N."""

import pytest

from lrx.compress.planner import _grid, plan
from lrx.lowrank import METHODS, ConvGeometry, DecompositionError, decompose, method_class, validate
from lrx.models import AlexNetCIFAR
from tests.conftest import compose_cfg
from tests.helpers.methods import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _ranks(bases) -> list[int]:
    return list(bases) if isinstance(bases, tuple) else [bases]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("multiple", [8, 16])
def test_explicit_bases_are_rounded_to_the_nearest_multiple(method, multiple):
    net = AlexNetCIFAR()
    bases = 20
    if method == "scheme1":  # Scheme 1's full rank on the 3x3 conv3 is kh * kw = 9
        if multiple > 9:
            with pytest.raises(
                DecompositionError, match=rf"'conv3': its full rank 9 holds no multiple of rank_multiple={multiple}"
            ):
                validate(net, ["conv3"], method, 4, multiple)
        else:
            assert validate(net, ["conv3"], method, 4, multiple)[0][2] == 8  # up to the one multiple that fits
        return
    ((_, _, rounded),) = validate(net, ["conv3"], method, bases, multiple)
    assert all(r % multiple == 0 and abs(r - 20) <= multiple / 2 for r in _ranks(rounded))


def test_the_rounded_bases_are_what_is_installed():
    records = decompose(AlexNetCIFAR(), ["conv3", "conv4"], "scheme2", {"conv3": 37, "conv4": 90}, 16)
    assert [r["bases"] for r in records] == [32, 96]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_planner_candidate_is_a_multiple(method):
    conv = AlexNetCIFAR().conv4
    grid = _grid(conv, [method], 8)
    assert grid and all(r % 8 == 0 for _, bases in grid for r in _ranks(bases))
    full = method_class(method).full_rank(ConvGeometry.of(conv.in_channels, conv.out_channels, conv.kernel_size))
    assert all(r <= f for _, bases in grid for r, f in zip(_ranks(bases), _ranks(full)))


def test_a_plan_with_a_rank_multiple_installs_multiples_only():
    net = AlexNetCIFAR()
    layers = ["conv3", "conv4", "conv5"]
    chosen, report = plan(net, layers, 2.0, "macs", methods=["scheme2"], progress=False, rank_multiple=16)
    kept = [c for c in chosen.values() if c.method]
    assert kept and all(c.bases % 16 == 0 for c in kept) and report["predicted_conv_speedup"] >= 2.0


def test_the_config_key_reaches_the_layers(tiny_root, tmp_path):
    from lrx.run.job import prepare

    job = prepare(
        compose_cfg(
            [
                f"data.root={tiny_root}",
                "data.val_size=10",
                "decomp=scheme2",
                "decomp.layers=[conv2,conv3]",
                "decomp.bases=30",
                "decomp.rank_multiple=8",
            ],
            tmp_path,
        )
    )
    layers, bases = job.layers_and_bases()
    assert [b for _, _, b in validate(job.net, layers, "scheme2", bases, job.rank_multiple)] == [32, 32]
