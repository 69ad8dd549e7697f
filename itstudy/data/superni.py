"""Parse one SuperNI task file (the task-JSON format of allenai/natural-instructions) into a `Task`.

What is accepted, because real files in the SuperNI history carry it and the meaning is plain:
- control characters inside strings (the JSON standard forbids them raw): parsed with
  `json.loads(strict=False)`, then C0 control characters other than tab, newline and carriage
  return are stripped from every string;
- `Definition` as a bare string instead of a list of one string;
- an instance `output` as a bare string instead of a list (wrapped into a one-element list);
- instances without an `id`: the id `<task>-<index>` is synthesised (index 0-based in file order),
  so predictions can still be joined back to their instance;
- the language fields may be absent and then mean English (SuperNI's default split is English only);
- `_synthetic.counterfactual_of`, written by the synthetic suite: the task's counterfactual partner
  (same inputs, another definition), kept as `Task.counterfactual_of`.

What is refused, with one line naming the file, the field and what was expected:
- bytes that are not UTF-8, text that is not JSON (with line and column), a top level that is
  not an object;
- a missing or empty `Definition`, `Positive Examples`, `Negative Examples`, `Instances` or
  `Categories` field, or one of the wrong type;
- an instance with a non-string input, an empty output list or non-string outputs, or an id
  that repeats an earlier one.

A `Definition` list with several entries keeps the first, exactly as Tk-Instruct's collator
does (`Definition[0]`), so prompts match the paper's code.

Plain `json` is used rather than the `datasets` library: a task file is one small nested JSON
document that every run reads whole; Arrow conversion would add a schema to maintain and a
cache to invalidate, and buys nothing for a few megabytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from itstudy.data.task import Example, Instance, Task
from itstudy.errors import UserError

# C0 controls except \t \n \r, plus DEL: noise in a few SuperNI sources, never content.
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class TaskFileError(UserError):
    """A task file that cannot be used; the message is one line naming the file and the field."""


def load_task_file(path: str | Path, name: str | None = None) -> Task:
    """Read and parse `<path>`; the task name defaults to the file name without `.json`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TaskFileError(f"{path}: cannot read the task file: {error.strerror or error}") from None
    return parse_task(data, name=name or path.stem, origin=str(path))


def parse_task(data: bytes | str, name: str, origin: str) -> Task:
    """Parse the bytes of a task file; `origin` (a path or URL) is what errors name."""
    raw = _decode_json(data, origin)
    if not isinstance(raw, dict):
        raise TaskFileError(f"{origin}: expected a JSON object at the top level, got {_type_name(raw)}")
    fields = _Fields(raw, origin)
    return Task(
        name=name,
        definition=fields.definition(),
        positive_examples=fields.examples("Positive Examples"),
        negative_examples=fields.examples("Negative Examples"),
        instances=fields.instances(name),
        categories=fields.string_list("Categories", required=True),
        input_language=fields.string_list("Input_language") or ("English",),
        output_language=fields.string_list("Output_language") or ("English",),
        instruction_language=fields.string_list("Instruction_language") or ("English",),
        source_file=origin,
        counterfactual_of=fields.counterfactual_of(),
    )


def _decode_json(data: bytes | str, origin: str) -> Any:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise TaskFileError(f"{origin}: not UTF-8 text (byte {error.start}); refused") from None
    try:
        return json.loads(data, strict=False)
    except json.JSONDecodeError as error:
        raise TaskFileError(
            f"{origin}: not valid JSON at line {error.lineno} column {error.colno}: {error.msg}; refused"
        ) from None


