"""Every ``python -m lrx.train`` command the README shows composes, and passes every check a run
makes before its work (the config schema, then the data, the model, the layers and bases); every
figure it quotes is in the files of the committed run it names; the README and docs/GUIDE.md list
every option of a group, and every section the docs cite exists."""

import json
import re
import shlex
from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import open_dict

from lrx.run import config, schema
from lrx.run.job import prepare
from tests.conftest import DATA_ROOT, REPO, compose_cfg


def readme_commands() -> list[list[str]]:
    """The overrides of each ``python -m lrx.train`` line in the README's bash blocks (``-m``, the
    multirun flag, left out: one job of it is checked)."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for i in range(len(words) - 2):
            if words[i : i + 3] == ["python", "-m", "lrx.train"]:
                end = words.index("&&", i) if "&&" in words[i:] else len(words)
                commands.append([w for w in words[i + 3 : end] if w != "-m"])
    return commands


README = (REPO / "README.md").read_text()
COMMANDS = readme_commands()


def test_the_quickstart_does_what_the_readme_says(tmp_path):
    """Set-up command 1 "loads checkpoints/alexnet_cifar.pt, finds where the dense network runs
    fastest ..., lets the planner choose there per conv the Scheme 2 ranks whose network ...
    **measures** 2.5x, refits the layers to the original outputs on training images, ... deploys
    both to every target this installation serves ... There is no fine-tuning in it"."""
    words = next(w for w in COMMANDS if "experiment=quickstart" in w)  # the set-up's, the first
    c = config.resolved(_cfg(words, tmp_path))
    command_1 = " ".join(README.split())  # the paragraph's words, whatever the line breaks
    ckpt = re.search(r"Command 1 loads `([^`]+)`", command_1).group(1)
    assert Path(c["baseline"]["ckpt"]) == REPO / ckpt and (REPO / ckpt).is_file()
    speedup = float(re.search(r"timed whole against the dense one, \*\*measures\*\* ([\d.]+)x", command_1).group(1))
    plan = c["decomp"]["method"], c["planner"]["metric"], c["planner"]["target_speedup"], c["planner"]["methods"]
    assert plan == ("plan", "latency", speedup, ["scheme2"]) and c["planner"]["closed_loop_rounds"] > 0
    assert c["latency"]["runtime"] == c["latency"]["precision"] == "auto"  # where the dense network is fastest
    assert c["data_recon"]["steps"] > 0 and c["deploy"]["targets"] == "auto" and "wandb" in c["logger"]
    assert c.get("finetune") is None and "There is no fine-tuning in it" in command_1


def test_the_pins_the_readme_names_are_pyprojects():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    pins = re.search(r"`pip install` pins `(torch==[^`]+)` and `(torchvision==[^`]+)`", README).groups()
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(pins) <= set(dependencies)


