"""SuperNI metrics: exact match and ROUGE-L with Tk-Instruct's normalisation and multi-reference rule.

Mirrors Tk-Instruct's src/compute_metrics.py (English path):
- exact match compares `itstudy.answers.normalize_answer` strings; ROUGE-L is rouge-score's F-measure with the
  Porter stemmer on the raw strings; with several references an instance gets the best one;
- per instance both are in [0, 1]; every aggregate is a percent (x100);
- `aggregate` groups by task (`<metric>_for_<task>`), by first category, by classification vs
  generation and overall, after Tk-Instruct's two data fixes (`EXCLUDED_FROM_POOLED`,
  `TASK_RENAMES`).

Two overall averages are reported: `exact_match` / `rougeL` are means over instances (what
Tk-Instruct and the paper report); `exact_match_task_mean` / `rougeL_task_mean` are means of the
per-task means. They coincide when every task has the same number of instances (100 per test
task in SuperNI); they differ when tasks are short, and then the task mean weighs tasks equally.

Beside them, figures that tell format learning from instruction reading (classification only):
- `label_space_rate`: the share of predictions that are, after normalisation, one of the task's
  labels: "learned the output format";
- `rank_exact_match`: exact match of the label the model scores most likely (rank classification,
  computed by `itstudy.training.evaluate`), free of the output format; model-free baselines have
  none (a baseline that guesses labels would score the same as its exact match);
- `pair_rule_accuracy` against `pair_rule_chance`: exact match on the inputs that two tasks of a
  counterfactual pair share and label differently, against the mean 1/|labels|; only a model
  that reads the definition beats chance there;
- `negation_follow_rate` / `negation_habit_rate` under the negated variant: among predictions
  inside the label space, the share that give the negated instruction's answer / the original one.
These are aggregated like exact match (overall, `_for_<task>`, `_for_<category>`), the pair
accuracy per pair (`pair_rule_accuracy_for_<first task of the pair>`), and absent where no
prediction defines them.

This module scores predictions; it does not generate them, and it never sees a model.
"""

from __future__ import annotations

import functools
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from rouge_score import rouge_scorer

from itstudy.answers import normalize_answer
from itstudy.data.task import Task

# Tk-Instruct removes task1415 (youtube caption corrections) before computing any figure; we keep
# its per-task numbers visible but leave it out of every pooled figure.
EXCLUDED_FROM_POOLED = ("task1415_",)
# Tk-Instruct renames this task before grouping (its file was renamed upstream).
TASK_RENAMES = {"task121_atomic_question_rewriting": "task121_zest_question_rewriting"}

METRICS = ("exact_match", "rougeL")


def _check_references(references: Sequence[str]) -> None:
    if not references:
        raise ValueError("a prediction needs at least one reference to be scored")


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    _check_references(references)
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(reference) for reference in references))


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """The best ROUGE-L F-measure of the prediction against any reference, in [0, 1]."""
    _check_references(references)
    scorer = _rouge_l_scorer()
    return max(scorer.score(target=reference, prediction=prediction)["rougeL"].fmeasure for reference in references)


@dataclass(frozen=True)
class Prediction:
    """What a model or baseline answered for one evaluation instance."""

    task: str
    category: str
    instance_id: str
    prediction: str
    references: tuple[str, ...]
    is_classification: bool
    prompt_hash: str = ""
    """Fingerprint of the prompt the answer came from ('' for baselines, which see no prompt)."""
    labels: tuple[str, ...] = ()
    """The task's label space; () for a generation task."""
    rank_choice: str | None = None
    """The label the model scores most likely (rank classification); None when not ranked."""
    habit_references: tuple[str, ...] = ()
    """Under the negated variant, the references of the original instruction; () otherwise."""
    pair: str = ""
    """The counterfactual pair whose two definitions label this input differently ('' if none)."""


