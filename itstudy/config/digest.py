"""A study as plain data, and the short digest of it that names sweeps, trials and runs."""

from __future__ import annotations

import hashlib
import json

from itstudy.config.spec import Study


def to_plain(study: Study) -> dict:
    """The study as JSON-safe plain data (paths as strings), for YAML artifacts and hashing."""
    return json.loads(study.model_dump_json())


def config_digest(study: Study) -> str:
    """A short stable hash of the full config: same config, same digest, same run names."""
    return hashlib.sha256(json.dumps(to_plain(study), sort_keys=True).encode()).hexdigest()[:10]
