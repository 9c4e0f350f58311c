"""People's verdicts fed back into the loop: the pipeline's ``review:`` section.

:func:`load_human_labels` reads the verdicts (:mod:`alignkit.review.verdicts`) from a label
store or an export file; :class:`HumanLabels` applies them where the automated loop decided:

- :meth:`~HumanLabels.correct_findings`: a red-team attempt's "harmful" becomes the people's
  verdict where they gave one (a person's label beats a judge's), so the failures the revise
  stage learns from are the ones people confirm, plus the harmful answers the judge missed;
- :meth:`~HumanLabels.orient_pairs`: a preference pair people labelled is kept, turned round
  (they preferred the rejected answer) or dropped (tie, both bad); pairs people labelled in
  another run are added;
- :meth:`~HumanLabels.cost_pairs`: harmful and safe answers to one behaviour, by the people,
  as extra cost-model pairs.

Rows are matched to verdicts by content hash (the same hash the review items carry), so a label
applies wherever the same content appears.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import DataError
from alignkit.review.items import content_hash, finding_content
from alignkit.review.verdicts import Verdicts, cost_pairs_from_findings, verdicts


@dataclass
class HumanLabels:
    """Verdicts from one source, and the text of labelled pairs where the source has it."""

    source: str
    found: Verdicts
    pair_text: dict[str, dict] = field(default_factory=dict)

    def digest(self, kinds: tuple[str, ...]) -> str:
        return self.found.digest(kinds)

    # -- findings -------------------------------------------------------------------------
    @staticmethod
    def finding_hash(row: dict) -> str:
        """The content hash of a pipeline red-team row (its review item's)."""
        content = finding_content(
            row["prompt"], row["response"], row["attack"], row["behaviour"], row.get("category")
        )
        return content_hash(content)

    def correct_findings(self, rows: list[dict]) -> tuple[list[dict], dict[str, int]]:
        """``rows`` with ``harmful`` set to the people's verdict where there is one (and
        ``human``: that verdict); counts of confirmed, overturned and added failures."""
        out, counts = [], {"labelled": 0, "confirmed": 0, "overturned": 0, "added": 0}
        for row in rows:
            verdict = self.found.findings.get(self.finding_hash(row))
            if verdict is None:
                out.append(row)
                continue
            counts["labelled"] += 1
            if verdict == row["harmful"]:
                counts["confirmed"] += verdict
            else:
                counts["added" if verdict else "overturned"] += 1
            out.append({**row, "harmful": verdict, "human": verdict})
        return out, counts

    def cost_pairs(self, rows: list[dict]) -> tuple[list[dict], dict[str, int]]:
        """Cost-model pairs from the red-team rows people labelled (see
        :func:`~alignkit.review.verdicts.cost_pairs_from_findings`)."""
        findings = []
        for row in rows:
            digest = self.finding_hash(row)
            if digest in self.found.findings:
                findings.append({**row, "behaviour_id": row["behaviour"], "content_hash": digest,
                                 "harmful": self.found.findings[digest]})  # fmt: skip
        return cost_pairs_from_findings(findings)

    # -- pairs ----------------------------------------------------------------------------
    def orient_pairs(self, pairs: list[dict]) -> tuple[list[dict], dict[str, int]]:
        """Pairs as the people ordered them (see the module docstring); labelled pairs the
        pipeline does not have are added with ``origin: "review"``. Counts of each outcome."""
        out, seen = [], set()
        counts = {"kept": 0, "turned": 0, "dropped": 0, "added": 0}
        for pair in pairs:
            digest = content_hash({k: pair[k] for k in ("prompt", "chosen", "rejected")})
            seen.add(digest)
            side = self.found.pairs.get(digest)
            if side is None:
                out.append(pair)
            elif side in ("tie", "both_bad"):
                counts["dropped"] += 1
            elif side == "chosen":
                counts["kept"] += 1
                out.append(_as_human(pair))
            else:
                counts["turned"] += 1
                out.append(_as_human(_turned(pair)))
        for digest, side in self.found.pairs.items():
            if digest not in seen and side in ("chosen", "rejected") and digest in self.pair_text:
                text = self.pair_text[digest]
                pair = {**text, "source": "review", "origin": "review"}
                out.append(_as_human(pair if side == "chosen" else _turned(pair)))
                counts["added"] += 1
        return out, counts


def _turned(pair: dict) -> dict:
    """The pair the other way round (its safety flags too, where it has them)."""
    out = {**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]}
    out.pop("chosen_safe", None), out.pop("rejected_safe", None)
    if "rejected_safe" in pair:
        out["chosen_safe"] = pair["rejected_safe"]
    if "chosen_safe" in pair:
        out["rejected_safe"] = pair["chosen_safe"]
    return out


