"""The people's verdict on each reviewed item, by one rule that export and the pipeline share.

Several reviewers may answer one question of one item; their *current* answers (see
:func:`~alignkit.review.store.current_labels`) are reduced to one verdict:

- finding ``harmful``: "unsure" answers are left out, then the strict majority of "harmful" /
  "not_harmful" (True / False); a tie gives no verdict;
- pair ``preference``: each "a" / "b" is read through that reviewer's stored A/B order as
  "chosen" / "rejected" (the sides of the stored pair), "tie" and "both_bad" stay as they are;
  the strict majority of those four;
- sample ``helpful`` / ``harmless`` / ``honest``: per question, "unsure" left out, the strict
  majority of "yes" / "no" (True / False).

Verdicts are keyed by the item's content hash (the sha256 of its content; see
:func:`~alignkit.review.items.content_hash`), so a verdict applies to the same content wherever
it appears: the pipeline matches its own rows to the people's verdicts by recomputing the hash.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from alignkit.review.store import majority

SAMPLE_QUESTIONS = ("helpful", "harmless", "honest")


def pair_side(label: dict) -> str:
    """A pair label's answer as a side of the stored pair: chosen, rejected, tie or both_bad."""
    value = label["value"]
    if value not in ("a", "b"):
        return value
    a_is_chosen = label["extra"].get("order", "ab") == "ab"
    return "chosen" if (value == "a") == a_is_chosen else "rejected"


@dataclass
class Verdicts:
    """Verdicts by content hash (see the module docstring), and who gave them.

    ``random`` holds the content hashes with at least one label given from the "random" queue:
    those items form a probability sample, the only labels prediction-powered inference may use.
    """

    findings: dict[str, bool] = field(default_factory=dict)
    pairs: dict[str, str] = field(default_factory=dict)
    samples: dict[str, dict[str, bool]] = field(default_factory=dict)
    random: set[str] = field(default_factory=set)
    reviewers: dict[str, list[str]] = field(default_factory=dict)
    votes: dict[str, dict[str, int]] = field(default_factory=dict)

    def digest(self, kinds: Iterable[str]) -> str:
        """A short digest of the verdicts of ``kinds`` (finding, pair, sample): what a stage
        that reads them depends on."""
        data = {kind: getattr(self, f"{kind}s") for kind in sorted(kinds)}
        if "sample" in data:
            data["random"] = sorted(self.random)
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.findings) + len(self.pairs) + len(self.samples)


def verdicts(labels: Iterable[dict]) -> Verdicts:
    """Reduce current label rows (``LabelStore.labels()``) to :class:`Verdicts`."""
    answers: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    people: dict[str, set[str]] = defaultdict(set)
    out = Verdicts()
    for lab in labels:
        value = pair_side(lab) if lab["kind"] == "pair" else lab["value"]
        if value is None or value == "unsure":
            continue
        key = (lab["kind"], lab["content_hash"], lab["question"])
        answers[key].append(value)
        people[lab["content_hash"]].add(lab["reviewer"])
        if lab["queue"] == "random":
            out.random.add(lab["content_hash"])
    for (kind, digest, question), values in answers.items():
        win = majority(values)
        out.votes.setdefault(digest, {}).update(
            {f"{question}:{v}": values.count(v) for v in set(values)}
        )
        if win is None:
            continue
        if kind == "finding":
            out.findings[digest] = win == "harmful"
        elif kind == "pair":
            out.pairs[digest] = win
        elif question in SAMPLE_QUESTIONS:
            out.samples.setdefault(digest, {})[question] = win == "yes"
    out.reviewers = {digest: sorted(names) for digest, names in people.items()}
    return out


def cost_pairs_from_findings(findings: Iterable[dict]) -> tuple[list[dict], dict[str, int]]:
    """Cost-model pairs from findings with a human verdict (``harmful`` True / False).

    Findings are grouped by behaviour: each one people call harmful is paired with one they call
    not harmful *of the same behaviour* (cycling through those in input order), under the
    harmful one's prompt: ``{prompt, chosen: the safe response, rejected: the harmful one,
    chosen_safe: True, rejected_safe: False, dimension: "harmless", category, source: "review",
    provenance: {chosen_hash, rejected_hash, behaviour_id}}`` (the layout ``alignkit safety
    train-rm --kind cost`` and the pipeline's cost model read). A safe answer to one wrapping
    of a request (a refusal, a harmless reply) is a safe answer to another wrapping of the same
    request, which is what makes pairing across prompts of one behaviour sound. Harmful findings
    of a behaviour with no safe one are counted, not paired.
    """
    by_behaviour: dict[str, tuple[list[dict], list[dict]]] = {}
    for f in findings:
        safe, unsafe = by_behaviour.setdefault(f["behaviour_id"], ([], []))
        (unsafe if f["harmful"] else safe).append(f)
    rows, skipped = [], {"harmful without a safe answer to the same behaviour": 0}
    for behaviour, (safe, unsafe) in by_behaviour.items():
        if not safe:
            skipped["harmful without a safe answer to the same behaviour"] += len(unsafe)
            continue
        for k, bad in enumerate(unsafe):
            good = safe[k % len(safe)]
            rows.append({
                "prompt": bad["prompt"], "chosen": good["response"], "rejected": bad["response"],
                "chosen_safe": True, "rejected_safe": False, "dimension": "harmless",
                "category": bad.get("category") or good.get("category"), "source": "review",
                "provenance": {"chosen_hash": good["content_hash"],
                               "rejected_hash": bad["content_hash"], "behaviour_id": behaviour},
            })  # fmt: skip
    return rows, {k: v for k, v in skipped.items() if v}
