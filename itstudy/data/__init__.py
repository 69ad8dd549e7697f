"""SuperNI and synthetic tasks: parsing, sources, selection, sampling.

`load_study_data(data_cfg, seed)` is the one call a run makes; the rest is here for tests,
notebooks and tools that look at single tasks.
"""

from itstudy.data.selection import (
    CLASSIFICATION_RULES,
    SelectionError,
    StudyData,
    evaluation_instances,
    label_space,
    load_study_data,
    sample_training_instances,
)
from itstudy.data.sources import SourceError, TaskSource, UnknownTaskError, make_source
from itstudy.data.superni import TaskFileError, load_task_file, parse_task
from itstudy.data.synthetic import SyntheticError, write_synthetic_suite
from itstudy.data.task import Example, Instance, LabelSpace, Task

__all__ = [
    "CLASSIFICATION_RULES",
    "Example",
    "Instance",
    "LabelSpace",
    "SelectionError",
    "SourceError",
    "StudyData",
    "SyntheticError",
    "Task",
    "TaskFileError",
    "TaskSource",
    "UnknownTaskError",
    "evaluation_instances",
    "label_space",
    "load_study_data",
    "load_task_file",
    "make_source",
    "parse_task",
    "sample_training_instances",
    "write_synthetic_suite",
]
