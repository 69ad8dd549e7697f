"""Writing the synthetic suite: instances dealt from each family's inputs into SuperNI task files.

Counterfactual pairs: inputs on which the two rules of a pair disagree are drawn twice as often
as inputs on which they agree, so a model that ignores the definition cannot beat chance on both
tasks of a pair.

Label balance: instances are dealt round-robin over the label combinations of their group (one
task, or a pair), so the first 100 instances of a test task are label-balanced the way SuperNI
orders its evaluation instances. Demonstrations are dealt first and never reappear as instances.

Deterministic: the same `SyntheticConfig` (seed, instances_per_task) and `GENERATOR_VERSION`
write byte-identical files. Refused: asking for more instances than a family has distinct inputs
(the limit is about 1,200 per task, set by the review sentences).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from itstudy.config import SyntheticConfig
from itstudy.data.synthetic.families import FAMILIES, Family, Rule
from itstudy.data.synthetic.label_draws import written_groups
from itstudy.errors import UserError

# Bump whenever the generated content changes: the task files record it (`_synthetic`).
GENERATOR_VERSION = 4
SPLIT = "default"


class SyntheticError(UserError):
    """The suite cannot be generated as configured; the message names the setting to change."""


def _generator_digest() -> str:
    """A digest of the synthetic package's source: its families, label pool, draws and dealing."""
    sources = sorted(Path(__file__).parent.glob("*.py"))
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:12]


def cached_synthetic_suite(cache_root: Path, cfg: SyntheticConfig) -> Path:
    """The suite for `cfg` under `<cache_root>/synthetic/`, written once and reused afterwards.

    The folder is named by the config and by a digest of the generator's source, so an edit to
    the families, the pool or the draws is never served a suite written before it, even one
    that forgot to bump GENERATOR_VERSION (the version stays in the name for people to read).
    """
    name = f"v{GENERATOR_VERSION}-seed{cfg.seed}-n{cfg.instances_per_task}-{_generator_digest()}"
    folder = Path(cache_root) / "synthetic" / name
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    write_synthetic_suite(scratch, cfg)
    try:
        # A rename is atomic: readers see a complete suite or none, and a parallel writer that
        # got there first wins (its suite is byte-identical).
        os.rename(scratch, folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def write_synthetic_suite(folder: str | Path, cfg: SyntheticConfig) -> Path:
    """Write every task and the default split lists into `folder` (SuperNI layout); returns it."""
    folder = Path(folder)
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    (folder / "splits" / SPLIT).mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {"train": [], "test": []}
    for family in FAMILIES:
        for group_index, group in enumerate(written_groups(family, cfg.seed)):
            for name, task in _group_tasks(family, group_index, group, cfg).items():
                text = json.dumps(task, indent=1, ensure_ascii=False) + "\n"
                (folder / "tasks" / f"{name}.json").write_text(text, encoding="utf-8")
                names[family.split].append(name)
    for split, split_names in names.items():
        (folder / "splits" / SPLIT / f"{split}_tasks.txt").write_text("".join(f"{n}\n" for n in sorted(split_names)))
    return folder


def _group_tasks(family: Family, group_index: int, group: tuple[Rule, ...], cfg: SyntheticConfig) -> dict[str, dict]:
    """The task JSON of every rule in the group, all built on one dealt sequence of inputs."""
    dealer = _Dealer(family, group_index, group, cfg.seed)
    shown = dealer.deal(max(len(rule.labels) for rule in group))  # one demonstration per label
    wrong = dealer.deal(1)
    instances = dealer.deal(cfg.instances_per_task)
    tasks = {}
    for rule in group:
        name = family.task_name(rule)
        partner = [family.task_name(other) for other in group if other is not rule]
        tasks[name] = {
            "Contributors": ["itstudy synthetic suite"],
            "Source": ["itstudy-synthetic"],
            "URL": [],
            "Categories": [family.category],
            "Reasoning": [],
            "Definition": [rule.definition],
            "Input_language": ["English"],
            "Output_language": ["English"],
            "Instruction_language": ["English"],
            "Domains": ["Synthetic"],
            "Positive Examples": [_positive(family, rule, item) for item in shown],
            "Negative Examples": [_negative(family, rule, item) for item in wrong],
            "Instances": [
                {"id": f"{name}-{i}", "input": family.render(item), "output": [rule.label(item)]}
                for i, item in enumerate(instances)
            ],
            "_synthetic": {
                "generator_version": GENERATOR_VERSION,
                "seed": cfg.seed,
                "family": family.name,
                "split": family.split,
                "counterfactual_of": partner[0] if partner else None,
            },
        }
    return tasks


def _positive(family: Family, rule: Rule, item: Any) -> dict:
    label = rule.label(item)
    return {"input": family.render(item), "output": label, "explanation": f"{rule.fact(item)}, so the answer is '{label}'."}


def _negative(family: Family, rule: Rule, item: Any) -> dict:
    right = rule.label(item)
    wrong = rule.labels[(rule.labels.index(right) + 1) % len(rule.labels)]
    return {
        "input": family.render(item),
        "output": wrong,
        "explanation": f"{rule.fact(item)}, so the answer should be '{right}', not '{wrong}'.",
    }


class _Dealer:
    """Hands out a group's inputs round-robin over its label combinations, each input once.

    A combination is the tuple of labels the group's rules give an input. For a counterfactual
    pair, combinations on which the two rules disagree come twice per round and those on which
    they agree once: most shared inputs then separate the two definitions, while each task's own
    labels stay balanced within every round.
    """

    def __init__(self, family: Family, group_index: int, group: tuple[Rule, ...], seed: int):
        pool = family.inputs()
        # Seeding with a string hashes it with SHA-512: stable across runs, processes and platforms.
        random.Random(f"itstudy-synthetic:{GENERATOR_VERSION}:{seed}:{family.name}:{group_index}").shuffle(pool)
        self.where = f"synthetic family '{family.name}' ({', '.join(rule.name for rule in group)})"
        self.buckets: dict[tuple[str, ...], list[Any]] = {}
        for item in pool:
            self.buckets.setdefault(tuple(rule.label(item) for rule in group), []).append(item)
        combos = [c for c in itertools.product(*(rule.labels for rule in group)) if c in self.buckets]
        disagree = [c for c in combos if len(set(c)) > 1]
        agree = [c for c in combos if len(set(c)) == 1]
        self.round = disagree + agree + disagree if len(group) > 1 else combos

    def deal(self, count: int) -> list[Any]:
        items = []
        for combo in itertools.islice(itertools.cycle(self.round), count):
            bucket = self.buckets[combo]
            if not bucket:
                raise SyntheticError(
                    f"{self.where} has no input labelled {combo} left after {len(items)} of {count}; "
                    f"lower data.synthetic.instances_per_task"
                )
            items.append(bucket.pop())
        return items
