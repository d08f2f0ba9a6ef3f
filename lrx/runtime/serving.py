"""How a runtime serves a network on a CPU it may share: its thread count and how its idle threads
wait. Waiting is where a shared CPU hurts: a network of many small operators ends each one at a
barrier, and threads that spin there burn the time slice another process wants, or lose their own.

Each runtime's wait policies (``WAITS``):

- torch (GNU OpenMP, process-wide, read at start-up: set in the environment of a fresh process):
  ``spin`` (OpenMP's default), ``passive`` (``OMP_WAIT_POLICY=PASSIVE``: sleep at once),
  ``short-spin`` (``GOMP_SPINCOUNT=20000``: spin briefly, then sleep);
- onnxruntime (a session option): ``spin`` (its default) or ``passive``
  (``session.intra_op.allow_spinning=0``);
- openvino (a compile property): ``pinned`` (threads bound to cores) or ``unpinned``
  (``ENABLE_CPU_PINNING=NO``), where the default is the plugin's own.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

WAITS: dict[str, dict[str, dict]] = {
    "torch": {"spin": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "short-spin": {"GOMP_SPINCOUNT": "20000"}},
    "onnxruntime": {"spin": {}, "passive": {"session.intra_op.allow_spinning": "0"}},
    "openvino": {"pinned": {"ENABLE_CPU_PINNING": True}, "unpinned": {"ENABLE_CPU_PINNING": False}},
}
DEFAULT_WAIT = {"torch": "spin", "onnxruntime": "spin", "openvino": "pinned"}
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # what torch's wait policies set


@dataclass(frozen=True)
class Serving:
    """A runtime's thread count and wait policy; ``settings`` is what applies it (environment
    variables for torch, session options for ONNX Runtime, compile properties for OpenVINO)."""

    runtime: str
    threads: int
    wait: str
    settings: dict = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, runtime: str, threads: int, wait: str | None = None, key: str = "serving") -> Serving:
        """The setting, checked: a ValueError naming ``key``, the bad value and the valid ones."""
        if runtime not in WAITS:
            raise ValueError(f"{key}: runtime {runtime!r} is unknown; valid: {', '.join(WAITS)}")
        wait = wait or DEFAULT_WAIT[runtime]
        if wait not in WAITS[runtime]:
            raise ValueError(f"{key}: wait {wait!r} is unknown for {runtime}; valid: {', '.join(WAITS[runtime])}")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"{key}: threads={threads!r} is invalid; valid: an integer >= 1")
        return cls(runtime, threads, wait, dict(WAITS[runtime][wait]))

    @property
    def label(self) -> str:
        return f"{self.runtime}, {self.threads} thread{'s' if self.threads > 1 else ''}, {self.wait}"

    def how(self) -> str:
        """How to serve with this setting, in the runtime's own words."""
        if self.runtime == "torch":
            env = " ".join(f"{k}={v}" for k, v in self.settings.items())
            return f"start the process with {env or 'no OpenMP variables'}; torch.set_num_threads({self.threads})"
        if self.runtime == "onnxruntime":
            entries = "".join(f"; options.add_session_config_entry({k!r}, {v!r})" for k, v in self.settings.items())
            return f"options = onnxruntime.SessionOptions(); options.intra_op_num_threads = {self.threads}{entries}"
        properties = {"INFERENCE_NUM_THREADS": self.threads, **self.settings}
        return f"core.compile_model(model, 'CPU', {properties})"

    def env(self) -> dict[str, str]:
        """The environment variables a fresh process needs (torch's OpenMP reads them at start-up)."""
        return dict(self.settings) if self.runtime == "torch" else {}

    def as_dict(self) -> dict:
        return asdict(self)


def choices(runtime: str, max_threads: int) -> list[Serving]:
    """Every setting worth timing for ``runtime`` up to ``max_threads`` threads: one thread (where
    nobody waits for anybody, so its default wait), then each wait policy at every larger count."""
    out = [Serving.of(runtime, 1)]
    for threads in range(2, max_threads + 1):
        out += [Serving.of(runtime, threads, wait) for wait in WAITS[runtime]]
    return out


def openmp_env() -> dict[str, str]:
    """The OpenMP wait variables this process runs under (what its torch timings were taken in)."""
    return {k: os.environ[k] for k in OPENMP_VARIABLES if k in os.environ}
