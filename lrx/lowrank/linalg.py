"""Small linear-algebra helpers of the solvers: their dtype, one thread for tiny matrices, a PSD
solve, a convergence test and leading singular vectors."""

from contextlib import contextmanager

import torch


def solve_dtype(device: torch.device) -> torch.dtype:
    """Solvers work in float64 (the problems are small, and it keeps Gram matrices accurate), except
    on devices without float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


@contextmanager
def single_thread(device: torch.device):
    """Run tiny-matrix solver loops on one CPU thread. Threads cannot speed up (M, M) or (P, P)
    ops, and on a busy CPU every multi-threaded LAPACK call waits for a descheduled thread:
    milliseconds instead of microseconds (docs/SOLVERS.md)."""
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
