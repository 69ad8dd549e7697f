"""One training run on Ray Train, and the `itstudy train` command.

    result = run_training(study)          # checks, prepares, trains on a TorchTrainer, tracks
    train_command(study)                  # the same, printing the final metrics and the MLflow run id

The driver does, in this order, and refuses bad settings before any Ray resource is taken:
1. `check_ray_address` (a RAY_ADDRESS that answers within seconds) and `check_run`: global batch
   divisible by workers x per-device batch, the model name known (a named shape, a folder, or a
   hub id reachable offline), a tokenizer that loads and fits the model's vocabulary; then the
   tracking store must answer (`check_tracking`);
2. `prepare_job`: data -> variant -> prompts -> token ids, once (`itstudy.training.prepare`); a
   global batch larger than the training set is refused (`check_batch_fits`);
3. MLflow: the experiment, and one run found by the config's run name or created here, tagged
   as a trial at an empty grid point (`itstudy.sweep.trials.Trial.tags`); every worker receives
   its id (rank 0 logs into it through its reporter; workers never create runs). Rerunning the
   same config reopens that run and resumes;
4. `build_trainer`: a `TorchTrainer` with `workers_per_trial` workers (DDP; gloo on CPU, NCCL on
   GPU), `FailureConfig(max_failures)` restarting from the last checkpoint, `num_to_keep`
   checkpoints, and the tracking environment in the workers' runtime env. Its run name derives
   from the config, so running the same command again resumes (Ray reuses name + storage path);
5. after `fit`, the run is ended FINISHED with a tag pointing at the final checkpoint (the model
   saved with `save_pretrained`), or FAILED with error.txt (`RunLogger` as a context manager).

For Ray Tune (`itstudy.sweep`): a single-worker trial calls `run_worker(prepare_job(...),
TuneReporter())` inside its function trainable; a multi-worker trial calls `build_trainer(job,
run_name=..., storage_path=..., callbacks=[TuneReportCallback()])` and `fit()` inside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import ray
import ray.train
import transformers
from ray.train.torch import TorchTrainer

from itstudy import paths
from itstudy.config import ConfigError, Study, config_digest, gradient_accumulation, identity_digest
from itstudy.loopback import local_ray_options
from itstudy.tracking import (
    RunLogger,
    check_tracking,
    ensure_experiment,
    experiment_name,
    get_or_create_run,
    reopen_run,
    resolve_tracking_uri,
    worker_env,
)
from itstudy.provenance import inputs_digest
from itstudy.sweep.address import check_ray_address
from itstudy.sweep.trials import make_trial
from itstudy.training.engine import batches_per_epoch
from itstudy.training.loop import WorkerJob, run_worker
from itstudy.training.models import (
    ModelSpecError,
    check_implementation,
    check_model_available,
    is_named_shape,
    load_tokenizer,
    t5_tokenizer_location,
)
from itstudy.training.prepare import prepare_run
from itstudy.training.rendezvous import LoopbackTorchConfig
from itstudy.training.reporter import RayTrainReporter


@dataclass(frozen=True)
class TrainingResult:
    """What one finished training run produced."""

    metrics: dict[str, float]
    """The final evaluation (percent) and the last training figures."""
    run_id: str | None
    """The MLflow run holding params, metrics, predictions and the config."""
    checkpoint: str | None
    """Where the final checkpoint (model via save_pretrained, tokenizer, trainer state) is stored."""
    run_name: str


# --- checks and preparation (no Ray) -----------------------------------------------------------


def check_run(study: Study, world_size: int) -> None:
    """Refuse settings that cannot run, naming the field; cheap, and before any resource is taken."""
    gradient_accumulation(study.train, world_size)  # raises ConfigError when the global batch does not divide
    try:
        check_model_available(study.model.name)
        check_implementation(study.model.name, study.model.implementation)
    except ModelSpecError as error:
        raise ConfigError(f"model.name: {error}") from None
    if study.model.tokenizer == "bpe" and not is_named_shape(study.model.name):
        raise ConfigError(
            f"model.tokenizer: 'bpe' trains a new vocabulary, which a pretrained model ({study.model.name!r}) "
            f"cannot read; use its own tokenizer (e.g. model.tokenizer={study.model.name})"
        )
    check_tokenizer(study)


T5_PIECES = 32000
"""SentencePiece pieces of T5's spiece.model; with 100 sentinels 32100 tokens, padded to 32128 embedding rows."""


