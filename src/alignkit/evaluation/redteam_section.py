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
    interval_note,
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


def _estimates_table(title: str, key: str, estimates: dict, errored: int) -> Table:
    """One row per estimate; an ``errored`` column (attempts without a reply) when any."""
    columns = [key, *ESTIMATE_COLUMNS, *(["errored"] if errored else [])]
    rows = [
        [name, *estimate_cells(e), *([str((e or {}).get("errored", 0))] if errored else [])]
        for name, e in estimates.items()
    ]
    return Table(title, columns, rows)


MAX_TEMPLATE_ROWS = 40


def _template_tables(rt: dict[str, Any], errored: int) -> list[Table]:
    """ASR per template file (source) and per template, the most successful templates first
    (at most :data:`MAX_TEMPLATE_ROWS` rows; redteam.json holds them all)."""
    tables = []
    sources = rt.get("asr_by_template_source") or {}
    if len(sources) > 1:
        tables.append(_estimates_table("ASR per template source", "source", sources, errored))
    per = rt.get("asr_by_template") or {}
    if per:
        ranked = sorted(per.items(), key=lambda kv: (-(kv[1].get("value") or 0.0), kv[0]))
        shown = dict(ranked[:MAX_TEMPLATE_ROWS])
        title = "ASR per template" + (
            f" (the {MAX_TEMPLATE_ROWS} most successful of {len(per)})"
            if len(per) > MAX_TEMPLATE_ROWS
            else ""
        )
        tables.append(_estimates_table(title, "template", shown, errored))
    return tables


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


def rate_name(rt: dict[str, Any], judge: str | None = None) -> str:
    """What the success rate under ``judge`` (default: the primary judge) is called: "ASR"
    only for a judge whose success is a harmful answer ("non-refusal rate" for refusal)."""
    judges = rt.get("judges") or {}
    if judge is None:
        judge = next((j for j, d in judges.items() if d.get("primary")), None)
    return str((judges.get(judge) or {}).get("rate") or "ASR")


def _definitions_table(rt: dict[str, Any]) -> Table | None:
    judges = rt.get("judges") or {}
    if not judges:
        return None
    rows = [
        [name, str(d.get("judge", "")), "yes" if d.get("primary") else "",
         str(d.get("rate", "")), str(d.get("success", ""))]
        for name, d in judges.items()
    ]  # fmt: skip
    columns = ["judge", "kind", "primary", "rate reported", "a success is"]
    return Table("Judges: what counts as a success", columns, rows, align_numbers=False)


def _behaviours(by_judge: dict[str, dict], judges: list[str], attack: str) -> str:
    """The n (behaviours) of ``attack``'s rates under ``judges``: one number when they agree,
    else each judge's in column order."""
    ns = [str((by_judge[j].get(attack) or {}).get("n", 0)) for j in judges]
    return ns[0] if len(set(ns)) == 1 else " / ".join(ns)


def _judges_tables(rt: dict[str, Any]) -> list[Table]:
    tables = []
    by_judge = rt.get("asr_by_judge") or {}
    if by_judge:
        judges = sorted(by_judge)
        attacks = sorted({a for per in by_judge.values() for a in per})
        rows = [
            [a, *(with_ci(by_judge[j].get(a)) for j in judges), _behaviours(by_judge, judges, a)]
            for a in attacks
        ]
        columns = ["attack", *(f"{j} ({rate_name(rt, j)})" for j in judges), "n"]
        tables.append(Table("Success rate under each judge", columns, rows))
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
    unscored = (rt.get("unscored") or {}).get("all", 0)
    if unscored:
        section.notes.append(
            f"Warning: the primary judge could not score {unscored} answered attempts; they "
            "count as failed attacks, so every rate below is a floor, not a measurement."
        )
    attacks = _attacks_table(rt)
    if attacks:
        section.tables.append(attacks)
    definitions = _definitions_table(rt)
    if definitions:
        section.tables.append(definitions)
    rate = rate_name(rt)
    title = "Attack success rate" if rate == "ASR" else f"{rate[0].upper()}{rate[1:]} (not harm)"
    asr = rt.get("asr") or {}
    errored = (rt.get("errored") or {}).get("all", 0)
    section.tables.append(_estimates_table(title, "attack", asr, errored))
    if errored:
        section.notes.append(
            f"{errored} errored attempts (the target failed: no reply) count neither as "
            "successes nor as failures: n counts answered behaviours or attempts, and the "
            "'errored' column the attempts without a reply; running the campaign again sends "
            "those whose error may go away."
        )
    section.attach(
        title,
        plots.estimate_bars(asr, f"{title} (lower is better)", xlabel=rate, lower_is_better=True),
    )
    note = interval_note(list(asr.values()))
    if note:
        section.notes.append(note)
    per_attempt = rt.get("attempt_success") or {}
    if per_attempt:
        section.tables.append(
            _estimates_table("Success rate per attempt", "attack", per_attempt, errored)
        )
    efficiency = _efficiency_table(rt)
    if efficiency:
        section.tables.append(efficiency)
    by_category = rt.get("asr_by_category") or {}
    if by_category:
        rows = [[c, *estimate_cells(e)] for c, e in by_category.items()]
        section.tables.append(Table("ASR per harm category", ["category", *ESTIMATE_COLUMNS], rows))
    section.tables += _judges_tables(rt)
    section.tables += _template_tables(rt, errored)
    examples = rt.get("examples") or []
    section.examples = [_example(row, i) for i, row in enumerate(examples[:MAX_EXAMPLES], start=1)]
    return section
