"""What the tests need to know about the registered methods beyond the registry itself: the
solver settings that keep them fast, and what makes them exact at full rank. A method not named
here needs nothing (a new method is tested by registering it)."""

import pytest
import torch

from lrx.lowrank import METHODS
from lrx.lowrank.checks import is_int
from lrx.lowrank.methods import cp

NAMES = list(METHODS)  # every registered method, as collected

# Scheme 1's schedule, shortened (the default one is for real layers).
FAST = {"scheme1": dict(lam_steps=3, iters=10, refine_iters=20)}

# Full-rank tolerances (relative kernel error, absolute output error): exact solvers reach float32
# rounding; CP-ALS is iterative and stops on a relative decrease of 1e-4.
EXACT_TOL = (1e-5, 1e-4)
FULL_RANK_TOL = {"cp": (1e-4, 2e-4)}


def fast_options(method: str) -> dict:
    return dict(FAST.get(method, {}))


def exact_at_full_rank(method: str, monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    """Set up ``method``'s solver to be exact at full rank (CP: plain ALS, whose ridge biases the
    fit); returns its (relative kernel error, output atol) tolerances."""
    if method == "cp":
        monkeypatch.setattr(cp, "RIDGE", 0.0)
    return FULL_RANK_TOL.get(method, EXACT_TOL)


def int_rank(cls, geometry) -> bool:
    """Whether ``cls``'s bases are one integer (Tucker-2's are a pair)."""
    return is_int(cls.full_rank(geometry))


@pytest.fixture
def one_thread():
    """The solvers' matrices are tiny: on a CPU shared with other work a multi-threaded LAPACK
    call waits for descheduled threads (a 384x384 eigh: seconds on 2 busy threads, 10 ms on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