def check_tokenizer(study: Study) -> None:
    """The tokenizer loads and its vocabulary fits the model's.

    A cut or replaced `spiece.model` may still load, with a few hundred pieces: a named shape would
    then be sized to it and train without complaint on a different vocabulary, so the T5
    vocabulary must be whole. A pretrained model needs an embedding row for every token.
    """
    spec = study.model.tokenizer
    if spec == "bpe":
        return  # trained on the run's own texts, and the named shape is sized to it
    if spec == "t5" and (Path(t5_tokenizer_location()) / "spiece.model").is_file():
        _check_t5_vocabulary(Path(t5_tokenizer_location()) / "spiece.model")  # read directly: 0.1 s, not a 6 s conversion
        tokens = T5_PIECES + 100
    else:
        try:
            tokens = len(load_tokenizer(spec))
        except ModelSpecError as error:
            raise ConfigError(f"model.tokenizer: {error}") from None
    if is_named_shape(study.model.name):
        return  # built with an embedding row for every token
    rows = _pretrained_vocab_size(study.model.name)
    if tokens > rows:
        raise ConfigError(
            f"model.tokenizer: {spec!r} has {tokens} tokens, more than the {rows} embedding rows of model "
            f"{study.model.name!r}; use the model's own tokenizer"
        )


def _check_t5_vocabulary(model_file: Path) -> None:
    import sentencepiece

    try:
        pieces = sentencepiece.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    except (OSError, RuntimeError) as error:
        raise ConfigError(f"model.tokenizer: t5: {model_file} is not a SentencePiece model ({str(error).splitlines()[0]})") from None
    if pieces != T5_PIECES:
        raise ConfigError(
            f"model.tokenizer: t5: {model_file} holds {pieces} pieces, T5's vocabulary has {T5_PIECES}: the file is cut "
            f"short or another vocabulary; restore T5's spiece.model (${paths.T5_TOKENIZER_ENV})"
        )


def _pretrained_vocab_size(name: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name).vocab_size


def check_batch_fits(study: Study, train_examples: int, train_tasks: int) -> None:
    """Refuse a global batch larger than the training set: an epoch would hold no step."""
    if batches_per_epoch(train_examples, study.train.global_batch_size) == 0:
        raise ConfigError(
            f"train.global_batch_size={study.train.global_batch_size} exceeds the {train_examples} training "
            f"examples ({train_tasks} tasks x data.instances_per_task); lower it or add data"
        )


def prepare_job(study: Study, run_id: str | None = None, tracking_uri: str | None = None) -> WorkerJob:
    """Check the study and build what every worker receives: data, tokenizer, run id."""
    check_run(study, study.resources.workers_per_trial)
    tokenizer, data = prepare_run(study)
    check_batch_fits(study, len(data.train), len(data.train_tasks))
    return WorkerJob(study=study, data=data, tokenizer=tokenizer, run_id=run_id, tracking_uri=tracking_uri)


def run_name(study: Study) -> str:
    """Deterministic from the config and the content of the data and tokenizer: the same command resumes
    the same Ray run and MLflow run, unless the data or tokenizer changed since."""
    return f"{study.name}-train-{identity_digest(study, inputs_digest(study))}"


# --- Ray Train -----------------------------------------------------------------------------------


