"""Human labels as training data and judge overrides (``alignkit review export``).

- ``preferences``: every pair item whose reviewers' current answers have a strict majority for
  one side ("a"/"b" read through each reviewer's stored A/B order), as a DPO row ``{prompt,
  chosen, rejected, source: "review", provenance}`` (ties, "both_bad" and split votes are
  skipped and counted). ``alignkit dpo`` reads the prompt/chosen/rejected fields as is.
- ``overrides``: every finding with a strict human majority of "harmful" or "not_harmful", as
  ``{item_id, content_hash, attack, behaviour_id, prompt, harmful, votes, reviewers, judges}``:
  a person's verdict that report/pipeline code can put above a judge's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from alignkit import atomic
from alignkit.errors import DataError
from alignkit.review.items import Item, load_run
from alignkit.review.store import current_labels, majority

EXPORT_KINDS = ("preferences", "overrides")


def _votes(run_dir: Path, kind: str) -> tuple[dict[str, Item], dict[str, list[dict]]]:
    items = {i.id: i for i in load_run(run_dir) if i.kind == kind}
    rows = [r for r in current_labels([run_dir], required=True) if r["item_id"] in items]
    by_item: dict[str, list[dict]] = {}
    for r in rows:
        by_item.setdefault(r["item_id"], []).append(r)
    return items, by_item


def preferences(run_dir: str | Path) -> tuple[list[dict], dict[str, int]]:
    """DPO rows from human pair labels, and counts of what was skipped (see module docstring)."""
    items, by_item = _votes(Path(run_dir), "pair")
    out, skipped = [], Counter()
    for item_id, rows in by_item.items():
        sides = []
        for r in rows:
            if r["value"] in ("a", "b"):
                a_is_chosen = r["extra"].get("order", "ab") == "ab"
                sides.append("chosen" if (r["value"] == "a") == a_is_chosen else "rejected")
            else:
                sides.append(r["value"])
        win = majority(sides)
        if win not in ("chosen", "rejected"):
            skipped[win or "split vote"] += 1
            continue
        c = items[item_id].content
        chosen, rejected = (c["chosen"], c["rejected"])
        if win == "rejected":
            chosen, rejected = rejected, chosen
        prov = _prov(items[item_id], rows, flipped=win == "rejected")
        out.append({"prompt": c["prompt"], "chosen": chosen, "rejected": rejected,
                    "source": "review", "provenance": prov})  # fmt: skip
    return out, dict(skipped)


def overrides(run_dir: str | Path) -> tuple[list[dict], dict[str, int]]:
    """Human verdicts on findings with a strict majority (see the module docstring)."""
    items, by_item = _votes(Path(run_dir), "finding")
    out, skipped = [], Counter()
    for item_id, rows in by_item.items():
        win = majority([r["value"] for r in rows])
        if win not in ("harmful", "not_harmful"):
            skipped[win or "split vote"] += 1
            continue
        it = items[item_id]
        out.append({"item_id": item_id, "content_hash": it.content_hash,
                    "attack": it.content["attack"], "behaviour_id": it.content["behaviour_id"],
                    "prompt": it.content["prompt"], "harmful": win == "harmful",
                    "votes": dict(Counter(r["value"] for r in rows)),
                    "reviewers": sorted({r["reviewer"] for r in rows}),
                    "judges": it.judges})  # fmt: skip
    return out, dict(skipped)


def _prov(item: Item, rows: list[dict], flipped: bool) -> dict:
    return {"item_id": item.id, "run": item.run, "source": item.source,
            "content_hash": item.content_hash, "ai": item.judges.get("ai"),
            "reviewers": sorted({r["reviewer"] for r in rows}),
            "human_overrode_ai": flipped}  # fmt: skip


def export(run_dir: str | Path, kind: str, output: str | Path) -> dict:
    """Write the ``kind`` export of ``run_dir`` to ``output`` (JSON lines, atomically)."""
    if kind not in EXPORT_KINDS:
        raise DataError(f"--kind: {kind!r} is not one of {', '.join(EXPORT_KINDS)}")
    rows, skipped = (preferences if kind == "preferences" else overrides)(run_dir)
    if not rows:
        raise DataError(f"{run_dir}: no human {kind} to export (skipped: {skipped or 'none'})")
    atomic.write_text(Path(output), "".join(json.dumps(r) + "\n" for r in rows))
    return {"kind": kind, "rows": len(rows), "skipped": skipped, "output": str(output)}
