"""The package's shape (lrx/__init__.py): packages by concern with one-way imports, no import cycle
between modules, lrx.lowrank on its own, and the report without torch. Imports are read from the
source (function-local ones included), so an import added anywhere is seen."""

import ast
import json
import re
import shutil
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import lrx
from tests.conftest import REPO, run_train
from tests.helpers.data import smoke_args
from tests.helpers.timing import QUICK_OVERRIDES

# Lowest first: a module may import its own package and the packages of lower levels, nothing else.
LAYERS = [
    ("lrx.io", "lrx.modes"),
    ("lrx.lowrank",),
    ("lrx.models", "lrx.data"),
    ("lrx.runtime",),
    ("lrx.measure",),
    ("lrx.compress",),
    ("lrx.deploy",),
    ("lrx.results",),
    ("lrx.run",),
    ("lrx.report", "lrx.retime", "lrx.train", "lrx.export"),  # the report, re-timing, the entry shims of lrx.run
]
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def lrx_modules() -> dict[str, tuple[Path, bool]]:
    """Every module of lrx: ``{dotted name: (file, whether it is a package's __init__)}``."""
    found = {}
    for path in sorted((REPO / "lrx").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imports_in(source: str, name: str, is_package: bool, known) -> set[str]:
    """The lrx modules that the module ``name`` with this source imports, anywhere in it:
    ``from lrx.a import b`` names ``lrx.a.b`` if that is a module (in ``known``), else ``lrx.a``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the module's own package upward
                package = name.split(".") if is_package else name.split(".")[:-1]
                module = ".".join(package[: len(package) - node.level + 1] + ([module] if module else []))
            found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names}
    return {m for m in found if m == "lrx" or m.startswith("lrx.")}


def import_graph() -> dict[str, set[str]]:
    """``{module: the lrx modules it imports}`` over every module of lrx."""
    modules = lrx_modules()
    return {name: imports_in(path.read_text(), name, pkg, modules) for name, (path, pkg) in modules.items()}


def package_of(module: str) -> str | None:
    """The entry of LAYERS that ``module`` belongs to (None for lrx itself)."""
    return ".".join(module.split(".")[:2]) if module != "lrx" else None


def level_of(module: str) -> int:
    package = package_of(module)
    return -1 if package is None else LEVEL[package]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for each import of a module outside a's own package and not below it."""
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if package_of(b) != package_of(a) and level_of(b) >= level_of(a)
    )


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between modules (its modules in order), or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:
        return e.args[1]
    return None


GRAPH = import_graph()


def test_every_package_has_its_place_in_the_layer_order():
    unplaced = sorted({package_of(m) for m in GRAPH} - set(LEVEL) - {None})
    assert not unplaced, f"add {unplaced} to LAYERS here and to lrx/__init__.py's list"


def test_the_package_docstring_lists_the_same_order():
    listed = re.findall(r"``(lrx\.\w+)``", lrx.__doc__)
    assert listed == [p for packages in LAYERS for p in packages if p not in ("lrx.train", "lrx.export")]


def test_no_module_imports_a_package_above_its_own():
    assert upward_imports(GRAPH) == []


def test_there_is_no_import_cycle_between_modules():
    cycle = cycle_in(GRAPH)
    assert cycle is None, " -> ".join(cycle)


def test_lowrank_imports_nothing_of_lrx_outside_itself():
    outside = [
        f"{a} -> {b}"
        for a, targets in GRAPH.items()
        if package_of(a) == "lrx.lowrank"
        for b in targets
        if package_of(b) != "lrx.lowrank"
    ]
    assert outside == []
    assert GRAPH["lrx"] == set()  # lrx itself, imported before any of its modules, imports nothing


def test_the_checks_catch_upward_imports_and_cycles():
    """The graph is read as written (function-local imports too), and a bad one fails the checks."""
    source = (
        "from lrx.compress import planner\nimport lrx.io\n\ndef f():\n    from lrx.measure.latency import compare\n"
    )
    known = {"lrx.compress", "lrx.compress.planner", "lrx.io", "lrx.lowrank.surgery", "lrx.measure.latency"}
    found = imports_in(source, "lrx.lowrank.base", False, known)
    assert found == {"lrx.compress.planner", "lrx.io", "lrx.measure.latency"}
    relative = imports_in("from . import surgery\nfrom ..io import write_json\n", "lrx.lowrank.base", False, known)
    assert relative == {"lrx.lowrank.surgery", "lrx.io"}
    bad = {
        "lrx.lowrank.base": found,
        "lrx.models.alexnet": {"lrx.data.base"},  # the same level, another package
        "lrx.measure.latency": {"lrx.modes", "lrx.measure.estimator", "lrx.lowrank"},
        "lrx.measure.estimator": {"lrx.measure.latency"},
    }
    assert upward_imports(bad) == [
        "lrx.lowrank.base -> lrx.compress.planner",
        "lrx.lowrank.base -> lrx.measure.latency",
        "lrx.models.alexnet -> lrx.data.base",
    ]
    assert set(cycle_in(bad)) == {"lrx.measure.latency", "lrx.measure.estimator"}


