"""Settings that cannot work are refused by `itstudy train` before Ray or any worker starts, with
one message that names the field and says what was expected (itstudy.training.runner); `itstudy
run` refuses the same settings in its pre-flight (itstudy.sweep.preflight), before Ray or MLflow."""

from __future__ import annotations

import time
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
    message = refused("data.instances_per_task=1", "data.num_train_tasks=2", "train.global_batch_size=8")
    assert "exceeds the 2 training examples" in message


# --- itstudy run checks everything itstudy train checks, before Ray or MLflow ---------------------


def _cut_t5_vocabulary(t5_tokenizer_dir: Path, folder: Path, pieces: int = 176) -> Path:
    """A spiece.model that still loads, with only its first `pieces` pieces (as a cut download can be)."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString((t5_tokenizer_dir / "spiece.model").read_bytes())
    del model.pieces[pieces:]
    folder.mkdir()
    (folder / "spiece.model").write_bytes(model.SerializeToString())
    return folder


def _both_refuse(*overrides: str) -> tuple[str, str]:
    """The messages of `itstudy train` and of the sweep's pre-flight for the same settings; nothing started."""
    return refused(*overrides), _preflight_refuses(*overrides)


def test_a_cut_t5_vocabulary_is_refused_by_train_and_run(t5_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ITSTUDY_T5_TOKENIZER", str(_cut_t5_vocabulary(t5_tokenizer_dir, tmp_path / "cut")))
    for message in _both_refuse("model.tokenizer=t5"):
        assert "model.tokenizer: t5:" in message and "holds 176 pieces, T5's vocabulary has 32000" in message


def test_a_missing_tokenizer_is_refused_by_train_and_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ITSTUDY_T5_TOKENIZER", str(tmp_path / "no-such-folder"))
    for message in _both_refuse("model.tokenizer=t5"):
        assert "model.tokenizer: tokenizer 't5': cannot load" in message and "no-such-folder" in message


def _preflight_refuses(*overrides: str) -> str:
    from itstudy.sweep.preflight import preflight
    from itstudy.sweep.trials import expand_grid

    study = load_study(TRAIN_TINY, list(overrides))
    with pytest.raises(ConfigError) as error:
        preflight(study, expand_grid(study))
    assert not ray.is_initialized()
    return str(error.value)


def test_a_global_batch_larger_than_the_data_is_refused_by_run_too():
    # `train` refuses it too (test_a_global_batch_larger_than_the_training_set_is_refused)
    message = _preflight_refuses("data.instances_per_task=1", "data.num_train_tasks=2", "train.global_batch_size=8")
    assert "exceeds the 2 training examples" in message


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpus_this_machine_does_not_have_are_refused_instead_of_waited_for():
    message = _preflight_refuses("resources.gpus_per_worker=1")
    assert "gpus_per_worker=1 x workers_per_trial=2 needs 2 GPUs; this machine (no RAY_ADDRESS: a local Ray) has 0" in message


def test_a_dead_ray_address_is_refused_in_seconds_before_the_store(monkeypatch, isolated_home):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens on port 1
    started = time.monotonic()
    message = refused()
    assert message.startswith("RAY_ADDRESS=127.0.0.1:1: no Ray cluster answers there")
    assert time.monotonic() - started < 15 and not isolated_home.exists()  # no store was created
