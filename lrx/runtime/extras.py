"""A runtime's packages are an optional extra: one clear error, before any work, without them."""

from __future__ import annotations

import importlib.util


def missing(packages) -> list[str]:
    """The ``packages`` that cannot be imported here."""
    return [p for p in packages if importlib.util.find_spec(p) is None]


def require(missing_packages: list[str], extra: str, key: str) -> None:
    """ImportError naming ``key`` (what needs them), the ``missing_packages`` and the extra to install."""
    if missing_packages:
        raise ImportError(
            f'{key} needs {", ".join(missing_packages)}: install the extra with pip install -e ".[{extra}]"'
        )
