"""pyproject.toml: every package lrx imports is declared (a dependency or an extra), and the test
extra installs every other extra by name, so that their pins live in one place."""

import ast
import re
import sys
from importlib.metadata import packages_distributions

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503): ``hydra_core>=1.3`` -> ``hydra-core``."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


def _imported() -> dict[str, str]:
    """Every top-level module lrx imports, other than the standard library and lrx: {module: a file}."""
    modules = {}
    for path in sorted((REPO / "lrx").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "lrx":
                    modules.setdefault(top, str(path.relative_to(REPO)))
    return modules


def test_every_package_lrx_imports_is_declared():
    declared = {_name(r) for r in PROJECT["dependencies"]}
    declared |= {_name(r) for extra in PROJECT["optional-dependencies"].values() for r in extra}
    distributions = packages_distributions()  # module -> the installed distributions providing it
    imported = _imported()
    assert {"torch", "filelock", "onnxruntime", "openvino"} <= set(imported)
    undeclared = {
        module: where
        for module, where in imported.items()
        if module in distributions and not {_name(d) for d in distributions[module]} & declared
    }
    assert undeclared == {}


def test_the_test_extra_installs_every_other_extra_by_name():
    extras = PROJECT["optional-dependencies"]
    (self_ref,) = [r for r in extras["test"] if _name(r) == "lrx"]
    named = set(re.search(r"\[(.*)\]", self_ref).group(1).split(","))
    assert named == set(extras) - {"test"}
    # no pin of an extra repeated
    assert {_name(r) for r in extras["test"]} == {"lrx", "pytest", "pytest-xdist", "ruff"}