@dataclass(frozen=True)
class ScoredPrediction:
    """A prediction with its per-instance scores, each in [0, 1]; None where a score is undefined."""

    prediction: Prediction
    exact_match: float
    rougeL: float
    in_label_space: float | None = None
    rank_exact_match: float | None = None
    habit_match: float | None = None
    """Under the negated variant: 1.0 if the prediction is the original instruction's answer."""

    def record(self) -> dict:
        """One line of predictions.jsonl."""
        p = self.prediction
        return {
            "task": p.task,
            "category": p.category,
            "instance_id": p.instance_id,
            "prompt_hash": p.prompt_hash,
            "prediction": p.prediction,
            "references": list(p.references),
            "is_classification": p.is_classification,
            "exact_match": self.exact_match,
            "rougeL": self.rougeL,
            "in_label_space": self.in_label_space,
            "rank_choice": p.rank_choice,
            "rank_exact_match": self.rank_exact_match,
        }


def in_label_space(prediction: str, labels: Sequence[str]) -> float:
    """1.0 if the normalised prediction is one of the normalised labels, else 0.0."""
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(label) for label in labels))


def score_prediction(p: Prediction) -> ScoredPrediction:
    """Exact match and ROUGE-L (best over the references) and, where defined, the format and probe scores."""
    return ScoredPrediction(
        p,
        exact_match(p.prediction, p.references),
        rouge_l(p.prediction, p.references),
        in_label_space=in_label_space(p.prediction, p.labels) if p.labels else None,
        rank_exact_match=None if p.rank_choice is None else exact_match(p.rank_choice, p.references),
        habit_match=exact_match(p.prediction, p.habit_references) if p.habit_references else None,
    )


def score_predictions(predictions: Iterable[Prediction]) -> list[ScoredPrediction]:
    """`score_prediction` of each prediction."""
    return [score_prediction(p) for p in predictions]


def counterfactual_pair_inputs(tasks: Sequence[Task]) -> dict[tuple[str, str], str]:
    """(task, instance id) -> pair name for every instance whose input the task's counterfactual
    partner (`Task.counterfactual_of`, when it is among `tasks`) also has, with other references.

    A pair is named by the alphabetically first of its two tasks.
    """
    by_name = {task.name: task for task in tasks}
    marked: dict[tuple[str, str], str] = {}
    for task in tasks:
        partner = by_name.get(task.counterfactual_of)
        if partner is None:
            continue
        partner_answers = {i.input: {normalize_answer(o) for o in i.outputs} for i in partner.instances}
        pair = min(task.name, partner.name)
        for instance in task.instances:
            answers = partner_answers.get(instance.input)
            if answers is not None and not answers & {normalize_answer(o) for o in instance.outputs}:
                marked[(task.name, instance.id)] = pair
    return marked


def reported_task_name(task: str) -> str:
    """The name Tk-Instruct groups a task under (see TASK_RENAMES)."""
    return TASK_RENAMES.get(task, task)


def in_pooled_figures(task: str) -> bool:
    """False for tasks Tk-Instruct leaves out of every pooled figure (see EXCLUDED_FROM_POOLED)."""
    return not task.startswith(EXCLUDED_FROM_POOLED)


def _percent_means(scored: Sequence[ScoredPrediction], prefix: str = "", suffix: str = "") -> dict[str, float]:
    return {f"{prefix}{metric}{suffix}": 100.0 * statistics.fmean(getattr(s, metric) for s in scored) for metric in METRICS}


def _group(scored: Iterable[ScoredPrediction], key) -> dict[str, list[ScoredPrediction]]:
    groups: dict[str, list[ScoredPrediction]] = defaultdict(list)
    for s in scored:
        groups[key(s)].append(s)
    return dict(sorted(groups.items()))


