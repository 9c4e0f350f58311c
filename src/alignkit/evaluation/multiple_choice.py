"""Multiple-choice evaluation by log-probabilities, for question files users already have.

    questions, report = load_multiple_choice("truthfulqa_mc.json")
    result = evaluate_multiple_choice(backend, questions, report=report)
    print(result.mc1.value, result.mc2.value)
    result.save("runs/tqa")          # writes mc.json and mc_items.jsonl

Record shapes and file types are described in :mod:`alignkit.evaluation.multiple_choice_data`.

Scoring. Every distinct (question, choice) pair is scored in one ``backend.logprobs`` call, the
choice being the assistant's reply to the prompt. Per question:

- **MC1**: 1 if the right choice has the highest total log-prob (ties share the credit: 1/k
  when the right choice is one of k tied best), else 0. **MC1 normalised** is the same with
  the per-token mean log-prob, which removes the bias towards short choices.
- **MC2** (TruthfulQA): the probability mass on the true ``mc2_targets`` choices, normalised
  over all of them: ``sum_true p / sum_all p`` with ``p = exp(total log-prob)``. Only
  questions with ``mc2_targets`` have it; ``mc2`` is null when none has.

Each figure is the mean over questions with its CI (:func:`alignkit.evaluation.stats.estimate`:
a score interval for MC1, which is a proportion, and a BCa bootstrap interval for MC2).

``mc.json`` (:meth:`MCResult.to_dict`)::

    {"kind": "multiple_choice", "file": "tqa.json", "model": "testbed",
     "formats": {"truthfulqa": 100}, "n": 100, "chance": 0.21,
     "mc1": {"value", "low", "high", "n"}, "mc1_normalised": {...}, "mc2": {...} | null,
     "by_category": {"fact": {"n": 40, "chance": 0.25, "mc1": {...},
                              "mc1_normalised": {...}, "mc2": {...} | null}, ...},
     "skipped": {"count": 2, "reasons": {"missing_field": 2}},
     "confidence": 0.95, "created": "2026-11-27T08:00:00Z", "alignkit_version": "0.1.0"}

``chance`` is the MC1 accuracy of uniform guessing (mean of 1 / number of choices).
``by_category`` is empty when no question has a category (questions without one are listed
as ``"uncategorised"`` otherwise). ``mc_items.jsonl`` (:meth:`MCResult.item_rows`) has one row
per question: ``{"id", "category", "prompt", "answer", "predicted", "predicted_normalised",
"mc1", "mc1_normalised", "mc2", "logprobs", "num_tokens"}`` (the last two per MC1 choice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from alignkit.data.preference import LoadReport
from alignkit.errors import DataError, UnsupportedError
from alignkit.evaluation.multiple_choice_data import (
    SHAPES,
    MCQuestion,
    detect_shape,
    load_multiple_choice,
    load_multiple_choice_files,
    parse_question,
)
from alignkit.evaluation.rundir import write_json, write_jsonl
from alignkit.evaluation.stats import Estimate, estimate
from alignkit.models.base import ModelBackend, TokenLogprobs

__all__ = [
    "SHAPES",
    "MCItem",
    "MCQuestion",
    "MCResult",
    "detect_shape",
    "evaluate_multiple_choice",
    "load_multiple_choice",
    "load_multiple_choice_files",
    "mc1_credit",
    "mc2_mass",
    "parse_question",
    "score_question",
]

# ---------------------------------------------------------------------------------- scoring


@dataclass
class MCItem:
    """The scores of one question."""

    question: MCQuestion
    logprobs: list[float]  # total log-prob of each MC1 choice
    num_tokens: list[int]
    mc1: float
    mc1_normalised: float
    mc2: float | None

    @property
    def predicted(self) -> int:
        return max(range(len(self.logprobs)), key=self.logprobs.__getitem__)

    @property
    def predicted_normalised(self) -> int:
        means = [lp / max(n, 1) for lp, n in zip(self.logprobs, self.num_tokens, strict=True)]
        return max(range(len(means)), key=means.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        q = self.question
        return {
            "id": q.id,
            "category": q.category,
            "prompt": q.prompt,
            "answer": q.answer,
            "predicted": self.predicted,
            "predicted_normalised": self.predicted_normalised,
            "mc1": self.mc1,
            "mc1_normalised": self.mc1_normalised,
            "mc2": self.mc2,
            "logprobs": self.logprobs,
            "num_tokens": self.num_tokens,
        }


def mc1_credit(scores: Sequence[float], answer: int) -> float:
    """1 if ``scores[answer]`` is the strict maximum; 1/k if it ties with k-1 others; else 0."""
    best = max(scores)
    if scores[answer] < best:
        return 0.0
    return 1.0 / sum(1 for s in scores if s == best)


def mc2_mass(totals: Sequence[float], labels: Sequence[bool]) -> float:
    """Probability mass on the true choices, normalised over all choices (log-sum-exp safe)."""
    top = max(totals)
    weights = [math.exp(t - top) for t in totals]
    return sum(w for w, true in zip(weights, labels, strict=True) if true) / sum(weights)


def _score_pairs(
    backend: ModelBackend, questions: Sequence[MCQuestion]
) -> dict[tuple[int, str], TokenLogprobs]:
    """Score every distinct (question, choice) pair in one ``logprobs`` call."""
    keys: dict[tuple[int, str], None] = {}
    for i, q in enumerate(questions):
        for choice in [*q.choices, *(q.mc2_choices or [])]:
            keys[(i, choice)] = None
    pairs = list(keys)
    results = backend.logprobs([questions[i].prompt for i, _ in pairs], [c for _, c in pairs])
    if len(results) != len(pairs):
        raise UnsupportedError(
            f"backend {backend.name} returned {len(results)} log-prob results for {len(pairs)} "
            "(prompt, choice) pairs"
        )
    return dict(zip(pairs, results, strict=True))


def _check_logprobs(backend: ModelBackend) -> None:
    if getattr(backend, "supports_logprobs", False):
        return
    probe = getattr(backend, "probe_logprobs", None)
    if callable(probe) and probe():
        return
    raise UnsupportedError(
        f"multiple-choice evaluation scores choices by log-probability, and backend "
        f"{getattr(backend, 'name', type(backend).__name__)} gives no log-probs; use a local "
        "model (hf:PATH), the testbed, or a server that returns prompt log-probs"
    )


def score_question(q: MCQuestion, scored: Mapping[str, TokenLogprobs]) -> MCItem:
    """The MC1, normalised MC1 and MC2 scores of ``q`` from its choices' log-probs."""
    totals = [scored[c].total for c in q.choices]
    means = [scored[c].mean for c in q.choices]
    mc2 = None
    if q.mc2_choices is not None and q.mc2_labels is not None:
        mc2 = mc2_mass([scored[c].total for c in q.mc2_choices], q.mc2_labels)
    return MCItem(
        question=q,
        logprobs=totals,
        num_tokens=[len(scored[c].logprobs) for c in q.choices],
        mc1=mc1_credit(totals, q.answer),
        mc1_normalised=mc1_credit(means, q.answer),
        mc2=mc2,
    )