def train_worker(config: dict) -> None:
    """Ray Train's per-worker function: the shared loop with Ray Train's reporter."""
    transformers.utils.logging.disable_progress_bar()  # one bar per checkpoint write floods the worker logs
    run_worker(config["job"], RayTrainReporter())


def build_trainer(job: WorkerJob, *, run_name: str, storage_path: str, callbacks: list | tuple = ()) -> TorchTrainer:
    """A TorchTrainer for `job`: workers, failure policy and checkpoint retention from the study.

    `callbacks` go into the RunConfig (e.g. `TuneReportCallback()` when a Tune trial drives it).
    """
    study = job.study
    resources = study.resources
    return TorchTrainer(
        train_worker,
        train_loop_config={"job": job},
        torch_config=LoopbackTorchConfig(),  # the rendezvous store on 127.0.0.1 when every worker is on a loopback node
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers_per_trial,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker={"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=study.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=study.train.checkpoints_to_keep),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": worker_env(job.tracking_uri)},
        ),
    )


def init_ray() -> None:
    """Join the cluster $RAY_ADDRESS names, else start a local one on this machine's CPUs."""
    if not ray.is_initialized():
        ray.init(include_dashboard=False, **({"address": os.environ["RAY_ADDRESS"]} if os.environ.get("RAY_ADDRESS") else local_ray_options()))


# --- one tracked run -----------------------------------------------------------------------------


def _mlflow_run(uri: str, study: Study, name: str) -> str:
    """The run of an earlier attempt with this config (reopened to resume), else a new one."""
    experiment_id = ensure_experiment(uri, experiment_name(study))
    identity = {"itstudy.trial_key": name, "itstudy.kind": "train"}
    # A trial at an empty grid point, keyed and digested by the study's own config (grid included).
    trial_tags = make_trial(study, {}).tags()
    tags = {**trial_tags, "itstudy.study": study.name, "itstudy.config_digest": config_digest(study), **identity}
    found = get_or_create_run(uri, experiment_id, name, identity, tags)
    if not found.created:
        reopen_run(uri, found.run_id)
    return found.run_id


def run_training(study: Study) -> TrainingResult:
    """Check, prepare, create the MLflow run, train on a TorchTrainer, end the run."""
    check_ray_address()  # seconds at most; before the tracking store is touched
    check_run(study, study.resources.workers_per_trial)
    uri = resolve_tracking_uri(study.tracking)
    check_tracking(uri)
    job = prepare_job(study, tracking_uri=uri)
    name = run_name(study)
    run_id = _mlflow_run(uri, study, name)
    job = replace(job, run_id=run_id)
    init_ray()
    with RunLogger(uri, run_id) as logger:
        storage = paths.storage_path(study.tracking.storage_path)
        result = build_trainer(job, run_name=name, storage_path=storage).fit()
        checkpoint = result.checkpoint.path if result.checkpoint else None
        logger.set_tags({"itstudy.checkpoint": checkpoint, "itstudy.ray_run": f"{storage}/{name}"})
    return TrainingResult(metrics=dict(result.metrics), run_id=run_id, checkpoint=checkpoint, run_name=name)


HEADLINE = ("exact_match", "rougeL", "exact_match_classification", "exact_match_generation", "train_loss", "step")


def train_command(study: Study) -> TrainingResult:
    """`itstudy train`: one run end to end; prints the final metrics and the MLflow run id."""
    result = run_training(study)
    print(f"run {result.run_name} finished")
    for key in HEADLINE:
        if key in result.metrics:
            print(f"  {key:28s} {result.metrics[key]:.4g}")
    for key in sorted(key for key in result.metrics if key.startswith("exact_match_for_")):
        print(f"  {key:28s} {result.metrics[key]:.4g}")
    print(f"MLflow run id: {result.run_id}  (tracking URI {resolve_tracking_uri(study.tracking)})")
    print(f"final checkpoint: {result.checkpoint}")
    return result
