"""Every ``python -m lrx.train`` command the README shows composes, and passes every check a run
makes before its work (the config schema, then the data, the model, the layers and bases); the
README and docs/GUIDE.md list every option of a group, and every section the docs cite exists."""

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
    """Set-up command 1 "loads checkpoints/alexnet_cifar.pt, lets the planner choose per conv the
    method and rank that reach a **measured** 2.5x conv speed-up ..., refits the layers to the
    original outputs on training images, ... deploys both to every target this installation serves"."""
    words = next(w for w in COMMANDS if "experiment=quickstart" in w)  # the set-up's, the first
    c = config.resolved(_cfg(words, tmp_path))
    ckpt = re.search(r"Command 1 loads `([^`]+)`", README).group(1)
    assert Path(c["baseline"]["ckpt"]) == REPO / ckpt and (REPO / ckpt).is_file()
    speedup = float(re.search(r"reach a \*\*measured\*\*\s+([\d.]+)x conv speed-up", README).group(1))
    plan = c["decomp"]["method"], c["planner"]["metric"], c["planner"]["target_speedup"]
    assert plan == ("plan", "latency", speedup)
    assert c["data_recon"]["steps"] > 0 and c["deploy"]["targets"] == "auto" and "wandb" in c["logger"]


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
    cited = re.findall(r"\b(DESIGN|RESULTS)\.md\)?,? sections? (\d+)", DOCS[doc])  # "DESIGN.md, section 3"
    for name, number in cited:
        assert re.search(rf"^## {number}\. ", DOCS[f"{name}.md"], flags=re.M), f"{doc} cites {name}.md section {number}"


def test_no_paragraph_of_the_guide_starts_mid_sentence():
    prose = re.sub(r"```.*?```", "", GUIDE, flags=re.S)
    starts = [p.strip() for p in re.split(r"\n\s*\n", prose) if p.strip()]
    assert [p[:40] for p in starts if p[0].islower()] == []
