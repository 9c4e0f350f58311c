"""The report's human-review section: what people's verdicts say about the loop's figures.

- **Calibrated headline figures.** For the base and the trained model, each headline figure
  people can judge (harmful compliance, jailbreak ASR: "harmless" = no; helpfulness; honesty)
  three ways: the scorer alone, the people alone (their labels from the random queue, a
  probability sample) and prediction-powered inference (PPI++, :func:`~alignkit.review.stats.
  calibrated_rate`) from both, each with n and a 95% interval.
- **What the labels changed**: failures people confirmed, overturned and added (revise), pairs
  kept, turned round, dropped and added, and cost pairs (train).
- **Items, judges and people side by side**: the findings people labelled whose verdict differs
  from the campaign judge's first, then the rest (untrusted text, escaped by the renderer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignkit.evaluation.sections import Section, Table
from alignkit.pipeline.context import read_jsonl
from alignkit.pipeline.headline import HEADLINE, LABELS, cell, item_scores
from alignkit.review.items import content_hash, sample_content

HUMAN_QUESTION = {"harmful_compliance": "harmless", "jailbreak_asr": "harmless",
                  "helpful": "helpful", "honest": "honest"}  # fmt: skip
MAX_ITEMS = 30


def calibrated_headline(rows: list[dict], scorer: str, found: Any) -> dict[str, Any]:
    """Per headline figure people can judge: judge-only, people-only and PPI estimates from the
    eval rows of one run and the verdicts ``found`` (only random-queue labels count)."""
    from alignkit.review.stats import calibrated_rate

    judged = item_scores(rows, scorer)
    by_id = {row["id"]: row for row in rows}
    out: dict[str, Any] = {}
    for name, question in HUMAN_QUESTION.items():
        flip = HEADLINE[name][2]
        labelled, predicted, unlabelled = [], [], []
        for item_id, value in judged[name].items():
            digest = content_hash(sample_content(by_id[item_id]))
            verdict = found.samples.get(digest, {}).get(question)
            if verdict is not None and digest in found.random:
                labelled.append(float(verdict != flip))  # harmless "no" = harmful compliance
                predicted.append(value)
            else:
                unlabelled.append(value)
        if labelled:
            out[name] = calibrated_rate(labelled, predicted, unlabelled)
    return out


def _calibrated_table(run_dir: Path, scorer: str, found: Any) -> Table | None:
    rows = []
    for label, stage in (("base", "baseline"), ("trained", "evaluate")):
        path = run_dir / stage / "eval_items.jsonl"
        if not path.exists():
            continue
        for name, est in calibrated_headline(read_jsonl(path), scorer, found).items():
            rows.append([
                label, LABELS[name], *(cell(e["value"], [e.get("low"), e.get("high")])
                                       for e in (est["judge_only"], est["human_only"],
                                                 est["ppi"])),
                str(est["human_only"]["n"]), str(est["judge_only"]["n"]),
            ])  # fmt: skip
    if not rows:
        return None
    columns = ["model", "figure", f"{scorer} alone [95% CI]", "people alone [95% CI]",
               "PPI [95% CI]", "n labelled", "n items"]  # fmt: skip
    return Table("Headline figures calibrated by people's labels", columns, rows)


def _changes_table(stages: dict[str, dict[str, Any]]) -> Table | None:
    rows = []
    revise = stages.get("revise", {}).get("outputs", {}).get("human")
    if revise:
        rows += [["revise: red-team failures", k, str(v)] for k, v in revise.items()]
    train = stages.get("train", {}).get("outputs", {}).get("human") or {}
    for k, v in (train.get("pairs") or {}).items():
        rows.append(["train: preference pairs", k, str(v)])
    if "cost_pairs" in train:
        rows.append(["train: cost-model pairs from people's verdicts", "added",
                     str(train["cost_pairs"])])  # fmt: skip
    return Table("What the people's labels changed", ["stage", "what", "n"], rows) if rows else None


def _items_table(run_dir: Path, found: Any) -> Table | None:
    """Labelled findings: judges' scores beside the people's verdict, disagreements first."""
    path = run_dir / "redteam" / "attempts.jsonl"
    if not path.exists() or not found.findings:
        return None
    from alignkit.review.feed import HumanLabels

    rows = []
    for row in read_jsonl(path):
        verdict = found.findings.get(HumanLabels.finding_hash(row))
        if verdict is not None:
            rows.append((verdict != row["harmful"], row, verdict))
    rows.sort(key=lambda r: not r[0])
    cells = [
        [row["prompt"][:160], (row["response"] or "")[:160], row["attack"],
         "harmful" if row["harmful"] else "not harmful", "harmful" if verdict else "not harmful",
         "differs" if differs else ""]
        for differs, row, verdict in rows[:MAX_ITEMS]
    ]  # fmt: skip
    columns = ["prompt", "response", "attack", "judge", "people", ""]
    title = f"Findings people labelled ({len(rows)}; {MAX_ITEMS} shown, disagreements first)"
    return Table(title, columns, cells, None, False)


def human_section(run_dir: Path, stages: dict[str, dict[str, Any]], scorer: str,
                  human: Any) -> Section | None:  # fmt: skip
    """The section (see the module docstring), or None without human verdicts."""
    if human is None or not len(human.found):
        return None
    section = Section("Human review", "pipeline-human")
    tables = (_calibrated_table(run_dir, scorer, human.found), _changes_table(stages),
              _items_table(run_dir, human.found))  # fmt: skip
    section.tables += [t for t in tables if t is not None]
    section.notes.append(
        f"Verdicts from {human.source}: {len(human.found.findings)} findings, "
        f"{len(human.found.pairs)} pairs and {len(human.found.samples)} evaluation samples with "
        "a majority of their reviewers. People alone and PPI use only labels given from the "
        "random queue (a probability sample of the items); the scorer-alone interval covers "
        "sampling noise only, not the scorer's own error, which PPI corrects (Angelopoulos et al. "
        "2023; `alignkit review stats` gives each judge's agreement with the people)."
    )
    return section
