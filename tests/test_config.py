"""The study config is strict: what a user gets wrong is refused at load, in one message naming the
file (or the override) and the dotted field; overrides, grid axes and the debug mode do what they say.

Fast: plain Python, no Ray, no MLflow, no data.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from itstudy.baselines import BASELINES
from itstudy.cli import main
from itstudy.config import BaselineName, ConfigError, at_grid_point, load_study, study_from_dict, with_overrides


@pytest.fixture
def write(tmp_path):
    """Write an experiment file and return its path."""

    def write(text: str | bytes, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    return write


def refusal(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_study(path, overrides)
    return str(caught.value)


# --- unknown keys, wrong types, the message -----------------------------------------------------


def test_unknown_keys_are_refused_naming_the_file_and_the_dotted_field(write):
    path = write("name: s\nbogus: 1\ntrain:\n  learnin_rate: 1.0e-4\ndata:\n  classification: {max_label: 3}\n")
    message = refusal(path)
    assert message.startswith(f"{path}: invalid study spec\n")
    lines = message.splitlines()[1:]
    assert {line.split(":")[0].strip() for line in lines} == {"bogus", "train.learnin_rate", "data.classification.max_label"}
    assert all("Extra inputs are not permitted" in line for line in lines)


@pytest.mark.parametrize(
    "text, field, got",
    [
        ("train: {learning_rate: abc}", "train.learning_rate", "'abc'"),
        ("seed: 1.5", "seed", "1.5"),
        ("train: {epochs: '2'}", "train.epochs", "'2'"),  # strict: a quoted number is not a number
        ("data: {instances_per_task: true}", "data.instances_per_task", "True"),
        ("variant: {definition: simple}", "variant.definition", "'simple'"),
        ("baselines: [random, oracle]", "baselines.1", "'oracle'"),
    ],
)
def test_wrong_types_are_refused_in_one_line_with_the_value(write, text, field, got):
    path = write(f"name: s\n{text}\n")
    message = refusal(path)
    assert message.startswith(f"{path}: {field}: ") and message.endswith(f"(got {got})")
    assert "\n" not in message


def test_ints_are_accepted_where_floats_are_expected(write):
    study = load_study(write("name: s\ntrain: {learning_rate: 1, epochs: 3}\nresources: {cpus_per_worker: 2}\n"))
    assert study.train.learning_rate == 1.0 and study.train.epochs == 3.0 and study.resources.cpus_per_worker == 2.0


@pytest.mark.parametrize(
    "field",
    ["train.learning_rate", "train.weight_decay", "train.epochs", "train.grad_clip", "resources.cpus_per_worker", "resources.gpus_per_worker"],
)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused_for_every_float_field(write, field, value):
    path = write("name: s\n")
    assert refusal(path, [f"{field}={value}"]).startswith(f"{path}: {field}: Input should be a finite number")


def test_a_non_finite_number_is_refused_in_a_file_too(write):
    path = write("name: s\ntrain: {learning_rate: .inf}\n")
    assert refusal(path) == f"{path}: train.learning_rate: Input should be a finite number (got inf)"


# --- the YAML dialect ---------------------------------------------------------------------------


def test_exponents_without_a_dot_are_floats(write):
    assert load_study(write("name: s\ntrain: {learning_rate: 1e-4}\n")).train.learning_rate == 1e-4


@pytest.mark.parametrize(
    "text, key, line, first",
    [
        ("name: s\nseed: 1\ntrain: {epochs: 2}\nseed: 2\n", "seed", 4, 2),
        ("name: s\ntrain:\n  epochs: 2\n  epochs: 3\n", "epochs", 4, 3),
        ("name: s\ngrid:\n  seed: [1, 2]\n  seed: [3]\n", "seed", 4, 3),
    ],
)
def test_a_key_written_twice_is_refused_with_the_key_and_lines(write, text, key, line, first):
    path = write(text)
    message = refusal(path)
    assert message.startswith(f"{path}: not valid YAML: line {line}, ")
    assert f"key '{key}' appears twice in one mapping (first on line {first})" in message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_experiment_file_is_refused(write, text):
    path = write(text)
    assert refusal(path) == f"{path}: no settings; an experiment file must set at least name"


@pytest.mark.parametrize(
    "content, expected",
    [
        ("name: s\ntrain: [\n", "not valid YAML: line 3, column 1: "),
        ("name: s\ntrain:\n  epochs: 2\n   warmup_steps: 1\n", "not valid YAML: line 4, column 16: mapping values are not allowed here"),
        (b"name: s\ndescription: \"caf\xe9\"\n", "not UTF-8 text (byte 0xe9 at offset 25)"),
        ("- name: s\n", "expected a mapping of config sections at the top level, got list"),
    ],
)
def test_unreadable_files_are_refused_in_one_line(write, content, expected):
    path = write(content)
    message = refusal(path)
    assert message.startswith(f"{path}: {expected}") and "\n" not in message


def test_a_missing_file_is_named(tmp_path):
    assert refusal(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such experiment file"


@pytest.mark.parametrize("name", ["../evil", "a..b", ".hidden", "-x", "a b", "a/b", "", "ü"])
@pytest.mark.parametrize("field", ["name", "tracking.experiment"])
def test_names_that_become_folders_are_restricted_to_a_safe_pattern(write, name, field):
    message = refusal(write("name: s\n"), [f"{field}='{name}'"])
    assert f": {field}: not a safe name" in message


def test_safe_names_are_accepted(write):
    study = load_study(write("name: paper-data_size.v2\ntracking: {experiment: Exp1}\n"))
    assert (study.name, study.tracking.experiment) == ("paper-data_size.v2", "Exp1")


# --- overrides ----------------------------------------------------------------------------------


def test_overrides_set_scalars_nested_fields_and_lists(write):
    path = write("name: s\ntrain: {learning_rate: 1.0e-3, epochs: 3}\n")
    study = load_study(
        path, ["train.learning_rate=1e-4", "data.classification.max_labels=4", "data.train_tasks=[task_a, task_b]", "seed=7"]
    )
    assert study.train.learning_rate == 1e-4 and study.train.epochs == 3.0  # the file's other values stay
    assert study.data.classification.max_labels == 4
    assert study.data.train_tasks == ["task_a", "task_b"] and study.seed == 7


def test_a_grid_axis_is_overridden_by_its_dotted_key(write):
    path = write("name: s\ngrid:\n  data.instances_per_task: [20, 100]\n  seed: [1, 2]\n")
    study = load_study(path, ["grid.data.instances_per_task=[10]", "grid.variant.definition=[original, none]"])
    assert study.grid == {"data.instances_per_task": [10], "seed": [1, 2], "variant.definition": ["original", "none"]}


def test_the_whole_grid_is_replaced_by_grid(write):
    path = write("name: s\ngrid: {seed: [1, 2], data.instances_per_task: [10]}\n")
    assert load_study(path, ["grid={train.epochs: [1, 2]}"]).grid == {"train.epochs": [1, 2]}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.learning_rte=1e-4", "override 'train.learning_rte=1e-4': 'train.learning_rte' does not name a config field"),
        ("trian.epochs=1", "'trian' is not a section"),
        ("train.learning_rate", "override 'train.learning_rate': expected KEY=VALUE"),
        ("train.learning_rate=[1,", "override 'train.learning_rate=[1,': the value is not valid YAML (line 1, column 4: "),
        ("grid.seed=[1,", "override 'grid.seed=[1,': the value is not valid YAML"),
    ],
)
def test_bad_overrides_are_refused_naming_the_override(write, override, expected):
    message = refusal(write("name: s\n"), [override])
    assert expected in message and "\n" not in message


def test_with_overrides_keeps_the_grid_and_at_grid_point_removes_it():
    study = study_from_dict({"name": "s", "grid": {"seed": [1, 2]}})
    changed = with_overrides(study, {"train.epochs": 4.0})
    assert changed.grid == {"seed": [1, 2]} and changed.train.epochs == 4.0
    point = at_grid_point(study, {"seed": 2})
    assert point.grid == {} and point.seed == 2
    with pytest.raises(ConfigError, match=r"trial \{'seed': 'x'\}: seed: Input should be a valid integer"):
        at_grid_point(study, {"seed": "x"})


# --- the grid -----------------------------------------------------------------------------------


def test_a_wrong_typed_grid_value_is_refused_at_load_naming_the_file_and_axis(write):
    path = write('name: s\ngrid:\n  seed: [1, 2]\n  train.learning_rate: [1.0e-4, "abc"]\n')
    assert refusal(path) == f"{path}: grid.train.learning_rate: 'abc' is refused: Input should be a valid number"


def test_a_grid_value_refused_by_a_section_rule_names_the_section(write):
    path = write("name: s\ngrid: {model.precision: [bf16, fp16]}\n")
    assert refusal(path).startswith(f"{path}: grid.model.precision: 'fp16' is refused: model: precision 'fp16' is refused for T5")


@pytest.mark.parametrize(
    "grid, expected",
    [
        ("{train.learning_rte: [1]}", "grid.train.learning_rte: 'train.learning_rte' does not name a config field"),
        ("{trian.epochs: [1]}", "grid.trian.epochs: 'trian.epochs' does not name a config field ('trian' is not a section)"),
        ("{seed: []}", "grid.seed: an axis needs at least one value"),
        ("{seed: [1, 2, 1]}", "grid.seed: 1 is listed twice; each value makes one trial"),
        ("{name: [a, b]}", "grid.name: this key cannot be swept"),
        ("{seed: 1}", "grid.seed: Input should be a valid list (got 1)"),
        ("{data.instances_per_task: [0]}", "grid.data.instances_per_task: 0 is refused: Input should be greater than or equal to 1"),
        ("{train.learning_rate: [.nan]}", "grid.train.learning_rate: nan is refused: Input should be a finite number"),
    ],
)
def test_bad_grid_axes_are_refused_at_load(write, grid, expected):
    path = write(f"name: s\ngrid: {grid}\n")
    assert refusal(path) == f"{path}: {expected}"


def test_a_bad_grid_axis_given_as_an_override_is_refused_too(write):
    path = write("name: s\n")
    assert refusal(path, ["grid.seed=[1,1]"]) == f"{path}: grid.seed: 1 is listed twice; each value makes one trial"
    assert "grid.train.learning_rate: 'abc' is refused" in refusal(path, ["grid.train.learning_rate=[abc]"])


# --- debug --------------------------------------------------------------------------------------


def test_debug_is_applied_by_the_loader(write):
    path = write(
        "name: s\ndata: {test_instances_per_task: 40}\n"
        "train: {global_batch_size: 32, per_device_batch_size: 4, max_source_length: 1024, eval_every_steps: 50}\n"
    )
    assert load_study(path).train.max_steps is None  # without debug, nothing is capped
    study = load_study(path, ["debug=true"])
    assert (study.data.num_train_tasks, study.data.test_instances_per_task, study.data.dev_tasks) == (8, 8, 2)
    assert (study.train.max_steps, study.train.global_batch_size, study.train.max_source_length) == (5, 4, 256)
    assert study.train.eval_every_steps is None and study.eval.max_new_tokens == 16


def test_debug_keeps_the_values_of_grid_axes(write):
    path = write(
        "name: s\ndebug: true\ntrain: {global_batch_size: 16, per_device_batch_size: 4}\n"
        "grid:\n  train.max_steps: [50, 100]\n  resources.workers_per_trial: [1, 2]\n"
    )
    study = load_study(path)
    assert study.grid == {"train.max_steps": [50, 100], "resources.workers_per_trial": [1, 2]}
    point = at_grid_point(study, {"train.max_steps": 100, "resources.workers_per_trial": 2})
    assert point.train.max_steps == 100  # swept, hence kept
    assert point.train.global_batch_size == 8  # derived from the swept worker count: 4 per device x 2
    assert point.data.test_instances_per_task == 8


# --- the CLI and the registry -------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, overrides",
    [
        ("name: s\ngrid: {train.learning_rate: [abc]}\n", []),
        ("name: s\nseed: 1\nseed: 2\n", []),
        ("", []),
        ("name: s\ntrain: [\n", []),
        (b"name: \xff\n", []),
        ("name: ../s\n", []),
        ("name: s\n", ["train.learning_rate=.inf"]),
        ("name: s\n", ["train.learning_rate=[1,"]),
        ("name: s\n", ["grid.seed=[1,1]"]),
    ],
)
def test_itstudy_run_refuses_bad_input_in_one_line_with_status_2(write, capsys, content, overrides):
    path = write(content)
    assert main(["run", str(path), *overrides]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("itstudy: ") and captured.err.count("\n") == 1


def test_baseline_names_are_the_registry_plus_untuned():
    assert set(get_args(BaselineName)) == set(BASELINES) | {"untuned"}
