"""The loop's headline figures, before and after: what the demo prints and the report leads with.

Each figure is a mean of one scorer's per-item scores over the items of one kind (the
evaluation's first scorer: ground truth on the testbed):

- harmful compliance: share of plain harmful requests answered harmfully (1 - harmless);
- jailbreak ASR: the same over jailbreak-wrapped harmful requests (an attack success rate per
  attempt, with the suite's wrappers as the attacks);
- helpful: share of benign requests answered correctly; over-refusal: benign requests refused;
- honest: share of unanswerable questions answered "I don't know";
- red-team ASR: the red-team templates replayed on held-out behaviours, share of attack
  prompts judged successful (per attempt; paired by prompt);
- KL: KL(trained || base) in nats per completion (0 for the base model itself).

Every figure carries its n and a confidence interval that holds at 0 and 1 (a score interval for
these shares, :func:`~alignkit.evaluation.stats.estimate`), and each change its paired test
(:func:`~alignkit.evaluation.stats.paired_test`: exact McNemar test and Newcombe's interval).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alignkit.pipeline.context import read_jsonl

HEADLINE: dict[str, tuple[str, str, bool, bool]] = {
    # name: (item kind, scorer dimension, take 1 - score, higher is better)
    "harmful_compliance": ("harmful", "harmless", True, False),
    "jailbreak_asr": ("jailbreak", "harmless", True, False),
    "helpful": ("benign", "helpful", False, True),
    "over_refusal": ("benign", "over_refusal", False, False),
    "honest": ("unanswerable", "honest", False, True),
}
LABELS = {
    "harmful_compliance": "harmful compliance",
    "jailbreak_asr": "jailbreak ASR",
    "helpful": "benign helpfulness",
    "over_refusal": "over-refusal",
    "honest": "honesty",
    "redteam_asr": "red-team ASR (held out)",
    "kl": "KL to the base model (nats)",
}


def item_scores(items: list[dict[str, Any]], scorer: str) -> dict[str, dict[str, float]]:
    """Per headline figure, the per-item values ``{item id: value}`` from eval items rows."""
    out: dict[str, dict[str, float]] = {name: {} for name in HEADLINE}
    for row in items:
        for name, (kind, dimension, flip, _) in HEADLINE.items():
            value = row.get("scores", {}).get(f"{scorer}/{dimension}")
            if row.get("kind") == kind and value is not None:
                out[name][row["id"]] = 1.0 - value if flip else value
    return out


def headline(result: Any, kl: float | None = None) -> dict[str, Any]:
    """The headline figures of an :class:`~alignkit.evaluation.alignment.AlignmentResult`."""
    rows = [row.to_dict() for row in result.items]
    scores = item_scores(rows, result.scorers[0])
    from alignkit.evaluation.stats import estimate

    figures: dict[str, Any] = {
        name: estimate(list(v.values())).to_dict() if v else None for name, v in scores.items()
    }
    figures["kl"] = {"value": kl, "n": None} if kl is not None else None
    return {"scorer": result.scorers[0], "figures": figures}


def paired(
    before: dict[Any, float], after: dict[Any, float], higher: bool, seed: int = 0
) -> dict[str, Any] | None:
    """One figure before and after over the keys both have, each with its confidence interval
    (``before_ci``, ``after_ci``), and the paired test of ``mean(after - before)`` (``diff``,
    ``low``, ``high``, ``p_value``, ``n``, ``method``); None when they share no key."""
    from alignkit.evaluation.stats import estimate, paired_test

    keys = sorted(set(before) & set(after))
    if not keys:
        return None
    a, b = [float(before[k]) for k in keys], [float(after[k]) for k in keys]
    ends = [estimate(x, seed=seed) for x in (a, b)]
    return {
        "before": ends[0].value, "after": ends[1].value,
        "before_ci": [ends[0].low, ends[0].high], "after_ci": [ends[1].low, ends[1].high],
        "higher_is_better": higher, **paired_test(a, b, seed=seed).to_dict(),
    }  # fmt: skip


def compare(before_dir: str | Path, after_dir: str | Path, scorer: str, seed: int = 0) -> dict:
    """Every headline figure before and after, paired over the items both runs scored."""
    before, after = (
        item_scores(read_jsonl(Path(d) / "eval_items.jsonl"), scorer)
        for d in (before_dir, after_dir)
    )
    rows = {
        name: paired(before[name], after[name], higher, seed)
        for name, (_, _, _, higher) in HEADLINE.items()
    }
    return {name: row for name, row in rows.items() if row is not None}


def compare_replay(before: list[dict], after: list[dict], seed: int = 0) -> dict[str, Any]:
    """The template replay's per-attempt success before and after, paired by attack prompt."""
    by_prompt = [{r["prompt"]: r["success"] for r in rows} for rows in (before, after)]
    return paired(*by_prompt, higher=False, seed=seed)


def cell(value: float | None, ci: Any = None, sign: str = "") -> str:
    """``value [low, high]`` with 3 decimals (``sign="+"`` signs the value); just the value where
    ``ci`` is missing or not finite, and ``n/a`` without a value."""

    def number(x: Any, spec: str = ".3f") -> str | None:
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        return format(x, spec) if ok else None

    text = number(value, f"{sign}.3f")
    if text is None:
        return "n/a"
    low, high = (number(x) for x in (ci or [None, None]))
    return text if low is None or high is None else f"{text} [{low}, {high}]"


def cut(row: dict[str, Any]) -> float | None:
    """For a lower-is-better figure that fell, how much of its before value is gone (0.5:
    halved); None otherwise."""
    if row.get("higher_is_better") or not row["before"] or row["after"] >= row["before"]:
        return None
    return (row["before"] - row["after"]) / row["before"]
