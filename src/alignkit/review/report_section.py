"""The figures of ``alignkit review stats`` as a report section (HTML / Markdown / JSON).

Added to ``alignkit report`` of a run directory and to the pipeline's report wherever the run
has a labels database: each judge against the people, the reviewers' agreement, and the rates
three ways (judge alone, people alone, prediction-powered inference), each with n and a 95%
interval, so every figure of the report that people checked shows how far they agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignkit.evaluation.sections import Section, Table
from alignkit.review.stats import fmt_estimate

NOTE = (
    "People's labels from `alignkit review` (several reviewers of an item by majority, "
    "'unsure' left out). A judge's agreement is scored with the people as the reference; PPI "
    "(prediction-powered inference, PPI++; Angelopoulos et al. 2023) combines the random "
    "queue's labels with the judge on every item, and its interval stays valid when the judge "
    "is biased, which the judge-alone interval does not."
)


def _three_ways(title: str, rows: Mapping[str, Mapping[str, Any]]) -> Table:
    cells = [
        [name, *(fmt_estimate(e.get(k)) for k in ("judge_only", "human_only", "ppi"))]
        for name, e in rows.items()
    ]
    columns = ["what", "judge alone", "people alone", "PPI"]
    return Table(title, columns, cells, None, False)


def _agreement(title: str, judges: Mapping[str, Mapping[str, Any]]) -> Table:
    cells = []
    for name, r in judges.items():
        c = r["confusion"]
        figures = [fmt_estimate(r.get(k)) for k in ("accuracy", "kappa", "precision", "recall")]
        cells.append([name, *figures, f"{c['tp']}/{c['fp']}/{c['fn']}/{c['tn']}"])
    columns = ["judge", "agreement", "Cohen's kappa", "precision", "recall", "tp/fp/fn/tn"]
    return Table(title, columns, cells, None, False)


def stats_tables(stats: Mapping[str, Any]) -> tuple[list[Table], list[str]]:
    """Tables and notes of :func:`~alignkit.review.stats.run_stats` figures."""
    tables, notes = [], []
    f = stats.get("findings") or {}
    if f.get("n_labelled"):
        if f.get("calibrated_asr"):
            tables.append(_three_ways("Red-team ASR: judge, people and PPI",
                                      {"success (attempts)": f["calibrated_asr"]}))  # fmt: skip
        tables.append(_agreement("Red-team judges against the people (harmful)", f["judges"]))
        a = f["reviewer_alpha"]
        alpha = "n/a" if a["alpha"] is None else f"{a['alpha']:.3f}"
        notes.append(
            f"Findings: {f['n_labelled']} of {f['n_items']} labelled; Krippendorff's alpha "
            f"between reviewers {alpha} ({a['n_items']} items with 2+ reviewers)."
        )
    p = stats.get("pairs") or {}
    if p.get("n"):
        tables.append(_agreement("Preference pairs: the AI's label against the people",
                                 {"AI label": p["ai_vs_human"]}))  # fmt: skip
        share_a = fmt_estimate(p["position_bias_share_a"])
        notes.append(f"People pick position A in {share_a} of their answers.")
        if p.get("calibrated"):
            tables.append(
                _three_ways(
                    "Share of pairs whose stored 'chosen' is better (ties "
                    "half; win_pairs.jsonl: the win rate)",
                    p["calibrated"],
                )
            )
    for question, q in (stats.get("samples") or {}).items():
        if q["scorers"]:
            title = f"Evaluation samples: scorers against the people ({question})"
            tables.append(_agreement(title, q["scorers"]))
    return tables, notes


def review_section(run_dirs: Sequence[str | Path], anchor: str) -> Section | None:
    """The section for runs with labels databases, or None (no labels, nothing to review)."""
    from alignkit.errors import DataError
    from alignkit.review.stats import run_stats

    runs = [Path(r) for r in run_dirs if (Path(r) / "review" / "labels.sqlite").is_file()]
    if not runs:
        return None
    try:
        stats = run_stats(runs)
    except DataError:
        return None
    tables, notes = stats_tables(stats)
    if not tables:
        return None
    return Section("Human review: judges against the people", anchor, [NOTE, *notes], tables)
