"""Human labels as training data and judge overrides (``alignkit review export``).

Each item's verdict is the people's, by the one rule of :mod:`alignkit.review.verdicts`.

- ``preferences``: every pair item whose verdict is "chosen" or "rejected", as a DPO row
  ``{prompt, chosen, rejected, source: "review", provenance}`` with the people's preferred
  response as ``chosen`` (ties, "both_bad" and items without a majority are skipped and
  counted). ``alignkit dpo`` reads the prompt/chosen/rejected fields as is.
- ``overrides``: every finding with a verdict, as ``{item_id, content_hash, attack,
  behaviour_id, prompt, harmful, votes, reviewers, judges}``: a person's verdict that
  ``alignkit redteam report --overrides`` and the pipeline put above a judge's.
- ``cost``: cost-model pairs from the findings' verdicts, a harmful and a safe response to the
  same behaviour (:func:`~alignkit.review.verdicts.cost_pairs_from_findings`), the layout
  ``alignkit safety train-rm --kind cost --data FILE`` reads.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from alignkit import atomic
from alignkit.errors import DataError
from alignkit.review.items import Item, load_run
from alignkit.review.store import current_labels
from alignkit.review.verdicts import Verdicts, cost_pairs_from_findings, verdicts

EXPORT_KINDS = ("preferences", "overrides", "cost")
NO_MAJORITY = "no majority (a tie, or unsure only)"


def _labelled(run_dir: Path, kind: str) -> tuple[list[Item], Verdicts, Counter]:
    """Items of ``kind`` that people labelled, their verdicts, and the labelled items that have
    none (counted)."""
    items = [i for i in load_run(run_dir) if i.kind == kind]
    hashes = {i.content_hash for i in items}
    rows = [r for r in current_labels([run_dir], required=True) if r["content_hash"] in hashes]
    found = verdicts(rows)
    have = getattr(found, f"{kind}s")
    labelled = {r["content_hash"] for r in rows}
    skipped = Counter({NO_MAJORITY: len(labelled - set(have))})
    return [i for i in items if i.content_hash in have], found, skipped


def preferences(run_dir: str | Path) -> tuple[list[dict], dict[str, int]]:
    """DPO rows from human pair labels, and counts of what was skipped (see module docstring)."""
    items, found, skipped = _labelled(Path(run_dir), "pair")
    out = []
    for item in items:
        win = found.pairs[item.content_hash]
        if win not in ("chosen", "rejected"):
            skipped[win] += 1
            continue
        c = item.content
        chosen, rejected = (c["chosen"], c["rejected"])
        if win == "rejected":
            chosen, rejected = rejected, chosen
        prov = {"item_id": item.id, "run": item.run, "source": item.source,
                "content_hash": item.content_hash, "ai": item.judges.get("ai"),
                "reviewers": found.reviewers.get(item.content_hash, []),
                "human_overrode_ai": win == "rejected"}  # fmt: skip
        out.append({"prompt": c["prompt"], "chosen": chosen, "rejected": rejected,
                    "source": "review", "provenance": prov})  # fmt: skip
    return out, {k: v for k, v in skipped.items() if v}


def overrides(run_dir: str | Path) -> tuple[list[dict], dict[str, int]]:
    """Human verdicts on findings (see the module docstring)."""
    items, found, skipped = _labelled(Path(run_dir), "finding")
    out = [
        {"item_id": it.id, "content_hash": it.content_hash, "attack": it.content["attack"],
         "behaviour_id": it.content["behaviour_id"], "prompt": it.content["prompt"],
         "harmful": found.findings[it.content_hash],
         "votes": found.votes.get(it.content_hash, {}),
         "reviewers": found.reviewers.get(it.content_hash, []), "judges": it.judges}
        for it in items
    ]  # fmt: skip
    return out, {k: v for k, v in skipped.items() if v}


def cost(run_dir: str | Path) -> tuple[list[dict], dict[str, int]]:
    """Cost-model pairs from the findings' verdicts (see the module docstring)."""
    items, found, skipped = _labelled(Path(run_dir), "finding")
    findings = [
        {**it.content, "content_hash": it.content_hash, "harmful": found.findings[it.content_hash]}
        for it in items
    ]
    rows, unpaired = cost_pairs_from_findings(findings)
    skipped.update(unpaired)
    return rows, {k: v for k, v in skipped.items() if v}


def export(run_dir: str | Path, kind: str, output: str | Path) -> dict:
    """Write the ``kind`` export of ``run_dir`` to ``output`` (JSON lines, atomically)."""
    if kind not in EXPORT_KINDS:
        raise DataError(f"--kind: {kind!r} is not one of {', '.join(EXPORT_KINDS)}")
    rows, skipped = {"preferences": preferences, "overrides": overrides, "cost": cost}[kind](
        run_dir
    )
    if not rows:
        raise DataError(f"{run_dir}: no human {kind} to export (skipped: {skipped or 'none'})")
    atomic.write_text(Path(output), "".join(json.dumps(r) + "\n" for r in rows))
    return {"kind": kind, "rows": len(rows), "skipped": skipped, "output": str(output)}