def _cfg(words: list[str], tmp_path: Path):
    words = [w.replace("../shared/data", str(DATA_ROOT)) for w in words]
    cfg = compose_cfg([*words, f"baseline.cache_dir={tmp_path / 'cache'}"], run_dir=tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # as lrx.train receives it
    return cfg


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_a_readme_command_composes_and_its_config_checks(words, tmp_path):
    assert config.check(_cfg(words, tmp_path)) == []  # no key without effect either


@pytest.mark.slow
@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_a_readme_command_passes_every_check_before_the_work(words, tmp_path, data_root):
    job = prepare(_cfg(words, tmp_path))
    assert job.net is not None and job.datamodule.train_set is not None


# A figure the README quotes: a decimal number, or a range of two, and its unit. Its kind says which
# values of a run's files can be its source: a speed-up (x), an acc@1 (%), a time (ms), or a change
# of acc@1 in points (signed, or followed by "point").
FIGURE = re.compile(r"(?<![\w.])([-+]?)(\d+\.\d+)(?:-(\d+\.\d+))?(x\b|%| ms\b| points?\b)?")
SOURCES = re.compile(r"<!-- sources: ([^>]*?) -->")


def claims(text: str) -> list[tuple[list[str], list[tuple[str, str, float, int]]]]:
    """``(source run directories, figures)`` of each claim in ``text``'s prose (code left out): the
    text of a paragraph up to a ``<!-- sources: DIR [DIR ...] -->`` comment, from the paragraph's
    start or the comment before; text after a paragraph's last comment is a claim without sources.
    A figure is ``(as written, kind, value, decimals)``."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    out = []
    for paragraph in re.split(r"\n\s*\n", prose):
        parts = SOURCES.split(re.sub(r"`[^`]*`", "", paragraph))  # inline code: commands, versions
        for claim, dirs in zip(parts[::2], [*parts[1::2], ""]):
            figures = []
            for m in FIGURE.finditer(claim):
                sign, first, last, unit = m.groups()
                unit = (unit or "").strip().rstrip("s")
                kind = {"x": "x", "%": "%", "ms": "ms", "point": "point"}.get(unit, "point" if sign else "any")
                figures += [(m[0], kind, float(sign + n), len(n.split(".")[1])) for n in filter(None, (first, last))]
            if figures:
                out.append((dirs.split(), figures))
    return out


NOT_QUOTED = {"latency", "candidates", "config"}  # every timed point, the planner's candidates, the settings


def _numbers(node, path=()):
    """``(key path, number)`` of every number in a JSON value, but under :data:`NOT_QUOTED`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in NOT_QUOTED:
                yield from _numbers(value, (*path, str(key)))
    elif isinstance(node, list):
        for value in node:
            yield from _numbers(value, path)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, float(node)


def source_values(run_dir: Path) -> dict[str, list[float]]:
    """Per kind, the values a figure can come from in a run directory's files (its results.json and
    the re-timings beside it): speed-ups (keys naming a speed-up, the closed loop's measurements),
    acc@1, times in ms, and every acc@1 less a reference one (the float32 baseline's, the best
    dense's)."""
    values: dict[str, list[float]] = {"x": [], "%": [], "ms": [], "any": []}
    accuracies, references = [], []
    for path in sorted(run_dir.glob("*.json")):
        for keys, value in _numbers(json.loads(path.read_text())):
            values["any"].append(value)
            if any("speedup" in k for k in keys) or keys[-1] in ("measured", "predicted"):
                values["x"].append(value)
            if keys[-1] == "ms" or keys[-1].endswith("_ms") or "ms" in keys or "latency_ms" in keys:
                values["ms"].append(value)
            if "acc1" in keys[-1]:
                values["%"].append(value)
                reference = keys == ("baseline", "acc1") or keys[-1] in ("reference_acc1", "dense_acc1")
                (references if reference else accuracies).append(value)
    values["point"] = [a - r for a in accuracies for r in references]
    return values


def unsourced(text: str) -> list[str]:
    """The figures of ``text`` that no file of the run directories named after them holds, as
    rounded there (``1.30x``: a value within 0.005 of 1.30); a claim without sources, or naming a
    directory without a results.json, has every figure unsourced."""
    missing = []
    for dirs, figures in claims(text):
        runs = [REPO / d for d in dirs]
        if not runs or not all((run / "results.json").is_file() for run in runs):
            missing += [f"{written} (no run named)" for written, *_ in figures]
            continue
        pools = [source_values(run) for run in runs]
        for written, kind, value, decimals in figures:
            if not any(abs(v - value) <= 0.5 * 10**-decimals + 1e-9 for pool in pools for v in pool[kind]):
                missing.append(f"{written} (not in {', '.join(dirs)})")
    return missing


def test_every_figure_the_readme_quotes_is_in_the_committed_run_it_names():
    assert sum(len(figures) for _, figures in claims(README)) > 0
    assert unsourced(README) == []


def test_a_figure_its_run_does_not_hold_or_without_a_run_is_unsourced():
    run = "results/runs/issue36/resnet20_mix_1.35x"
    text = f"1.30x at 90.52% (-1.10 points), 1.40x, 92.5% <!-- sources: {run} --> then 2.27x.\n\nAnd 9.9 ms."
    assert [f for _, figures in claims(text) for f, *_ in figures] == [
        "1.30x",
        "90.52%",
        "-1.10 points",
        "1.40x",
        "92.5%",
        "2.27x",
        "9.9 ms",
    ]
    assert unsourced(text) == [
        f"1.40x (not in {run})",
        f"92.5% (not in {run})",
        "2.27x (no run named)",
        "9.9 ms (no run named)",
    ]


GUIDE = (REPO / "docs" / "GUIDE.md").read_text()
DOCS = {path.name: path.read_text() for path in [REPO / "README.md", *(REPO / "docs").glob("*.md")]}


def _options(group: str) -> set[str]:
    return {p.stem for p in (REPO / "conf" / group).glob("*.yaml")}


@pytest.mark.parametrize("group", ["data", "model", "experiment"])
def test_the_guide_and_the_readme_list_every_option_of_the_group(group):
    guide = re.search(rf"`{group}/` \(([^;)]*)", GUIDE).group(1)  # docs/GUIDE.md, Configuration
    readme = re.search(rf"^\| `{group}` \| ([^|]*)\|", README, flags=re.M).group(1)  # the README's table
    assert set(re.findall(r"`(\w+)`", guide)) == set(re.findall(r"`(\w+)`", readme)) == _options(group)


@pytest.mark.parametrize("group, node", [("latency", schema.Latency), ("deploy", schema.Deploy)])
def test_the_guide_lists_every_key_of_the_group(group, node):
    listed = re.search(rf"`{group}\.{{([\w,]+)}}`", GUIDE).group(1).split(",")
    assert sorted(listed) == sorted(f.name for f in fields(node))


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_section_a_doc_cites_exists(doc):
    cited = re.findall(r"\b(DESIGN|RESULTS|LOG)\.md\)?,? sections? (\d+)", DOCS[doc])  # "DESIGN.md, section 3"
    for name, number in cited:
        assert re.search(rf"^## {number}\. ", DOCS[f"{name}.md"], flags=re.M), f"{doc} cites {name}.md section {number}"


def test_no_paragraph_of_the_guide_starts_mid_sentence():
    prose = re.sub(r"```.*?```", "", GUIDE, flags=re.S)
    starts = [p.strip() for p in re.split(r"\n\s*\n", prose) if p.strip()]
    assert [p[:40] for p in starts if p[0].islower()] == []


def test_ci_runs_the_readmes_install_and_test_commands():
    ci = (REPO / ".ci" / "run").read_text()
    setup = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    install = re.search(r"^(pip install [^&\n]+?)\s*&&", setup, flags=re.M).group(1)
    tests = re.search(r"(python -m pytest[^\n]*)", setup).group(1)
    lint = re.search(r"^(ruff check [^\n]+?)\s*&&\s*LRX_DATA_ROOT", setup, flags=re.M).group(1)
    assert all(line in ci.splitlines() for line in (install, tests, lint))
