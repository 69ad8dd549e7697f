"""A study as plain data, and the short digests of it that tag runs and name sweeps and trials."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from itstudy.config.spec import Study


def to_plain(study: Study) -> dict:
    """The study as JSON-safe plain data (paths as strings), for YAML artifacts and hashing."""
    return json.loads(study.model_dump_json())


def config_digest(study: Study) -> str:
    """A short stable hash of the full config: same config, same digest, same run names."""
    return hashlib.sha256(json.dumps(to_plain(study), sort_keys=True).encode()).hexdigest()[:10]


NAME_NEUTRAL_KEYS = ("description", "tracking", "resources", "train.max_failures", "train.checkpoints_to_keep", "train.log_every_steps")
"""Keys that change neither a run's result nor the sweep's plan: a rerun that changes only these
(another store, more workers, a new description) resumes the same sweep, trials and runs."""


def identity_digest(study: Study, inputs: str = "") -> str:
    """The short hash that names sweeps, trials and runs: the config without NAME_NEUTRAL_KEYS, and
    `inputs`, the content digest of the data and tokenizer (`itstudy.provenance.inputs_digest`) where
    the name decides whether a rerun resumes (sweeps, `itstudy train` runs)."""
    plain = to_plain(study)
    for dotted in NAME_NEUTRAL_KEYS:
        *sections, last = dotted.split(".")
        node = plain
        for section in sections:
            node = node[section]
        node.pop(last)
    return hashlib.sha256((json.dumps(plain, sort_keys=True) + inputs).encode()).hexdigest()[:10]


RESULT_NEUTRAL_KEYS = (
    *NAME_NEUTRAL_KEYS,  # resources include the world size, which a checkpoint checks on its own
    "name",
    "grid",  # a trial's config holds its point's values; the other points do not shape it
    "search",
    "baselines",
    "train.fail_at_step",
)
"""Config keys (and sections) a run may change and still resume: they do not change its result."""


def changed_result_keys(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two plain configs, leaving out RESULT_NEUTRAL_KEYS."""
    if prefix.rstrip(".") in RESULT_NEUTRAL_KEYS:
        return []
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return [prefix.rstrip(".")] if saved != current else []
    return [
        changed
        for key in sorted(saved.keys() | current.keys())
        for changed in changed_result_keys(saved.get(key), current.get(key), f"{prefix}{key}.")
    ]