def _type_name(value: Any) -> str:
    if value == []:
        return "an empty list"
    return {dict: "object", list: "list", str: "string", bool: "bool", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _clean(text: str) -> str:
    return _CONTROL_CHARS.sub("", text)


class _Fields:
    """Typed access to the fields of one raw task object; every error names `origin` and the field."""

    def __init__(self, raw: dict, origin: str):
        self.raw = raw
        self.origin = origin

    def fail(self, field: str, expected: str, got: Any) -> TaskFileError:
        return TaskFileError(f"{self.origin}: field '{field}': expected {expected}, got {_type_name(got)}")

    def required(self, field: str) -> Any:
        if field not in self.raw:
            raise TaskFileError(f"{self.origin}: field '{field}': missing")
        return self.raw[field]

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, "a string", value)
        return _clean(value)

    def definition(self) -> str:
        value = self.required("Definition")
        if isinstance(value, list):
            if not value:
                raise self.fail("Definition", "a list with one string", value)
            value = self.text(value[0], "Definition[0]")
        else:
            value = self.text(value, "Definition")  # legacy form: a bare string
        if not value.strip():
            raise TaskFileError(f"{self.origin}: field 'Definition': expected a non-empty text, got a blank string")
        return value

    def counterfactual_of(self) -> str:
        """The synthetic suite's `_synthetic.counterfactual_of` (a partner task name), '' when absent or null."""
        synthetic = self.raw.get("_synthetic") or {}
        if not isinstance(synthetic, dict):
            raise self.fail("_synthetic", "an object", synthetic)
        partner = synthetic.get("counterfactual_of") or ""
        return self.text(partner, "_synthetic.counterfactual_of")

    def string_list(self, field: str, required: bool = False) -> tuple[str, ...]:
        if field not in self.raw and not required:
            return ()
        value = self.required(field)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(field, "a list of strings", value)
        items = tuple(self.text(item, f"{field}[{i}]") for i, item in enumerate(value))
        if required and not items:
            raise self.fail(field, "a non-empty list of strings", value)
        return items

    def examples(self, field: str) -> tuple[Example, ...]:
        value = self.required(field)
        if not isinstance(value, list):
            raise self.fail(field, "a list of {input, output, explanation} objects", value)
        return tuple(self.example(item, f"{field}[{i}]") for i, item in enumerate(value))

    def example(self, item: Any, where: str) -> Example:
        if not isinstance(item, dict):
            raise self.fail(where, "an object with input, output and explanation", item)
        for key in ("input", "output"):
            if key not in item:
                raise TaskFileError(f"{self.origin}: field '{where}.{key}': missing")
        return Example(
            input=self.text(item["input"], f"{where}.input"),
            output=self.text(item["output"], f"{where}.output"),
            explanation=self.text(item.get("explanation", ""), f"{where}.explanation"),
        )

    def instances(self, task_name: str) -> tuple[Instance, ...]:
        value = self.required("Instances")
        if not isinstance(value, list):
            raise self.fail("Instances", "a list of {id, input, output} objects", value)
        if not value:
            raise self.fail("Instances", "at least one instance", value)
        instances = tuple(self.instance(item, i, task_name) for i, item in enumerate(value))
        self.refuse_repeated_ids(instances)
        return instances

    def instance(self, item: Any, index: int, task_name: str) -> Instance:
        where = f"Instances[{index}]"
        if not isinstance(item, dict):
            raise self.fail(where, "an object with id, input and output", item)
        for key in ("input", "output"):
            if key not in item:
                raise TaskFileError(f"{self.origin}: field '{where}.{key}': missing")
        outputs = item["output"]
        if isinstance(outputs, str):
            outputs = [outputs]  # legacy form: a bare string
        if not isinstance(outputs, list) or not outputs:
            raise self.fail(f"{where}.output", "a non-empty list of strings", outputs)
        return Instance(
            id=self.text(item["id"], f"{where}.id") if "id" in item else f"{task_name}-{index}",
            input=self.text(item["input"], f"{where}.input"),
            outputs=tuple(self.text(o, f"{where}.output[{j}]") for j, o in enumerate(outputs)),
        )

    def refuse_repeated_ids(self, instances: tuple[Instance, ...]) -> None:
        first_seen: dict[str, int] = {}
        for index, instance in enumerate(instances):
            if instance.id in first_seen:
                raise TaskFileError(
                    f"{self.origin}: field 'Instances[{index}].id': expected a unique id, "
                    f"got '{instance.id}' again (first at Instances[{first_seen[instance.id]}])"
                )
            first_seen[instance.id] = index