def modules_loaded_by(statement: str) -> set[str]:
    """The top-level packages in sys.modules after a fresh Python runs ``statement``."""
    check = f"{statement}; import sys; print(*sys.modules)"
    res = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return {name.split(".")[0] for name in res.stdout.split()}


def test_the_report_imports_neither_torch_nor_lightning():
    loaded = modules_loaded_by("import lrx.report, lrx.report.cli, lrx.report.rows, lrx.results.files")
    assert "lrx" in loaded and not loaded & {"torch", "lightning"}


@pytest.mark.slow
def test_lowrank_needs_neither_lightning_nor_hydra_nor_wandb():
    loaded = modules_loaded_by("import lrx.lowrank")
    assert "torch" in loaded and not loaded & {"lightning", "hydra", "omegaconf", "wandb"}


# A method written only for the tests below: a dense kh x kw conv C -> K, then a 1x1 conv K -> N,
# fitted by a truncated SVD. PROBE is replaced by the method's name.
NEW_METHOD = '''"""A method that tests/test_architecture.py adds to a copy of lrx."""

import torch
from torch import nn

from lrx.lowrank.base import PointwiseOutConv


class ProbeConv(PointwiseOutConv, method="PROBE", label="PROBE", letter="K", order=99):
    def build(self, g, bases, bias, factory):
        self.conv = nn.Conv2d(g.in_channels, bases, g.kernel_size, bias=False, **g.spatial(), **factory)
        self.pointwise_out = nn.Conv2d(bases, g.out_channels, 1, bias=bias, **factory)

    @staticmethod
    def full_rank(geometry):
        kh, kw = geometry.kernel_size
        return min(geometry.out_channels, geometry.in_channels * kh * kw)

    @classmethod
    def macs(cls, geometry, bases):
        kh, kw = geometry.kernel_size
        return bases * (geometry.in_channels * kh * kw + geometry.out_channels)

    def fit_filters(self, weight):
        u, s, vh = torch.linalg.svd(weight.double().reshape(weight.shape[0], -1), full_matrices=False)
        k = self.bases
        with torch.no_grad():
            self.conv.weight.copy_(vh[:k].reshape(self.conv.weight.shape))
            self.pointwise_out.weight.copy_((u[:, :k] * s[:k])[:, :, None, None])
        return {}

    def dense_weight(self):
        return torch.einsum("nk,kcyx->ncyx", self.pointwise_out.weight[:, :, 0, 0], self.conv.weight)

    def features(self, x):
        return self.conv(x)
'''
NEW_CONFIG = """method: PROBE
layers: ${oc.select:model.default_layers,all}
bases: 8
rank_multiple: 1
"""


@pytest.fixture(scope="module")
def with_new_method(tmp_path_factory) -> tuple[Path, str]:
    """A copy of lrx and conf/ plus one new method module and its conf/decomp file, nothing else:
    ``(the copy's root, the method's name)``. Python run from that root imports the copy."""
    name = "probe_dense"
    root = tmp_path_factory.mktemp("new-method")
    for folder in ("lrx", "conf"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "lrx" / "lowrank" / "methods" / f"{name}.py").write_text(NEW_METHOD.replace("PROBE", name))
    (root / "conf" / "decomp" / f"{name}.yaml").write_text(NEW_CONFIG.replace("PROBE", name))
    return root, name


@pytest.mark.slow
def test_a_new_method_module_is_discovered(with_new_method):
    root, name = with_new_method
    check = "import lrx, lrx.lowrank; print(lrx.__file__); print(*lrx.lowrank.METHODS)"
    res = subprocess.run([sys.executable, "-c", check], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    where, methods = res.stdout.splitlines()
    assert Path(where).is_relative_to(root)  # the copy, not the working tree
    assert methods.split()[-1] == name  # after the built-in ones (order=99)


@pytest.mark.slow
def test_a_new_method_module_and_its_config_run_end_to_end(with_new_method, tiny_root):
    root, name = with_new_method
    args = [*smoke_args(tiny_root), f"decomp={name}", "latency.guard=false", *QUICK_OVERRIDES]
    res = run_train(args, cwd=root, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = (root / "outputs").rglob("results.json")
    results = json.loads(path.read_text())
    assert results["status"] == "complete" and results["config"]["decomp"]["method"] == name
    (layer,) = results["layers"]  # experiment=smoke: conv2
    assert (layer["name"], layer["method"], layer["label"], layer["bases"]) == ("conv2", name, name, 8)
    assert 0 < layer["rel_error"] < 1 and layer["macs_speedup"] > 1 and layer["measured_speedup"]["cpu"] > 0
    assert list(results["stages"]) == ["filter", "data", "finetune"] and "data_recon" in layer
    assert results["final"]["macs"] < results["baseline"]["macs"]
    report = subprocess.run([sys.executable, "-m", "lrx.report", "outputs"], cwd=root, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"| {name} | - | conv2 | 8 |" in (root / "outputs" / "report.md").read_text()  # its label, layer, bases