def aggregate(scored: Sequence[ScoredPrediction]) -> dict[str, float]:
    """Percent figures: overall (instance mean and task mean), per task, per category, per kind.

    Keys: `exact_match`, `rougeL`, `exact_match_task_mean`, `rougeL_task_mean`,
    `<metric>_for_<task>`, `<metric>_for_<category>`, `<metric>_classification`,
    `<metric>_generation` (a kind's keys appear only when it has predictions); then the
    format and probe figures of `format_and_probe_figures`.
    """
    by_task = _group(scored, lambda s: reported_task_name(s.prediction.task))
    figures: dict[str, float] = {}
    for task, task_scored in by_task.items():
        figures.update(_percent_means(task_scored, suffix=f"_for_{task}"))

    pooled = [s for s in scored if in_pooled_figures(s.prediction.task)]
    figures.update(format_and_probe_figures(scored))
    if not pooled:
        return figures
    figures.update(_percent_means(pooled))
    pooled_tasks = [task_scored for task, task_scored in by_task.items() if in_pooled_figures(task)]
    for metric in METRICS:
        task_means = [statistics.fmean(getattr(s, metric) for s in group) for group in pooled_tasks]
        figures[f"{metric}_task_mean"] = 100.0 * statistics.fmean(task_means)
    for category, category_scored in _group(pooled, lambda s: s.prediction.category).items():
        figures.update(_percent_means(category_scored, suffix=f"_for_{category}"))
    for kind, kind_scored in _group(pooled, _kind).items():
        figures.update(_percent_means(kind_scored, suffix=f"_{kind}"))
    return figures


# Per-instance scores defined on classification instances only, aggregated like exact match
# (no classification/generation split: it would repeat the overall figure).
FORMAT_METRICS = {"label_space_rate": "in_label_space", "rank_exact_match": "rank_exact_match"}


def _defined_mean(scored: Iterable[ScoredPrediction], score: str) -> float | None:
    values = [value for s in scored if (value := getattr(s, score)) is not None]
    return 100.0 * statistics.fmean(values) if values else None


def format_and_probe_figures(scored: Sequence[ScoredPrediction]) -> dict[str, float]:
    """Percent figures: label_space_rate and rank_exact_match (overall, per task, per category),
    pair_rule_accuracy / pair_rule_chance (overall, accuracy per pair) and
    negation_follow_rate / negation_habit_rate; a key appears only where some prediction defines it."""
    pooled = [s for s in scored if in_pooled_figures(s.prediction.task)]
    groups = {
        "": pooled,
        **{f"_for_{task}": group for task, group in _group(scored, lambda s: reported_task_name(s.prediction.task)).items()},
        **{f"_for_{category}": group for category, group in _group(pooled, lambda s: s.prediction.category).items()},
    }
    figures = {
        f"{metric}{suffix}": mean
        for suffix, group in groups.items()
        for metric, score in FORMAT_METRICS.items()
        if (mean := _defined_mean(group, score)) is not None
    }
    figures.update(_pair_figures([s for s in pooled if s.prediction.pair and s.prediction.labels]))
    figures.update(_negation_figures([s for s in pooled if s.habit_match is not None and s.in_label_space]))
    return figures


def _pair_figures(probed: Sequence[ScoredPrediction]) -> dict[str, float]:
    if not probed:
        return {}
    figures = {
        "pair_rule_accuracy": 100.0 * statistics.fmean(s.exact_match for s in probed),
        "pair_rule_chance": 100.0 * statistics.fmean(1 / len(s.prediction.labels) for s in probed),
    }
    for pair, group in _group(probed, lambda s: s.prediction.pair).items():
        figures[f"pair_rule_accuracy_for_{pair}"] = 100.0 * statistics.fmean(s.exact_match for s in group)
    return figures


def _negation_figures(in_space: Sequence[ScoredPrediction]) -> dict[str, float]:
    if not in_space:
        return {}
    return {
        "negation_follow_rate": 100.0 * statistics.fmean(s.exact_match for s in in_space),
        "negation_habit_rate": 100.0 * statistics.fmean(s.habit_match for s in in_space),
    }


def _kind(scored: ScoredPrediction) -> str:
    return "classification" if scored.prediction.is_classification else "generation"


def task_rows(scored: Sequence[ScoredPrediction]) -> list[dict]:
    """One row per task for task_metrics.csv: task, category, is_classification, n, exact_match, rougeL (percent), in_pooled."""
    rows = []
    for task, task_scored in _group(scored, lambda s: reported_task_name(s.prediction.task)).items():
        first = task_scored[0].prediction
        rows.append(
            {
                "task": task,
                "category": first.category,
                "is_classification": first.is_classification,
                "n": len(task_scored),
                **_percent_means(task_scored),
                "in_pooled": in_pooled_figures(task),
            }
        )
    return rows
