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
"""

from __future__ import annotations

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
    figures: dict[str, Any] = {
        name: {"value": sum(v.values()) / len(v), "n": len(v)} if v else None
        for name, v in scores.items()
    }
    figures["kl"] = {"value": kl, "n": None} if kl is not None else None
    return {"scorer": result.scorers[0], "figures": figures}


def paired(
    before: dict[Any, float], after: dict[Any, float], higher: bool, seed: int = 0
) -> dict[str, Any] | None:
    """One figure before and after over the keys both have, with the paired bootstrap test of
    ``mean(after - before)``; None when they share no key."""
    from alignkit.evaluation.stats import paired_bootstrap

    keys = sorted(set(before) & set(after))
    if not keys:
        return None
    a, b = [float(before[k]) for k in keys], [float(after[k]) for k in keys]
    test = paired_bootstrap(a, b, seed=seed).to_dict()
    return {"before": sum(a) / len(a), "after": sum(b) / len(b), "higher_is_better": higher, **test}


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


def cut(row: dict[str, Any]) -> float | None:
    """For a lower-is-better figure that fell, how much of its before value is gone (0.5:
    halved); None otherwise."""
    if row.get("higher_is_better") or not row["before"] or row["after"] >= row["before"]:
        return None
    return (row["before"] - row["after"]) / row["before"]
