"""Other work on the machine: sampling it, and waiting for it to stop before timing. The machine is
faked (its CPU ticks, this process's CPU time and the clock), so what is computed is checked exactly."""

import itertools
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from lrx.measure import load


class FakeMachine:
    """/proc/stat's busy seconds of all cores, this process's CPU seconds and the clock, advanced by
    :meth:`run` (and by lrx.measure.load's sleeps, while other processes keep ``others`` cores busy)."""

    def __init__(self, monkeypatch):
        self.busy_s, self.own_s, self.now, self.others = 100.0, 10.0, 1000.0, 0.0
        monkeypatch.setattr(load, "_busy_ticks", lambda: (self.busy_s, self.now))
        monkeypatch.setattr(load, "_own_cpu_s", lambda: self.own_s)
        clock = SimpleNamespace(monotonic=lambda: self.now, sleep=lambda seconds: self.run(seconds, self.others))
        monkeypatch.setattr(load, "time", clock)

    def run(self, seconds: float, others: float, own: float = 0.0) -> None:
        """``seconds`` pass while other processes keep ``others`` cores busy and this one ``own``."""
        self.now += seconds
        self.busy_s += (others + own) * seconds
        self.own_s += own * seconds


@pytest.fixture
def machine(monkeypatch):
    return FakeMachine(monkeypatch)


def test_a_meter_counts_other_processes_but_not_this_ones_own_work(machine):
    meter = load.Meter().start()
    machine.run(2.0, others=0.0, own=1.0)  # this process keeps a core busy, alone
    assert meter.busy() == 0.0
    meter = load.Meter().start()
    machine.run(2.0, others=1.5, own=1.0)
    assert meter.busy() == 1.5


def test_a_meter_reads_at_most_every_core_and_never_below_zero(machine):
    meter = load.Meter().start()
    machine.run(1.0, others=os.cpu_count() + 3)
    assert meter.busy() == load.cores()
    meter = load.Meter().start()
    machine.run(1.0, others=0.0, own=1.0)
    machine.own_s += 0.5  # CPU time counted for this process before /proc/stat has it
    assert meter.busy() == 0.0


def test_busy_cores_samples_other_processes_while_this_one_sleeps(machine):
    machine.others = 0.75
    assert load.busy_cores(0.5) == 0.75 and machine.now == 1000.5


def test_without_proc_stat_the_load_is_unknown(machine, monkeypatch):
    monkeypatch.setattr(load, "_busy_ticks", lambda: None)
    assert load.Meter().start().busy() is None
    assert load.wait_for_quiet(60, "anything") == {"busy_cores": [None], "waited_s": 0.5, "quiet": True}


def test_proc_stat_is_read_as_busy_seconds_of_all_cores(monkeypatch, tmp_path):
    """user nice system idle iowait irq softirq steal: everything but idle and iowait is busy."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  300 20 100 5000 80 5 7 0 0 0\ncpu0 150 10 50 2500 40 2 3 0 0 0\n")
    real_open = open
    monkeypatch.setattr(
        load, "open", lambda path, *a: real_open(stat if path == "/proc/stat" else path, *a), raising=False
    )
    busy, _ = load._busy_ticks()
    assert busy == pytest.approx(432 / os.sysconf("SC_CLK_TCK"))
    stat.unlink()
    assert load._busy_ticks() is None


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs /proc/stat (Linux)")
def test_the_real_proc_stat_is_read():
    before, after = load._busy_ticks(), load._busy_ticks()
    assert 0 < before[0] <= after[0] and before[1] <= after[1]


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


def test_timing_conditions_wait_for_quiet_then_keep_the_neighbours_busy_while_inside(machine, monkeypatch):
    """Other work keeps 1.5 cores busy for 2 s: the samples (0.5 s, then 1 s each) see it until it
    stops, and only then do the neighbours start; they spin while inside and are stopped after."""
    started, real_popen, spinners_while_sleeping = [], load.subprocess.Popen, []
    monkeypatch.setattr(load.subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1])
    busy_until = machine.now + 2.0

    def sleep(seconds: float) -> None:
        spinners_while_sleeping.append(len(started))
        machine.run(seconds, others=1.5 if machine.now < busy_until else 0.0)

    monkeypatch.setattr(load.time, "sleep", sleep)
    with load.timing_conditions(60, 1, "the test's layers") as record:
        assert len(started) == 1 and started[0].poll() is None  # spinning while the timing runs
    assert record == {"busy_cores": [1.5, 1.5, 1.5, 0.0], "waited_s": 3.5, "quiet": True, "neighbours": 1}
    assert spinners_while_sleeping == [0, 0, 0, 0, 1]  # four samples, then the neighbours' start-up
    assert started[0].poll() is not None
