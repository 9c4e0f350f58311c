"""The red-team part of a report, from ``redteam.json`` (what ``alignkit redteam`` writes).

Tables: the attacks (name, family, paper, from each plugin's metadata), ASR per attack with
CIs (and a chart), queries per success and diversity, ASR per harm category, ASR under every
judge, each judge's agreement with the testbed ground truth; then example successful attacks
(adversarial text, escaped by the renderers like every model output).
"""

from __future__ import annotations

from typing import Any

from alignkit.evaluation import plots
from alignkit.evaluation.rundir import RunData
from alignkit.evaluation.sections import (
    ESTIMATE_COLUMNS,
    MAX_EXAMPLES,
    Section,
    Table,
    _example,
    _section,
    estimate_cells,
    fmt,
    with_ci,
)


def _attacks_table(rt: dict[str, Any]) -> Table | None:
    attacks = rt.get("attacks") or {}
    if not attacks:
        return None
    rows = [
        [name, str(m.get("family", "")), str(m.get("description", "")), str(m.get("paper", ""))]
        for name, m in attacks.items()
    ]
    return Table("Attacks", ["attack", "family", "description", "paper"], rows, align_numbers=False)


def _efficiency_table(rt: dict[str, Any]) -> Table | None:
    qps = rt.get("queries_per_success") or {}
    bleu = rt.get("diversity_self_bleu") or {}
    names = sorted(set(qps) | set(bleu))
    if not names:
        return None
    rows = [[n, fmt(qps.get(n), 1), fmt(bleu.get(n), 2)] for n in names]
    return Table(
        "Queries per success and diversity of successful prompts",
        ["attack", "queries / success", "self-BLEU (lower: more diverse)"],
        rows,
    )


def _judges_tables(rt: dict[str, Any]) -> list[Table]:
    tables = []
    by_judge = rt.get("asr_by_judge") or {}
    if by_judge:
        judges = sorted(by_judge)
        attacks = sorted({a for per in by_judge.values() for a in per})
        rows = [[a, *(with_ci(by_judge[j].get(a)) for j in judges)] for a in attacks]
        tables.append(Table("ASR under each judge", ["attack", *judges], rows))
    agreement = rt.get("judge_agreement") or {}
    if agreement:
        rows = [
            [j, fmt(a.get("agreement")), fmt(a.get("kappa")), str(a.get("n", 0))]
            for j, a in sorted(agreement.items())
        ]
        tables.append(
            Table("Judge agreement with ground truth", ["judge", "agreement", "kappa", "n"], rows)
        )
    return tables


def redteam_section(run: RunData, prefix: str = "") -> Section | None:
    """Everything ``redteam.json`` holds (see the module docstring)."""
    rt = run.redteam
    if not rt:
        return None
    section = _section("Red team", prefix)
    if "attempts" in rt:
        section.notes.append(
            f"{rt.get('attempts')} attempts on {rt.get('behaviours', '?')} behaviours, "
            f"{rt.get('successes', '?')} judged successful, {rt.get('errors', 0)} target errors. "
            "ASR counts a behaviour as broken if any attempt on it succeeded."
        )
    attacks = _attacks_table(rt)
    if attacks:
        section.tables.append(attacks)
    asr = rt.get("asr") or {}
    rows = [[name, *estimate_cells(estimate)] for name, estimate in asr.items()]
    section.tables.append(Table("Attack success rate", ["attack", *ESTIMATE_COLUMNS], rows))
    section.attach(
        "Attack success rate",
        plots.estimate_bars(
            asr, "Attack success rate (lower is better)", xlabel="ASR", lower_is_better=True
        ),
    )
    per_attempt = rt.get("attempt_success") or {}
    if per_attempt:
        rows = [[name, *estimate_cells(e)] for name, e in per_attempt.items()]
        section.tables.append(
            Table("Success rate per attempt", ["attack", *ESTIMATE_COLUMNS], rows)
        )
    efficiency = _efficiency_table(rt)
    if efficiency:
        section.tables.append(efficiency)
    by_category = rt.get("asr_by_category") or {}
    if by_category:
        rows = [[c, *estimate_cells(e)] for c, e in by_category.items()]
        section.tables.append(Table("ASR per harm category", ["category", *ESTIMATE_COLUMNS], rows))
    section.tables += _judges_tables(rt)
    examples = rt.get("examples") or []
    section.examples = [_example(row, i) for i, row in enumerate(examples[:MAX_EXAMPLES], start=1)]
    return section
