"""Side-by-side comparison of two evaluation runs with a paired test per metric.

Two runs of ``alignkit eval`` on the same suite score the same items (item ids are stable for
a suite, ``n`` and seed). For every metric of ``eval.json`` present in both runs,
:func:`compare_runs` pairs the per-item scores of ``eval_items.jsonl`` by item id (items where
either score is null are left out) and tests ``mean(B - A)`` with
:func:`alignkit.evaluation.stats.paired_test`: the exact McNemar test and Newcombe's paired
interval where both runs score pass/fail, a sign-flip permutation test and a BCa interval
otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import DataError
from alignkit.evaluation.rundir import RunData, as_float, load_run
from alignkit.evaluation.stats import PairedTest, paired_test


@dataclass
class MetricComparison:
    """One metric in both runs: each run's Estimate dict and the paired test of B - A."""

    metric: str
    a: dict[str, Any]
    b: dict[str, Any]
    test: PairedTest
    higher_is_better: bool = True
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        """Whether the paired difference is significant at level ``alpha``."""
        return not math.isnan(self.test.p_value) and self.test.p_value < self.alpha

    @property
    def better(self) -> str | None:
        """``"A"`` or ``"B"`` for the run that is significantly better on this metric, else None."""
        if not self.significant or self.test.diff == 0:
            return None
        b_higher = self.test.diff > 0
        return "B" if b_higher == self.higher_is_better else "A"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "metric": self.metric,
            "a": self.a,
            "b": self.b,
            "test": self.test.to_dict(),
            "higher_is_better": self.higher_is_better,
            "significant": self.significant,
            "better": self.better,
        }


@dataclass
class Comparison:
    """The comparison of run B against run A (differences are B - A)."""

    run_a: Path
    run_b: Path
    model_a: str | None
    model_b: str | None
    suite: str | None
    n_common_items: int
    metrics: list[MetricComparison]
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "run_a": str(self.run_a),
            "run_b": str(self.run_b),
            "model_a": self.model_a,
            "model_b": self.model_b,
            "suite": self.suite,
            "n_common_items": self.n_common_items,
            "confidence": self.confidence,
            "metrics": [m.to_dict() for m in self.metrics],
        }


def _mismatch(a: RunData, b: RunData, what: str) -> DataError:
    return DataError(f"cannot compare runs {str(a.path)!r} and {str(b.path)!r}: {what}")


def _check_comparable(a: RunData, b: RunData) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two eval.json dicts, after checking the runs can be compared item by item."""
    for run in (a, b):
        if run.eval is None:
            raise _mismatch(a, b, f"{str(run.path)!r} has no eval.json")
        if not run.items:
            raise _mismatch(a, b, f"{str(run.path)!r} has no eval_items.jsonl (per-item scores)")
    if a.suite != b.suite:
        raise _mismatch(a, b, f"different suites ({a.suite!r} vs {b.suite!r})")
    return a.eval, b.eval  # type: ignore[return-value]


def _higher_is_better(eval_a: dict[str, Any], metric: str) -> bool:
    dimensions = eval_a.get("dimensions") or {}
    dimension = dimensions.get(metric.rsplit("/", 1)[-1]) or {}
    return bool(dimension.get("higher_is_better", True))


def _paired_scores(
    a: RunData, b: RunData, ids: list[str], metric: str
) -> tuple[list[float], list[float]]:
    """Per-item scores of ``metric`` in both runs, over items where both are numbers."""
    rows_a = {row["id"]: row for row in a.items}
    rows_b = {row["id"]: row for row in b.items}
    xs, ys = [], []
    for item_id in ids:
        x = as_float((rows_a[item_id].get("scores") or {}).get(metric))
        y = as_float((rows_b[item_id].get("scores") or {}).get(metric))
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def compare_runs(
    run_a: str | Path | RunData,
    run_b: str | Path | RunData,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare run B against run A metric by metric, paired by item id.

    Raises DataError (naming both directories) if either run lacks eval.json or per-item
    scores, if they ran different suites, or if they share no item ids or no metrics.
    """
    a = run_a if isinstance(run_a, RunData) else load_run(run_a)
    b = run_b if isinstance(run_b, RunData) else load_run(run_b)
    eval_a, eval_b = _check_comparable(a, b)
    ids_b = {row["id"] for row in b.items}
    common_ids = [row["id"] for row in a.items if row["id"] in ids_b]
    if not common_ids:
        raise _mismatch(a, b, "no item ids in common (different suite size or seed?)")
    metrics_a, metrics_b = eval_a.get("metrics") or {}, eval_b.get("metrics") or {}
    names = [m for m in metrics_a if m in metrics_b]
    if not names:
        raise _mismatch(a, b, f"no metrics in common ({sorted(metrics_a)} vs {sorted(metrics_b)})")
    rows = []
    for metric in names:
        xs, ys = _paired_scores(a, b, common_ids, metric)
        test = paired_test(xs, ys, confidence=confidence, n_resamples=n_resamples, seed=seed)
        rows.append(
            MetricComparison(
                metric=metric,
                a=metrics_a[metric],
                b=metrics_b[metric],
                test=test,
                higher_is_better=_higher_is_better(eval_a, metric),
                alpha=1.0 - confidence,
            )
        )
    return Comparison(
        run_a=a.path,
        run_b=b.path,
        model_a=a.model,
        model_b=b.model,
        suite=a.suite,
        n_common_items=len(common_ids),
        metrics=rows,
        confidence=confidence,
    )
