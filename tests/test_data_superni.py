"""The SuperNI task-file parser: every shipped file loads; broken files fail with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from itstudy.data.superni import TaskFileError, load_task_file, parse_task


def _minimal_task(**changes) -> dict:
    task = {
        "Categories": ["Sentiment Analysis"],
        "Definition": ["Answer 'positive' or 'negative'."],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Instruction_language": ["English"],
        "Positive Examples": [{"input": "I love it", "output": "positive", "explanation": "love is positive"}],
        "Negative Examples": [{"input": "I hate it", "output": "positive", "explanation": "hate is not positive"}],
        "Instances": [
            {"id": "t-1", "input": "great", "output": ["positive"]},
            {"id": "t-2", "input": "awful", "output": ["negative", "bad"]},
        ],
    }
    task.update(changes)
    return task


def _write(tmp_path: Path, content: str | bytes, name: str = "task999_broken.json") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _error_for(tmp_path: Path, content: str | bytes) -> str:
    path = _write(tmp_path, content)
    with pytest.raises(TaskFileError) as caught:
        load_task_file(path)
    message = str(caught.value)
    assert "\n" not in message, "errors must be one line"
    assert message.startswith(f"{path}: "), "errors must start with the file"
    return message


def test_every_shipped_superni_file_loads(superni_dir):
    files = sorted((superni_dir / "tasks").glob("*.json"))
    assert len(files) == 126
    tasks = [load_task_file(path) for path in files]
    for task, path in zip(tasks, files):
        assert task.name == path.stem
        assert task.definition.strip() and task.categories and task.instances
        assert all(instance.outputs for instance in task.instances)
        assert len({instance.id for instance in task.instances}) == len(task.instances)
    # The instance counts agree with the sample's manifest.
    manifest = {
        row.split("\t")[0]: int(row.split("\t")[5])
        for row in (superni_dir / "MANIFEST.tsv").read_text().splitlines()[1:]
    }
    assert {task.name: len(task.instances) for task in tasks} == manifest


def test_a_real_file_is_parsed_field_by_field(superni_dir):
    task = load_task_file(superni_dir / "tasks" / "task020_mctaco_span_based_question.json")
    assert task.definition.startswith("The answer will be 'yes' if the provided sentence contains an explicit mention")
    assert task.categories == ("Answerability Classification",)
    assert task.category == "answerability_classification"
    assert task.positive_examples[0].output == "Yes."
    assert task.positive_examples[0].explanation.startswith("The answer to this question")
    assert task.negative_examples[0].output == "No."
    first = task.instances[0]
    assert first.id == "task020-3b643de54d474381854c2499cd185a74"
    assert first.outputs == ("No.",)
    assert first.input.startswith("Sentence: Jerry goes out to the pier")
    assert task.input_language == ("English",)


def test_several_definitions_keep_the_first_like_tk_instruct(superni_dir):
    task = load_task_file(superni_dir / "tasks" / "task288_gigaword_summarization.json")
    raw = json.loads((superni_dir / "tasks" / "task288_gigaword_summarization.json").read_text())
    assert len(raw["Definition"]) == 2
    assert task.definition == raw["Definition"][0]


def test_multiple_references_are_kept(tmp_path):
    task = load_task_file(_write(tmp_path, json.dumps(_minimal_task())))
    assert task.instances[1].outputs == ("negative", "bad")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"Definition": ["x"],\n "Instances": [ }', "not valid JSON at line 2 column"),
        (json.dumps([1, 2]), "expected a JSON object at the top level, got list"),
        (json.dumps({k: v for k, v in _minimal_task().items() if k != "Definition"}), "field 'Definition': missing"),
        (json.dumps(_minimal_task(Definition=[])), "field 'Definition': expected a list with one string, got an empty list"),
        (json.dumps(_minimal_task(Definition=["  "])), "field 'Definition': expected a non-empty text"),
        (json.dumps(_minimal_task(Definition=[7])), "field 'Definition[0]': expected a string, got int"),
        (json.dumps(_minimal_task(**{"Positive Examples": "see above"})), "field 'Positive Examples': expected a list"),
        (json.dumps(_minimal_task(**{"Negative Examples": [{"input": "x"}]})), "field 'Negative Examples[0].output': missing"),
        (json.dumps(_minimal_task(Instances=[])), "field 'Instances': expected at least one instance, got an empty list"),
        (
            json.dumps(_minimal_task(Instances=[{"id": "a", "input": "x", "output": ["y"]}] * 3 + [{"id": "b", "input": "x", "output": 3}])),
            "field 'Instances[3].output': expected a non-empty list of strings, got int",
        ),
        (
            json.dumps(_minimal_task(Instances=[{"id": "a", "input": "x", "output": ["y", 4]}])),
            "field 'Instances[0].output[1]': expected a string, got int",
        ),
        (json.dumps(_minimal_task(Instances=[{"id": "a", "input": "x", "output": []}])), "field 'Instances[0].output': expected a non-empty list"),
        (json.dumps(_minimal_task(Instances=[{"id": "a", "output": ["y"]}])), "field 'Instances[0].input': missing"),
        (json.dumps(_minimal_task(Instances=[{"id": "a", "input": None, "output": ["y"]}])), "field 'Instances[0].input': expected a string, got null"),
        (
            json.dumps(_minimal_task(Instances=[{"id": "a", "input": "x", "output": ["y"]}, {"id": "a", "input": "z", "output": ["y"]}])),
            "field 'Instances[1].id': expected a unique id, got 'a' again (first at Instances[0])",
        ),
        (json.dumps(_minimal_task(Categories=[])), "field 'Categories': expected a non-empty list of strings"),
        (b'{"Definition": ["caf\xe9"]}', "not UTF-8 text"),
    ],
)
def test_a_broken_file_gives_one_line_naming_file_and_field(tmp_path, content, expected):
    message = _error_for(tmp_path, content)
    assert expected in message


def test_legacy_forms_are_accepted(tmp_path):
    legacy = _minimal_task(
        Definition="Answer 'positive' or 'negative'.",  # a bare string, not a list
        Instances=[
            {"input": "great", "output": "positive"},  # no id, output a bare string
            {"input": "awful", "output": ["negative"]},
        ],
    )
    for key in ("Input_language", "Output_language", "Instruction_language"):
        del legacy[key]
    task = load_task_file(_write(tmp_path, json.dumps(legacy), name="task998_legacy.json"))
    assert task.definition == "Answer 'positive' or 'negative'."
    assert [i.id for i in task.instances] == ["task998_legacy-0", "task998_legacy-1"]
    assert task.instances[0].outputs == ("positive",)
    assert task.input_language == task.output_language == task.instruction_language == ("English",)


def test_control_characters_inside_strings_are_accepted_and_stripped(tmp_path):
    text = json.dumps(_minimal_task(Definition=["Answer\x07 'positive' or 'negative'."]))
    raw_control = text.replace("\\u0007", "\x07").replace("great", "gre\x0bat\tnow")  # raw, as strict JSON forbids
    task = load_task_file(_write(tmp_path, raw_control))
    assert task.definition == "Answer 'positive' or 'negative'."
    assert task.instances[0].input == "great\tnow"  # tab, newline and CR are content and stay


def test_parse_task_names_the_given_origin():
    with pytest.raises(TaskFileError, match=r"^https://example.org/tasks/t.json: field 'Instances': missing$"):
        parse_task(json.dumps({k: v for k, v in _minimal_task().items() if k != "Instances"}), "t", "https://example.org/tasks/t.json")
