"""Reading a study: experiment files, `KEY=VALUE` overrides, grid points and the debug mode.

    study = load_study("experiments/demo.yaml", ["train.learning_rate=1e-4", "grid.seed=[1,2,3]"])

Everything is checked before anything starts, and every refusal is one `ConfigError` naming the
file (or the override) and the dotted field: unknown keys, wrong types, non-finite numbers,
duplicate YAML keys, and each value of each grid axis, validated as the study it makes.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Hashable, Iterable

import yaml
from pydantic import ValidationError

from itstudy.config.base import ConfigError
from itstudy.config.running import ResourcesConfig
from itstudy.config.spec import Study

# --- the YAML dialect ---------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """YAML as experiment files use it: `1e-4` is a float and a key may appear once per mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # PyYAML keeps the last of two equal keys; a setting written twice is almost always a mistake.
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key, Hashable):
                continue  # merge keys are resolved by PyYAML; an unhashable key is refused by it
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    problem=f"key {key!r} appears twice in one mapping (first on line {first_line[key]})",
                    problem_mark=key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


# PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string.
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str) -> Any:
    """Parse `text` in the experiment-file dialect; raises yaml.YAMLError."""
    return yaml.load(text, Loader=_YamlLoader)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: where and what, without PyYAML's multi-line snippet."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return str(error).splitlines()[0]
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + "; ".join(part for part in (error.context, error.problem) if part)


# --- overrides ----------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """`train.learning_rate=1e-4` -> ('train.learning_rate', 0.0001); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    try:
        return key.strip(), read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({_yaml_problem(error)})") from None


def _apply_override(tree: dict, dotted: str, value: Any, origin: str) -> dict:
    """Set `dotted` in the plain study `tree`; `grid.<axis>` replaces or adds one grid axis."""
    if dotted.startswith("grid.") and dotted != "grid.":
        if not isinstance(tree.get("grid"), dict):
            raise ConfigError(f"{origin}: '{dotted}' names a grid axis, but grid is not a mapping")
        tree["grid"] = {**tree["grid"], dotted.removeprefix("grid."): value}
        return tree
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"{origin}: '{dotted}' does not name a config field ('{part}' is not a section)")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"{origin}: '{dotted}' does not name a config field")
    node[parts[-1]] = value
    return tree


# --- validation ---------------------------------------------------------------------------------


def _refusals(error: ValidationError) -> list[tuple[str, str, Any]]:
    """(dotted field, problem, refused value) of each refused field."""
    return [
        (".".join(str(part) for part in item["loc"]) or "(top level)", item["msg"].removeprefix("Value error, "), item.get("input"))
        for item in error.errors()
    ]


def _format_errors(error: ValidationError, origin: str) -> str:
    """`origin: field: problem (got value)`; several refused fields on one line each."""
    lines = []
    for where, problem, got in _refusals(error):
        line = problem if problem.startswith(f"{where}.") else f"{where}: {problem}"  # grid checks name the axis
        lines.append(line if isinstance(got, dict) else f"{line} (got {got!r})")
    if len(lines) == 1:
        return f"{origin}: {lines[0]}"
    return "\n  ".join([f"{origin}: invalid study spec", *lines])


def study_from_dict(raw: dict, origin: str = "<dict>") -> Study:
    """Validate a plain dict as a Study, each grid value included; errors name `origin` and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of config sections at the top level, got {type(raw).__name__}")
    try:
        study = Study.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, origin)) from None
    _check_grid_values(study, origin)
    return study


def _check_grid_values(study: Study, origin: str) -> None:
    # One axis at a time: no rule of the spec ties two fields together, so the product would add nothing.
    for key, values in study.grid.items():
        for value in values:
            tree = _model_resources(_apply_override(_without_grid(study), key, value, origin=f"{origin}: grid.{key}"))
            try:
                Study.model_validate(tree)
            except ValidationError as error:
                where, problem, _ = _refusals(error)[0]
                detail = problem if where == key else f"{where}: {problem}"
                raise ConfigError(f"{origin}: grid.{key}: {value!r} is refused: {detail}") from None


def _without_grid(study: Study) -> dict:
    return {**study.model_dump(), "grid": {}}


def _model_resources(tree: dict) -> dict:
    """A trial's plain study `tree` with its model's `resources.per_model` entry folded into resources."""
    try:
        resources = ResourcesConfig.model_validate(tree["resources"])
    except ValidationError:
        return tree  # a refused value (a grid value of resources): the study's validation names it next
    tree["resources"] = resources.of_model(tree["model"]["name"]).model_dump()
    return tree


# --- loading ------------------------------------------------------------------------------------


def load_study(path: str | Path | None, overrides: Iterable[str] = ()) -> Study:
    """Read an experiment file (None: the built-in defaults), apply `KEY=VALUE` overrides, validate,
    and apply the debug caps when `debug` is set."""
    raw = _read_experiment_file(Path(path)) if path is not None else {}
    merged = _deep_merge(Study.model_construct().model_dump(), raw)  # defaults, so overrides can name any field
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(merged, key, value, origin=f"override '{text}'")
    study = study_from_dict(merged, origin=str(path) if path is not None else "defaults")
    return _apply_debug(study, keep=study.grid)


def _read_experiment_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        raw = read_yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
    if raw is None or raw == {}:
        raise ConfigError(f"{path}: no settings; an experiment file must set at least name")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level, got {type(raw).__name__}")
    return raw


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "grid":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --- studies derived from a study -----------------------------------------------------------------


def with_overrides(study: Study, overrides: dict[str, Any], origin: str = "override") -> Study:
    """A copy of `study` with dotted-key values replaced (its grid kept), re-validated."""
    tree = study.model_dump()
    for key, value in overrides.items():
        _apply_override(tree, key, value, origin=origin)
    return study_from_dict(tree, origin=origin)


def at_grid_point(study: Study, point: dict[str, Any]) -> Study:
    """The study of one trial: the point's values (grid axes, and any sampled search values) set,
    the grid removed, validated."""
    origin = f"trial {point}"
    tree = _without_grid(study)
    for key, value in point.items():
        _apply_override(tree, key, value, origin=origin)
    _model_resources(tree)
    # The debug caps again, as one can derive from a swept value (the global batch from the workers).
    return _apply_debug(study_from_dict(tree, origin=origin), keep=point)


def _apply_debug(study: Study, keep: Iterable[str]) -> Study:
    """`debug: true` made concrete: a few optimiser steps on a few tasks and instances, short prompts.

    The global batch becomes one micro-batch per worker, so that a handful of training instances
    still fill it. Keys in `keep` (grid axes) stay as swept, so every grid point stays a trial.
    The caps are idempotent: applying them twice gives the same study.
    """
    if not study.debug:
        return study
    data, train, evaluation = study.data, study.train, study.eval
    caps = {
        "data.num_train_tasks": min(data.num_train_tasks or 8, 8),
        "data.dev_tasks": min(data.dev_tasks, 2),
        "data.dev_instances_per_task": min(data.dev_instances_per_task, 4),
        "data.test_instances_per_task": min(data.test_instances_per_task, 8),
        "train.max_steps": min(train.max_steps or 5, 5),
        "train.global_batch_size": train.per_device_batch_size * study.resources.workers_per_trial,
        "train.max_source_length": min(train.max_source_length, 256),
        "train.eval_every_steps": None,
        "eval.max_new_tokens": min(evaluation.max_new_tokens, 16),
    }
    kept = set(keep)
    return with_overrides(study, {key: value for key, value in caps.items() if key not in kept}, origin="debug")
