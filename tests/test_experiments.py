"""Every shipped experiment file loads, says what it is for, and shows the command that runs it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from itstudy.config import load_study
from itstudy.sweep.trials import expand_grid

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def _header(path: Path) -> str:
    lines = path.read_text().splitlines()
    comments = []
    for line in lines:
        if not line.startswith("#"):
            break
        comments.append(line.lstrip("# ").rstrip())
    return "\n".join(comments)


def test_the_shipped_studies_are_there():
    names = {path.name for path in EXPERIMENTS}
    assert {"demo.yaml", "paper-definition-ablation.yaml", "paper-example-ablation.yaml"} <= names
    assert {"paper-data-size.yaml", "paper-low-resource.yaml"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[path.name for path in EXPERIMENTS])
def test_experiment_file_loads_and_its_header_says_what_and_how(path):
    study = load_study(path)
    header = _header(path)
    assert len(header.splitlines()) >= 3, f"{path.name}: the file must open with a comment saying what it is for"
    command = rf"(itstudy (run|train)|python -m itstudy\.cli (run|train)) experiments/{re.escape(path.name)}"
    assert re.search(command, header), f"{path.name}: the header must show the exact command that runs this file"
    if path.name.startswith("paper-"):
        assert "Reproduces Kung & Peng" in header, f"{path.name}: say which result of the paper it reproduces"
        assert "ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml" in header
    trials = expand_grid(study)
    stated = re.search(r"Trials: .*?= (\d+) training runs", header)
    if stated:
        assert len(trials) == int(stated.group(1)), f"{path.name}: the header's trial count is stale"
    # The debug smoke mode of every file keeps every trial distinct (it caps steps and sizes only).
    smoke = expand_grid(load_study(path, ["debug=true"]))
    assert len({trial.key for trial in smoke}) == len(trials)
    assert all(trial.study.train.max_steps <= 5 for trial in smoke)
