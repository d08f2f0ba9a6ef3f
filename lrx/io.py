"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Files are created as ``open()`` creates them (mode 0666 less the umask), so that others can
read the results; a file or folder that cannot be written is a :class:`WriteError` naming it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]  # the project: conf/, checkpoints/, outputs/, results/


class WriteError(OSError):
    """A file or folder that cannot be written, named with the reason."""


def _create(path: Path, mode: int = 0o666) -> int:
    """A new file at ``path`` (an error if one exists), its mode less the umask, as ``open()`` does."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _create(tmp)
        try:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
    return path


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed, then create and remove a file in it: a WriteError naming the
    folder now, rather than after the work whose results were to be written there."""
    folder = Path(folder)
    probe = folder / f".write-check.{secrets.token_hex(8)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(_create(probe))
        probe.unlink()
    except OSError as e:
        raise WriteError(f"cannot create a file in {folder}: {e.strerror or e}") from e
    return folder


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (temp file + rename)."""
    return _atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=False), "w")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file + rename)."""
    return _atomic_write(path, lambda f: f.write(text), "w")


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    return _atomic_write(path, lambda f: f.write(data), "wb")


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically (temp file + rename)."""
    import torch  # here: the rest of this module serves torch-free readers (lrx.report)

    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")