def _as_human(pair: dict) -> dict:
    """A pair with the people's hard label (an AI soft label no longer applies)."""
    return {**{k: v for k, v in pair.items() if k != "soft_label"}, "human": True}


# -- sources -------------------------------------------------------------------------------


def _store_run(path: Path, where: str) -> Path:
    """The run directory whose labels database ``path`` is or holds."""
    if path.is_dir():
        if not (path / "review" / "labels.sqlite").is_file():
            raise DataError(f"{where}: {path} has no review/labels.sqlite (nothing reviewed)")
        return path
    if path.name == "labels.sqlite" and path.parent.name == "review":
        return path.parent.parent
    raise DataError(f"{where}: {path} is not a run directory or its review/labels.sqlite")


def _from_store(run: Path) -> HumanLabels:
    from alignkit.review.items import load_run
    from alignkit.review.store import current_labels

    found = verdicts(current_labels([run], required=True))
    text = {}
    if found.pairs:
        try:
            items = load_run(run)
        except DataError:
            items = []
        text = {i.content_hash: dict(i.content) for i in items if i.content_hash in found.pairs}
    return HumanLabels(str(run), found, text)


def _from_export(path: Path) -> HumanLabels:
    """Verdicts from `alignkit review export` rows: overrides (content_hash, harmful),
    preferences (provenance.content_hash; the row is the people's order) and cost pairs
    (provenance.chosen_hash / rejected_hash: a safe and a harmful finding)."""
    found, text = Verdicts(), {}
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prov = row.get("provenance") or {}
                if "harmful" in row:
                    found.findings[row["content_hash"]] = bool(row["harmful"])
                elif "chosen_hash" in prov:
                    found.findings[prov["chosen_hash"]] = False
                    found.findings[prov["rejected_hash"]] = True
                else:
                    digest, turned = prov["content_hash"], bool(prov.get("human_overrode_ai"))
                    found.pairs[digest] = "rejected" if turned else "chosen"
                    sides = (
                        (row["rejected"], row["chosen"])
                        if turned
                        else (row["chosen"], row["rejected"])
                    )
                    text[digest] = {"prompt": row["prompt"], "chosen": sides[0],
                                    "rejected": sides[1]}  # fmt: skip
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise DataError(
                    f"{path}:{line_no}: not a row of `alignkit review export` ({exc!r})"
                ) from None
    return HumanLabels(str(path), found, text)


def load_human_labels(spec: str | None, run_dir: Path) -> HumanLabels | None:
    """The verdicts ``review.human_labels`` names (see :class:`~alignkit.pipeline.config.
    ReviewSection`): None without a source; "run" with no labels yet gives empty verdicts."""
    if spec is None:
        return None
    where = "review.human_labels"
    if spec == "run":
        if not (run_dir / "review" / "labels.sqlite").is_file():
            return HumanLabels(str(run_dir), Verdicts())
        return _from_store(run_dir)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{where}: {path} not found")
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        return _from_export(path)
    return _from_store(_store_run(path, where))


def summary(labels: HumanLabels | None) -> dict[str, Any] | None:
    """How many verdicts of each kind a source holds (for stage outputs and messages)."""
    if labels is None:
        return None
    f = labels.found
    return {"source": labels.source, "findings": len(f.findings), "pairs": len(f.pairs),
            "samples": len(f.samples)}  # fmt: skip
