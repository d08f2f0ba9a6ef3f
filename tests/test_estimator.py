"""The estimator's logic on a fake clock: each call advances it by a prescribed time, so what it
computes (warm-up, block sizes, paired ratios, stopping) is checked exactly, whatever the machine."""

import random

import pytest

from lrx.measure import estimator as est
from lrx.measure.estimator import Estimator, Ratio, measure


class FakeClock:
    """``timer()`` reads ``now``; each call made by ``call(name)`` advances it by its cost."""

    def __init__(self):
        self.now = 0.0
        self.log: list[str] = []

    def timer(self) -> float:
        return self.now

    def call(self, name: str, cost):
        def run():
            self.log.append(name)
            self.now += cost() if callable(cost) else cost

        return run


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(est, "timer", c.timer)
    return c


def test_steady_sides_stop_at_min_rounds_with_their_exact_ratio(clock):
    calls = {"dense": clock.call("dense", 0.002), "lowrank": clock.call("lowrank", 0.001)}
    e = Estimator(warmup_s=0.01, block_s=0.004, min_rounds=6, max_rounds=50)
    t = measure(calls, {"speedup": lambda r: r["dense"] / r["lowrank"]}, e)
    assert t.rounds == 6 and t.ms == pytest.approx({"dense": 2.0, "lowrank": 1.0})
    s = t.ratios["speedup"]
    assert (s.median, s.q25, s.q75) == pytest.approx((2.0, 2.0, 2.0)) and not s.unstable


def test_warm_up_lasts_its_time_and_the_block_is_sized_from_the_warm_call(clock):
    """A call that is slow at first (oneDNN builds its primitives) and then 1 ms: the warm-up runs
    until 0.2 s have passed, and each block then holds block_s / 1 ms calls."""
    costs = iter([0.015, 0.010] + [0.001] * 10_000)
    calls = {"a": clock.call("a", lambda: next(costs))}
    e = Estimator(warmup_s=0.2, block_s=0.005, min_rounds=2, max_rounds=2)
    t = measure(calls, None, e)
    warm = 2 + (200 - 25)  # ms: two slow calls, then 1 ms calls until 0.2 s
    assert len(clock.log) == warm + 2 * 5 and t.ms["a"] == pytest.approx(1.0)


def test_each_round_times_every_side_once_in_a_fresh_random_order(clock):
    calls = {k: clock.call(k, 0.001) for k in "abcd"}
    e = Estimator(warmup_s=0.0, block_s=0.0005, min_rounds=8, max_rounds=8)
    measure(calls, None, e)
    rounds = [tuple(clock.log[i : i + 4]) for i in range(8, len(clock.log), 4)]  # after 2 warm-up calls each
    assert len(rounds) == 8 and all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1


def test_a_noisy_ratio_runs_to_the_round_cap_and_is_flagged_unstable(clock):
    noise = random.Random(1)
    calls = {
        "dense": clock.call("dense", lambda: 0.002 * noise.uniform(0.5, 1.5)),
        "lowrank": clock.call("lowrank", 0.001),
    }
    e = Estimator(warmup_s=0.0, block_s=0.0001, min_rounds=3, max_rounds=12, max_s=100.0)
    t = measure(calls, {"speedup": lambda r: r["dense"] / r["lowrank"]}, e)
    assert t.rounds == 12 and t.ratios["speedup"].unstable


def test_the_time_cap_stops_after_min_rounds(clock):
    calls = {"slow": clock.call("slow", 1.0)}
    t = measure(calls, None, Estimator(warmup_s=0.0, block_s=0.01, min_rounds=3, max_rounds=50, max_s=0.0))
    assert t.rounds == 3


def test_ratio_record_names_its_keys():
    r = Ratio.of([1.0, 2.0, 3.0, 4.0, 5.0], rel_iqr=0.1)
    assert r.record("conv_") == {"conv_speedup": 3.0, "conv_speedup_iqr": [2.0, 4.0], "conv_unstable": True}
    assert Estimator.of({"min_rounds": 4}) == Estimator(min_rounds=4)
