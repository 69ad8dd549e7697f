"""Settings that cannot work are refused by `itstudy train` before Ray or any worker starts, with
one message that names the field and says what was expected (itstudy.training.runner)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from itstudy.config import ConfigError, load_study
from itstudy.training.models import new_t5, t5_config
from itstudy.training.runner import run_training

TRAIN_TINY = Path(__file__).resolve().parents[1] / "experiments" / "train_tiny.yaml"


def refused(*overrides: str) -> str:
    with pytest.raises(ConfigError) as error:
        run_training(load_study(TRAIN_TINY, list(overrides)))
    assert not ray.is_initialized()  # nothing was started
    return str(error.value)


def test_fp16_with_t5_is_refused():
    with pytest.raises(ConfigError, match=r"model: .*precision 'fp16' is refused for T5.*NaN"):
        load_study(TRAIN_TINY, ["model.precision=fp16"])


def test_a_global_batch_that_does_not_divide_over_the_workers_is_refused():
    message = refused("train.global_batch_size=10")  # 2 per device x 2 workers = 4 does not divide 10
    assert "train.global_batch_size=10" in message and "multiple of 4" in message


def test_an_unknown_model_name_offline_is_refused():
    message = refused("model.name=google/no-such-t5", "model.tokenizer=t5")
    assert message.startswith("model.name:") and "offline" in message


def test_a_bpe_tokenizer_with_a_pretrained_model_is_refused(tmp_path):
    new_t5(t5_config("scratch/t5-tiny", vocab_size=256), seed=0).save_pretrained(tmp_path / "pretrained")
    assert "model.tokenizer: 'bpe'" in refused(f"model.name={tmp_path / 'pretrained'}")


def test_a_global_batch_larger_than_the_training_set_is_refused():
    message = refused("data.instances_per_task=1", "data.max_train_tasks=2", "train.global_batch_size=8")
    assert "exceeds the 2 training examples" in message
