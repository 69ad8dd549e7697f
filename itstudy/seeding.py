"""Seeded random streams that depend only on (seed, task, purpose).

Every random choice about a task (which training instances, which delusive labels, which random
guess) draws from its own stream, so adding or removing another task never shifts it, and two
purposes never replay each other's draws.
"""

from __future__ import annotations

import hashlib
import random


def task_rng(seed: int, task_name: str, purpose: str | None = None) -> random.Random:
    """The stream of (seed, task, purpose); purpose None is the training-instance sampler's stream."""
    key = task_name if purpose is None else f"{task_name}/{purpose}"
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
