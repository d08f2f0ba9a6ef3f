"""Every ``python -m lrx.train`` command the README shows composes, and passes every check a run
makes before its work (the config schema, then the data, the model, the layers and bases)."""

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import open_dict

from lrx.run import config
from lrx.run.job import prepare
from tests.conftest import DATA_ROOT, REPO, compose_cfg


def readme_commands() -> list[list[str]]:
    """The overrides of each ``python -m lrx.train`` line in the README's bash blocks (``-m``, the
    multirun flag, left out: one job of it is checked)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for i in range(len(words) - 2):
            if words[i : i + 3] == ["python", "-m", "lrx.train"]:
                end = words.index("&&", i) if "&&" in words[i:] else len(words)
                commands.append([w for w in words[i + 3 : end] if w != "-m"])
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_the_quickstart_and_the_users_command():
    assert ["experiment=quickstart", "data.root=../shared/data"] in COMMANDS
    assert ["model=alexnet", "decomp.bases=8"] in COMMANDS


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
