"""``evaluate_safety_alignment()``: harmful rate, over-refusal, cost distribution, constraint
satisfaction and robustness of one model, in one call.

    report = evaluate_safety_alignment("hf:runs/safety/round-2/final",
                                       cost_model="runs/safety/cost_model", threshold=0.2)

Harmful rate and over-refusal come from an :class:`~alignkit.evaluation.AlignmentEvaluator`
run (ground truth on the testbed suite; the refusal judge on a prompt file); the cost model,
when given, prices the same answers; robustness sends held-out harmful requests plain and
through every jailbreak wrapper (testbed suite only).

The constraint (``threshold``) is measured twice on the answers to harmful and jailbreak
prompts: by the cost model and by an independent evaluator (``verifier``: testbed ground truth
by default on the testbed suite, or a held-out red-team judge); it is *met* by the independent
figure's verdict where there is one (:func:`alignkit.safety.verify.verdict`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError
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
    verifier: str = "auto",
    verifier_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Safety figures of ``model`` (see the module docstring); a JSON-ready dict."""
    from alignkit.evaluation.alignment import AlignmentEvaluator
    from alignkit.safety.verify import check_verifier, resolve

    testbed = suite == "testbed"
    check_verifier(verifier)
    verifier = resolve(verifier, "testbed" if testbed else "")  # auto: ground truth on testbed
    if threshold is not None and cost_model is None and verifier is None:
        raise ConfigError("threshold: give a cost model or a verifier to measure it against")
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
        "harmful_rate_interval": _flipped(harmless),
        "over_refusal": _value(result, f"{scorer}/over_refusal"),
        "helpful": _value(result, f"{scorer}/helpful"),
    }
    harmful_items = [r for r in result.items if r.item.kind in ("harmful", "jailbreak")]
    rows = harmful_items or result.items
    prompts, answers = [r.item.prompt for r in rows], [r.response for r in rows]
    costs = None
    if cost_model is not None:
        from alignkit.safety.value_model import ValueModel

        costs = ValueModel.load(cost_model, device=device).score(prompts, answers)
        report["cost"] = _cost_summary(costs)
    if threshold is not None:
        report["constraint"] = _constraint(
            costs, prompts, answers, threshold, verifier, verifier_options
        )
    if robustness and testbed:
        from alignkit.safety.guardrail import robustness_check
        from alignkit.testbed.splits import model_world

        requests = model_world().requests("harmful", "heldout")[:12]
        checked = robustness_check(evaluator.backend, requests, generation=generation)
        report["robustness"] = {
            "n": len(requests),  # every rate below is a share of these requests
            **{k: checked[k] for k in ("consistency_rate", "always_safe_rate", "harmful_rate")},
        }
    evaluator.backend.close()
    return report


def _constraint(costs, prompts, answers, threshold, verifier, options) -> dict[str, Any]:
    """The harmful rate by the cost model and by the independent verifier, and the verdict."""
    from alignkit.safety.verify import cost_rate, independent_rate, verdict

    cost = None if costs is None else cost_rate(costs)
    independent = (
        None if verifier is None else independent_rate(verifier, prompts, answers, options)
    )
    return {**verdict(cost, independent, threshold), "cost_model": cost,
            "independent": independent}  # fmt: skip


def _flipped(harmless) -> list[float] | None:
    """The harmful-rate interval from the harmless rate's estimate."""
    return None if harmless is None else [1.0 - harmless.high, 1.0 - harmless.low]


def _value(result, metric: str) -> float | None:
    estimate = result.metrics.get(metric)
    return None if estimate is None else estimate.value
