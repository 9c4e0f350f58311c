"""``evaluate_alignment()``: harmlessness, helpfulness and honesty of a model, and of the model
it was trained from, on the same prompts, with a paired test of every change.

    change = evaluate_alignment("hf:runs/cai/rl/final", baseline="testbed")
    change.table()   # {"harmless": {"before": 0.31, "after": 0.72, "diff": 0.41, "p_value": ...}}

Both models answer the same suite items with the same generation settings and seed; each
metric's per-item scores are paired by item id and ``mean(after - before)`` is tested with a
paired test (exact McNemar for pass/fail scores, sign-flip permutation otherwise;
:func:`alignkit.evaluation.compare.compare_runs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.evaluation.alignment import AlignmentEvaluator, AlignmentResult
from alignkit.evaluation.compare import Comparison, compare_runs
from alignkit.evaluation.rundir import RunData, write_json
from alignkit.models.base import GenerationConfig, ModelBackend

HEADLINE = ("harmless", "helpful", "honest", "over_refusal")


def _as_run(result: AlignmentResult, path: Path) -> RunData:
    return RunData(path, eval=result.to_dict(), items=[row.to_dict() for row in result.items])


@dataclass
class AlignmentChange:
    """The model's :class:`AlignmentResult`, the baseline's, and their paired comparison."""

    after: AlignmentResult
    before: AlignmentResult | None = None
    comparison: Comparison | None = None

    def table(self, scorer: str | None = None) -> dict[str, dict[str, Any]]:
        """Headline dimensions of one scorer (default: the first): before and after with their
        intervals (``before_ci``, ``after_ci``), the paired ``diff`` with its interval (``low``,
        ``high``), ``p_value`` and the paired ``n``."""
        scorer = scorer or self.after.scorers[0]
        tests = {m.metric: m.test for m in self.comparison.metrics} if self.comparison else {}
        rows: dict[str, dict[str, Any]] = {}
        for dimension in HEADLINE:
            metric = f"{scorer}/{dimension}"
            if metric not in self.after.metrics:
                continue
            before = self.before.metrics.get(metric) if self.before else None
            test = tests.get(metric)
            after = self.after.metrics[metric]
            rows[dimension] = {
                "before": before.value if before else None,
                "after": after.value,
                "before_ci": [before.low, before.high] if before else None,
                "after_ci": [after.low, after.high],
                "diff": test.diff if test else None,
                "low": test.low if test else None,
                "high": test.high if test else None,
                "p_value": test.p_value if test else None,
                "n": test.n if test else after.n,
            }
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.after.model,
            "baseline": self.before.model if self.before else None,
            "table": self.table(),
            "comparison": self.comparison.to_dict() if self.comparison else None,
        }


def evaluate_alignment(
    model: str | ModelBackend,
    baseline: str | ModelBackend | None = None,
    suite: str = "testbed",
    n: int = 100,
    seed: int = 0,
    scorers: Sequence[str] = ("testbed", "refusal"),
    generation: GenerationConfig | None = None,
    output_dir: str | Path | None = None,
    cache: bool = True,
    **scorer_options: Any,
) -> AlignmentChange:
    """Evaluate ``model`` (and ``baseline``, the model before training, if given) on ``suite``.

    With ``output_dir``, each run is saved as an ``alignkit eval`` run directory (``after/``,
    ``before/``, readable by ``alignkit report``) and the comparison as ``change.json``.
    """

    def run(which: str | ModelBackend, name: str) -> AlignmentResult:
        evaluator = AlignmentEvaluator(
            which, suite, scorers, n=n, seed=seed, generation=generation, cache=cache,
            **scorer_options,
        )  # fmt: skip
        result = evaluator.run(Path(output_dir) / name if output_dir else None)
        if isinstance(which, str):  # loaded here: free it before the next model loads
            evaluator.backend.close()
        return result

    after = run(model, "after")
    if baseline is None:
        return AlignmentChange(after)
    before = run(baseline, "before")
    root = Path(output_dir) if output_dir else Path(".")
    comparison = compare_runs(
        _as_run(before, root / "before"), _as_run(after, root / "after"), seed=seed
    )
    change = AlignmentChange(after, before, comparison)
    if output_dir:
        write_json(Path(output_dir) / "change.json", change.to_dict())
    return change
