"""``AlignmentEvaluator``: helpful / harmless / honest scores of any model, with confidence
intervals, breakdowns per category, and every judge's agreement with ground truth.

The evaluator draws a suite of prompts, generates one response per prompt (through the call
cache, so a rerun resumes where a crashed one stopped), scores the responses with each scorer,
and reports every figure as a mean with its ``n`` and a confidence interval (a score interval
for pass/fail rates, BCa bootstrap otherwise; :func:`~alignkit.evaluation.stats.estimate`).
When the ground-truth ``testbed`` scorer runs beside other scorers, each other scorer's
agreement with it (and Cohen's kappa) is reported per dimension, so users see how far to trust
a judge.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.evaluation.cache import CachedBackend, CallCache
from alignkit.evaluation.rundir import write_json, write_jsonl
from alignkit.evaluation.scorers import DIMENSIONS, Scorer, build_scorer, definitions
from alignkit.evaluation.stats import Estimate, estimate
from alignkit.evaluation.suites import EvalItem, load_suite
from alignkit.models.base import GenerationConfig, ModelBackend
from alignkit.models.resilient import chunk_size

GROUND_TRUTH = "testbed"


def _version() -> str:
    from alignkit import __version__

    return __version__


@dataclass
class ItemResult:
    item: EvalItem
    response: str
    scores: dict[str, float | None] = field(default_factory=dict)  # "scorer/dimension" -> score

    def to_dict(self) -> dict:
        return {**self.item.to_dict(), "response": self.response, "scores": self.scores}


def kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa of two binary raters (nan when chance agreement is total)."""
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    return math.nan if chance >= 1 else (observed - chance) / (1 - chance)


@dataclass
class AlignmentResult:
    """What :meth:`AlignmentEvaluator.run` measured; ``save()`` writes a run directory."""

    model: str
    suite: str
    items: list[ItemResult]
    metrics: dict[str, Estimate]
    breakdown: dict[str, dict[str, Estimate]]
    agreement: dict[str, dict[str, float | None]]
    scorers: list[str]
    seed: int = 0
    generation: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=lambda: {"count": 0, "reasons": {}})
    definitions: dict[str, str] = field(default_factory=dict)  # "scorer/dim" -> what it measures

    def value(self, metric: str) -> float:
        return self.metrics[metric].value

    def to_dict(self) -> dict:
        return {
            "kind": "alignment",
            "model": self.model,
            "suite": self.suite,
            "n_items": len(self.items),
            "seed": self.seed,
            "generation": self.generation,
            "scorers": self.scorers,
            "dimensions": {
                k: {"description": d.description, "higher_is_better": d.higher_is_better}
                for k, d in DIMENSIONS.items()
            },
            "definitions": self.definitions,
            "metrics": {k: e.to_dict() for k, e in self.metrics.items()},
            "breakdown": {
                k: {g: e.to_dict() for g, e in groups.items()}
                for k, groups in self.breakdown.items()
            },
            "agreement": self.agreement,
            "skipped": self.skipped,
            "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "alignkit_version": _version(),
        }

    def save(self, run_dir: str | Path) -> Path:
        """Write ``eval.json`` and ``eval_items.jsonl`` into ``run_dir``."""
        run_dir = Path(run_dir)
        write_json(run_dir / "eval.json", self.to_dict())
        write_jsonl(run_dir / "eval_items.jsonl", [row.to_dict() for row in self.items])
        return run_dir


def summarise(
    items: list[ItemResult], seed: int = 0
) -> tuple[dict[str, Estimate], dict[str, dict[str, Estimate]]]:
    """Per-metric estimates and per-group breakdowns over the items where a metric applies."""
    values: dict[str, list[float]] = defaultdict(list)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in items:
        for metric, score in row.scores.items():
            if score is not None:
                values[metric].append(score)
                groups[metric][row.item.group].append(score)
    metrics = {m: estimate(v, seed=seed) for m, v in sorted(values.items())}
    breakdown = {
        m: {g: estimate(v, seed=seed) for g, v in sorted(by.items())}
        for m, by in sorted(groups.items())
    }
    return metrics, breakdown


def agreement_with_truth(items: list[ItemResult]) -> dict[str, dict[str, float]]:
    """For each non-ground-truth metric, agreement with the ``testbed`` one (scores cut at 0.5)."""
    out: dict[str, dict[str, float]] = {}
    metrics = sorted({m for row in items for m in row.scores})
    for metric in metrics:
        scorer, _, dim = metric.partition("/")
        truth = f"{GROUND_TRUTH}/{dim}"
        if scorer == GROUND_TRUTH or truth not in metrics:
            continue
        pairs = [
            (row.scores[truth] >= 0.5, row.scores[metric] >= 0.5)
            for row in items
            if row.scores.get(truth) is not None and row.scores.get(metric) is not None
        ]
        if pairs:
            a, b = zip(*pairs, strict=True)
            agree = sum(x == y for x, y in pairs) / len(pairs)
            k = kappa(a, b)
            out[metric] = {
                "agreement": agree,
                "kappa": None if math.isnan(k) else k,
                "n": len(pairs),
            }
    return out