@dataclass
class MCResult:
    """Multiple-choice results of one model on one question file (see the module docstring)."""

    model: str
    items: list[MCItem]
    file: str | None = None
    formats: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    confidence: float = 0.95
    n_resamples: int = 2000
    seed: int = 0

    def _estimates(self, items: list[MCItem]) -> dict[str, Any]:
        def ci(values: list[float]) -> Estimate:
            return estimate(values, self.confidence, self.n_resamples, self.seed)

        mc2 = [it.mc2 for it in items if it.mc2 is not None]
        return {
            "n": len(items),
            "chance": sum(1 / len(it.logprobs) for it in items) / max(len(items), 1),
            "mc1": ci([it.mc1 for it in items]),
            "mc1_normalised": ci([it.mc1_normalised for it in items]),
            "mc2": ci(mc2) if mc2 else None,
        }

    @cached_property
    def overall(self) -> dict[str, Any]:
        """``n``, ``chance``, ``mc1``, ``mc1_normalised`` and ``mc2`` over all questions."""
        return self._estimates(self.items)

    @property
    def mc1(self) -> Estimate:
        return self.overall["mc1"]

    @property
    def mc1_normalised(self) -> Estimate:
        return self.overall["mc1_normalised"]

    @property
    def mc2(self) -> Estimate | None:
        """None when no question has ``mc2_targets``."""
        return self.overall["mc2"]

    def by_category(self) -> dict[str, dict[str, Any]]:
        """Figures per category; empty when no question has one."""
        groups: dict[str, list[MCItem]] = {}
        for it in self.items:
            groups.setdefault(it.question.category or "uncategorised", []).append(it)
        if list(groups) == ["uncategorised"]:
            return {}
        return {name: self._estimates(groups[name]) for name in sorted(groups)}

    def to_dict(self) -> dict[str, Any]:
        """The ``mc.json`` layout (JSON-ready: Estimates as dicts, NaN as null)."""
        from alignkit import __version__

        def plain(figures: dict[str, Any]) -> dict[str, Any]:
            return {k: v.to_dict() if isinstance(v, Estimate) else v for k, v in figures.items()}

        overall = plain(self.overall)
        return {
            "kind": "multiple_choice",
            "file": self.file,
            "model": self.model,
            "formats": dict(self.formats),
            **overall,
            "by_category": {k: plain(v) for k, v in self.by_category().items()},
            "skipped": {"count": sum(self.skipped.values()), "reasons": dict(self.skipped)},
            "confidence": self.confidence,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "alignkit_version": __version__,
        }

    def item_rows(self) -> list[dict[str, Any]]:
        """One JSON-ready row per question (the ``mc_items.jsonl`` layout)."""
        return [it.to_dict() for it in self.items]

    def save(self, run_dir: str | Path) -> Path:
        """Write ``mc.json`` and ``mc_items.jsonl`` into ``run_dir`` atomically; returns mc.json."""
        directory = Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        write_jsonl(directory / "mc_items.jsonl", self.item_rows())
        path = directory / "mc.json"
        write_json(path, self.to_dict())
        return path


def evaluate_multiple_choice(
    backend: ModelBackend,
    questions: Sequence[MCQuestion],
    *,
    report: LoadReport | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> MCResult:
    """Score ``questions`` with ``backend``'s log-probs (MC1, normalised MC1, MC2).

    ``report`` (from :func:`load_multiple_choice`) supplies the file name, its shape and the
    skipped-record counts for ``mc.json``. Raises :class:`UnsupportedError` when the backend
    gives no log-probs and :class:`DataError` when there are no questions.
    """
    if not questions:
        raise DataError("no multiple-choice questions to evaluate")
    _check_logprobs(backend)
    scored = _score_pairs(backend, questions)
    items = [
        score_question(q, {c: scored[(i, c)] for c in [*q.choices, *(q.mc2_choices or [])]})
        for i, q in enumerate(questions)
    ]
    return MCResult(
        model=backend.name,
        items=items,
        file=report.source if report else None,
        formats=dict(report.formats) if report else {},
        skipped=dict(report.skipped) if report else {},
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )
