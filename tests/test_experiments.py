"""Every shipped experiment file loads, says what it is for, and shows the command that runs it."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pandas as pd
import pytest

from itstudy.config import load_study
from itstudy.sweep.trials import expand_grid

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


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


# --- every shipped study's debug command runs --------------------------------------------------

RUNNABLE = [path for path in EXPERIMENTS if path.name.startswith("paper-") or path.name == "diversity.yaml"]


def debug_overrides(path: Path) -> list[str]:
    """The overrides of the debug command in `path`'s header (the words after the file name)."""
    header = _header(path).replace("\\\n", " ")
    line = next(line for line in header.splitlines() if f"itstudy run experiments/{path.name} debug=true" in line)
    return shlex.split(line)[shlex.split(line).index(f"experiments/{path.name}") + 1 :]


def test_every_paper_study_and_the_diversity_study_has_a_debug_command():
    assert {path.name for path in RUNNABLE} >= {"diversity.yaml", "paper-low-resource.yaml", "paper-data-size.yaml"}
    for path in RUNNABLE:
        overrides = debug_overrides(path)
        assert "debug=true" in overrides and "resources.gpus_per_worker=0" in overrides
        assert "Debug run on the shared SuperNI sample and the CPU" in _header(path)


@pytest.mark.ray
def test_each_debug_command_runs_on_the_sample_with_dev_metrics_on_every_trial(superni_dir, t5_tokenizer_dir):
    # One Ray for all files: starting it costs more than a study's debug run.
    from itstudy.paths import itstudy_home
    from itstudy.sweep import run_sweep
    from itstudy.sweep.cluster import ray_session

    seconds, missing = {}, {}
    uri = f"sqlite:///{itstudy_home() / 'mlflow.db'}"
    with ray_session(uri):
        for path in RUNNABLE:
            started = time.perf_counter()
            result = run_sweep(load_study(path, debug_overrides(path)), path)
            seconds[path.name] = round(time.perf_counter() - started, 1)
            assert [o.status for o in result.outcomes] == ["FINISHED"] * len(result.outcomes), path.name
            missing[path.name] = [o.key for o in result.outcomes if "dev_exact_match" not in o.metrics]
    print("debug run seconds:", seconds)
    assert missing == {path.name: [] for path in RUNNABLE}
    # The diversity study's curve is in its report.
    from dashboards.report import build_report

    html = build_report("diversity", tracking_uri=uri).read_text()
    assert 'id="fig-diversity"' in html and 'class="category-table"' in html
    # Table 2's layout from its debug run: zero-shot (untuned), original and simplified for the model.
    table2 = build_report("paper-table2", tracking_uri=uri)
    rows = pd.read_csv(table2.parent / "table2.csv")
    assert list(rows["row"]) == ["zero-shot", "original", "simplified"] and set(rows["model"]) == {"scratch/llama-tiny"}
    assert rows["parameters"].gt(0).all() and 'class="table2"' in table2.read_text()
