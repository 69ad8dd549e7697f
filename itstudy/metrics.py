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


@dataclass(frozen=True)
class ScoredPrediction:
    """A prediction with its per-instance scores, each in [0, 1]."""

    prediction: Prediction
    exact_match: float
    rougeL: float

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
        }


def score_predictions(predictions: Iterable[Prediction]) -> list[ScoredPrediction]:
    """Per-instance exact match and ROUGE-L, best over each prediction's references."""
    return [
        ScoredPrediction(p, exact_match(p.prediction, p.references), rouge_l(p.prediction, p.references))
        for p in predictions
    ]


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
    `<metric>_generation` (a kind's keys appear only when it has predictions).
    """
    by_task = _group(scored, lambda s: reported_task_name(s.prediction.task))
    figures: dict[str, float] = {}
    for task, task_scored in by_task.items():
        figures.update(_percent_means(task_scored, suffix=f"_for_{task}"))

    pooled = [s for s in scored if in_pooled_figures(s.prediction.task)]
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
