"""Other work on the machine: sampling it, and waiting for it to stop before timing."""

import itertools
import logging
import os

import pytest

from lrx.measure import load


def test_busy_cores_sees_a_spinning_process_and_not_its_own_sleep():
    quiet = load.busy_cores(0.3)
    with load.busy_neighbours(1):
        busy = load.busy_cores(0.5)
    assert 0 <= quiet <= os.cpu_count() and busy >= 0.7


def test_a_meter_counts_other_processes_but_not_this_ones_own_work():
    meter = load.Meter().start()
    sum(i * i for i in range(3_000_000))  # this process keeps a core busy
    own = meter.busy()
    with load.busy_neighbours(1):
        meter = load.Meter().start()
        sum(i * i for i in range(3_000_000))
        others = meter.busy()
    assert own < 0.5 and others >= 0.5


@pytest.mark.parametrize(
    "samples, quiet, warned",
    [([0.1], True, False), ([1.5, 1.2, 0.2], True, False), ([1.5] * 100, False, True)],
)
def test_wait_for_quiet_waits_up_to_its_cap_and_says_when_the_machine_stays_busy(
    monkeypatch, caplog, samples, quiet, warned
):
    it = itertools.chain(samples, itertools.repeat(samples[-1]))  # a busy machine stays busy
    monkeypatch.setattr(load, "busy_cores", lambda seconds=0.5: next(it))
    with caplog.at_level(logging.WARNING, logger="lrx.measure.load"):
        out = load.wait_for_quiet(0.05 if warned else 60, "the test's layers")
    assert out["quiet"] is quiet and ("other work keeps 1.5" in caplog.text) == warned
    if quiet:
        assert out["busy_cores"] == samples  # sampled until the first quiet sample, no longer