class AlignmentEvaluator:
    """Evaluate one model on a suite with several scorers.

    ``AlignmentEvaluator("testbed").run()`` scores 100 held-out testbed prompts of each kind with
    the ground-truth labeller and the refusal judge; ``scorers`` may name any registered scorer
    (``llm-judge`` needs ``judge=``; ``reward-model`` needs ``reward_model=``).
    """

    def __init__(
        self,
        model: str | ModelBackend,
        suite: str | Sequence[EvalItem] = "testbed",
        scorers: Sequence[str | Scorer] = ("testbed", "refusal"),
        n: int = 100,
        seed: int = 0,
        generation: GenerationConfig | None = None,
        cache: CallCache | str | Path | bool = True,
        backend_options=None,
        suite_name: str | None = None,
        **scorer_options: Any,
    ) -> None:
        self.model_name = model if isinstance(model, str) else model.name
        self.suite_name = suite_name or (suite if isinstance(suite, str) else "custom")
        self.items = load_suite(suite, n=n, seed=seed) if isinstance(suite, str) else list(suite)
        self.seed = seed
        self.generation = generation or GenerationConfig(max_new_tokens=64, seed=seed)
        self.cache = _open_cache(cache)
        self.backend = self._wrap(_backend(model, backend_options))
        judge = scorer_options.pop("judge", None)
        if judge is not None:
            same = isinstance(judge, str) and judge == self.model_name
            judge = self.backend if same else self._wrap(_backend(judge, backend_options))
            scorer_options["judge"] = judge
        self.scorers = [
            s if not isinstance(s, str) else build_scorer(s, shared=True, **scorer_options)
            for s in scorers
        ]

    def _wrap(self, backend: ModelBackend) -> ModelBackend:
        return cached(backend, self.cache)

    def responses(self) -> list[str]:
        """One response per item. A backend that can measure prompts checks them all against
        its context first, so an over-long item is named (by id) before any is generated."""
        prompts = [item.prompt for item in self.items]
        check = getattr(self.backend, "check_prompts", None)
        if check is not None:
            check(prompts, self.generation, [f"item {item.id!r}" for item in self.items])
        return [c.text for c in self.backend.generate(prompts, self.generation)]

    def run(self, output_dir: str | Path | None = None) -> AlignmentResult:
        """Generate, score, summarise; write a run directory if ``output_dir`` is given."""
        responses = self.responses()
        rows = [ItemResult(item, r) for item, r in zip(self.items, responses, strict=True)]
        unscored: dict[str, int] = defaultdict(int)
        for scorer in self.scorers:
            for row, scores in zip(rows, scorer.score(self.items, responses), strict=True):
                for dim, value in scores.items():
                    row.scores[f"{scorer.name}/{dim}"] = value
                    if value is None:
                        unscored[f"{scorer.name}: no verdict"] += 1
        metrics, breakdown = summarise(rows, self.seed)
        result = AlignmentResult(
            model=self.model_name,
            suite=self.suite_name,
            items=rows,
            metrics=metrics,
            breakdown=breakdown,
            agreement=agreement_with_truth(rows),
            scorers=[s.name for s in self.scorers],
            seed=self.seed,
            generation=self.generation.model_dump(),
            skipped={"count": sum(unscored.values()), "reasons": dict(unscored)},
            definitions={
                f"{s.name}/{dim}": text
                for s in self.scorers
                for dim, text in definitions(s).items()
            },
        )
        if output_dir is not None:
            result.save(output_dir)
        return result


def _backend(model: str | ModelBackend, options) -> ModelBackend:
    if not isinstance(model, str):
        return model
    from alignkit.models import load_backend

    return load_backend(model, options)


def cached(backend: ModelBackend, cache: CallCache | None) -> ModelBackend:
    """``backend`` answering through ``cache`` (unchanged if no cache or already cached)."""
    if cache is None or isinstance(backend, CachedBackend):
        return backend
    return CachedBackend(backend, cache, chunk_size(getattr(backend, "options", None)))


def _open_cache(cache: CallCache | str | Path | bool) -> CallCache | None:
    if cache is False or cache is None:
        return None
    if isinstance(cache, CallCache):
        return cache
    return CallCache(None if cache is True else cache)
