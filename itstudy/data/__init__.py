"""SuperNI and synthetic tasks: parsing, sources, selection, sampling."""

from itstudy.data.task import Example, Instance, LabelSpace, Task

__all__ = ["Example", "Instance", "LabelSpace", "Task"]
