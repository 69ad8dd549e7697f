"""What a checkpoint holds and how a run resumes from it: model, tokenizer, trainer state, every rank's RNG.

A checkpoint folder describes itself: the model and tokenizer (`save_pretrained`), the trainer
state (step, optimiser, schedule, each rank's RNG states, world size, token and config digests),
the config as YAML and the metrics as JSON, and, written last, `manifest.json` with every file's
size. A checkpoint without a manifest, or whose files differ from it, was cut short (a crash or
a full disk mid-write) and is skipped on resume, with its path named, for the previous one
(`usable_checkpoint`). A checkpoint written for other token ids or another world size, or with
another value of a config key that shapes the result (every key but RESULT_NEUTRAL_KEYS), is
refused on resume, since continuing it would silently change the result.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from itstudy.config import ConfigError, Study, changed_result_keys, config_digest, to_plain

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"

MANIFEST = "manifest.json"
CHECKPOINT_PREFIX = "checkpoint_"
"""Checkpoint folders are named with it and a zero-padded number (by Ray and the plain reporter): names sort by age."""


def write_checkpoint(
    study: Study, token_digest: str, tokenizer: Any, model, optimizer_state: dict, scheduler, step: int, rng_states: list[dict], metrics: dict
) -> Path:
    """A new temporary folder holding the checkpoint at `step`; the reporter moves or copies it.

    `model` holds every weight and `optimizer_state` is the whole state (`sharding.gathered`).
    """
    folder = Path(tempfile.mkdtemp(prefix=f"itstudy-checkpoint-{step}-"))
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "tokenizer")
    state = {
        "step": step,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "rng": rng_states,
        "world_size": len(rng_states),
        "token_digest": token_digest,
        "config_digest": config_digest(study),
        "metrics": metrics,
    }
    torch.save(state, folder / TRAINER_STATE)
    (folder / "config.yaml").write_text(yaml.safe_dump(to_plain(study), sort_keys=False))
    (folder / "metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=1))
    return folder


def seal_checkpoint(folder: Path) -> None:
    """Write the manifest (every file's size) last: its presence says the checkpoint is whole."""
    sizes = {str(path.relative_to(folder)): path.stat().st_size for path in sorted(folder.rglob("*")) if path.is_file()}
    (folder / MANIFEST).write_text(json.dumps(sizes, indent=1))


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (no manifest, a file missing or of another size, an
    unreadable trainer state), or None if it is whole."""
    problem = cut_short(folder)
    if problem:
        return problem
    try:
        torch.load(folder / TRAINER_STATE, weights_only=False)
    except Exception as error:  # any failure to load means this checkpoint cannot be resumed
        return f"{TRAINER_STATE} does not load ({type(error).__name__})"
    return None


def cut_short(folder: Path) -> str | None:
    """Why `folder` is not a whole checkpoint as written (no manifest, a file missing or of another size), or None."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST}: the checkpoint was cut short while written"
    try:
        sizes = json.loads(manifest.read_text())
    except ValueError:
        return f"{MANIFEST} is not JSON"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            found = f"{path.stat().st_size} bytes" if path.is_file() else "missing"
            return f"{name} is {found}, {size} bytes were written"
    return None


def remove_cut_short(root: Path) -> list[Path]:
    """Delete the checkpoint folders under `root` that were cut short while written (a full disk), which no
    resume can use, to give their space back; the folders removed. Only while no trial runs."""
    removed = []
    for folder in sorted(Path(root).glob(f"**/{CHECKPOINT_PREFIX}*")):
        if folder.is_dir() and cut_short(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def usable_checkpoint(restored: Path | None) -> Path | None:
    """`restored` if it is whole, else the newest whole checkpoint older than it beside it, else None
    (start over); each one skipped is named in one line."""
    if restored is None:
        return None
    older = []
    if restored.name.startswith(CHECKPOINT_PREFIX):  # a downloaded checkpoint has no siblings to fall back on
        older = sorted(path for path in restored.parent.glob(f"{CHECKPOINT_PREFIX}*") if path.name < restored.name)
    for candidate in [restored, *reversed(older)]:
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        log.warning("checkpoint %s is unusable (%s); trying the previous one", candidate, problem)
    log.warning("no usable checkpoint before %s: the run starts over from step 0", restored)
    return None


def read_trainer_state(folder: Path, token_digest: str, world_size: int, study: Study) -> dict:
    """The saved trainer state, refused if it belongs to other data, another world size or another result config."""
    changed = changed_result_keys(yaml.safe_load((folder / "config.yaml").read_text()), to_plain(study))
    if changed:
        raise ConfigError(
            f"checkpoint {folder}: written with another value of {', '.join(changed)}; resuming would mix two "
            f"configs in one result: restore the old value, or start a new run (another study name or tracking.experiment)"
        )
    state = torch.load(folder / TRAINER_STATE, weights_only=False)
    if state["token_digest"] != token_digest:
        raise ConfigError(
            f"checkpoint {folder}: written for other token ids (digest {state['token_digest']}, this run "
            f"{token_digest}): data, variant or tokenizer changed; start a new run instead"
        )
    if state["world_size"] != world_size:
        raise ConfigError(
            f"checkpoint {folder}: written by {state['world_size']} workers, this run has {world_size}; "
            f"resuming would change the data split and the result; use resources.workers_per_trial={state['world_size']}"
        )
    return state


# --- random state ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(world_size: int) -> list[dict]:
    """Every rank's RNG state, indexed by rank (rank 0 saves them all); a collective over ranks."""
    if world_size == 1:
        return [_rng_state()]
    states: list[dict] = [{} for _ in range(world_size)]
    dist.all_gather_object(states, _rng_state())
    return states
