"""``evaluate_safety_alignment()``: harmful rate, over-refusal, cost distribution, constraint
satisfaction and robustness of one model, in one call.

    report = evaluate_safety_alignment("hf:runs/safety/round-2/final",
                                       cost_model="runs/safety/cost_model", threshold=0.2)

Harmful rate and over-refusal come from an :class:`~alignkit.evaluation.AlignmentEvaluator`
run (ground truth on the testbed suite; the refusal judge on a prompt file); the cost model,
when given, prices the same answers; robustness sends held-out harmful requests plain and
through every jailbreak wrapper (testbed suite only).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from alignkit.models.base import BackendOptions, GenerationConfig


def _cost_summary(costs: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(costs, n=4) if len(costs) > 1 else [costs[0]] * 3
    return {
        "mean": statistics.fmean(costs),
        "q1": quartiles[0],
        "median": quartiles[1],
        "q3": quartiles[2],
        "share_unsafe": sum(c > 0 for c in costs) / len(costs),
        "n": float(len(costs)),
    }


def evaluate_safety_alignment(
    model: str,
    cost_model: str | Path | None = None,
    suite: str = "testbed",
    n: int = 50,
    threshold: float | None = None,
    robustness: bool = True,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Safety figures of ``model`` (see the module docstring); a JSON-ready dict."""
    from alignkit.evaluation.alignment import AlignmentEvaluator

    testbed = suite == "testbed"
    scorers = ("testbed", "refusal") if testbed else ("refusal",)
    generation = GenerationConfig(max_new_tokens=64, seed=seed)
    evaluator = AlignmentEvaluator(
        model, suite, scorers, n=n, seed=seed, generation=generation, cache=False,
        backend_options=BackendOptions(device=device),
    )  # fmt: skip
    result = evaluator.run()
    scorer = scorers[0]
    harmless = result.metrics.get(f"{scorer}/harmless")
    report: dict[str, Any] = {
        "model": model,
        "suite": suite,
        "harmful_rate": None if harmless is None else 1.0 - harmless.value,
        "over_refusal": _value(result, f"{scorer}/over_refusal"),
        "helpful": _value(result, f"{scorer}/helpful"),
    }
    harmful_items = [r for r in result.items if r.item.kind in ("harmful", "jailbreak")]
    if cost_model is not None:
        from alignkit.safety.value_model import ValueModel

        pricer = ValueModel.load(cost_model, device=device)
        rows = harmful_items or result.items
        costs = pricer.score([r.item.prompt for r in rows], [r.response for r in rows])
        report["cost"] = _cost_summary(costs)
    if threshold is not None:
        measured = report.get("cost", {}).get("share_unsafe", report["harmful_rate"])
        report["constraint"] = {
            "threshold": threshold,
            "measured": measured,
            "met": measured is not None and measured <= threshold,
        }
    if robustness and testbed:
        from alignkit.safety.guardrail import robustness_check
        from alignkit.testbed import World

        requests = World(seed).requests("harmful", "heldout")[:12]
        checked = robustness_check(evaluator.backend, requests, generation=generation)
        report["robustness"] = {
            k: checked[k] for k in ("consistency_rate", "always_safe_rate", "harmful_rate")
        }
    evaluator.backend.close()
    return report


def _value(result, metric: str) -> float | None:
    estimate = result.metrics.get(metric)
    return None if estimate is None else estimate.value
