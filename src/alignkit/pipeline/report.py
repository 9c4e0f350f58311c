"""The pipeline's report: the loop's before/after table and every stage, then the baseline vs
trained comparison of :class:`~alignkit.evaluation.report.AlignmentReportGenerator`.

``write_report(run_dir)`` writes ``report/report.html`` (self-contained, no scripts, every
model output escaped by the renderer), ``report.md`` and ``report.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignkit.errors import DataError
from alignkit.evaluation import plots
from alignkit.evaluation.report import AlignmentReportGenerator
from alignkit.evaluation.rundir import load_run
from alignkit.evaluation.sections import Example, Section, Table, fmt, fmt_p
from alignkit.pipeline.config import STAGES
from alignkit.pipeline.context import StageContext, brief
from alignkit.pipeline.headline import LABELS, cell, cut

MAX_REVISIONS = 6


def _outputs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each finished stage's ``stage.json`` (outputs and seconds), by stage."""
    found = {}
    for stage in STAGES:
        marker = run_dir / stage / "stage.json"
        if marker.exists():
            found[stage] = json.loads(marker.read_text())
    return found


def loop_section(stages: dict[str, dict[str, Any]]) -> Section | None:
    """The headline figures before and after, with paired differences."""
    change = stages.get("evaluate", {}).get("outputs", {}).get("change") or {}
    if not change:
        return None
    section = Section("The loop: before and after", "pipeline-loop")
    rows, bars = [], []
    for name, row in change.items():
        drop = cut(row)
        diff = row.get("diff", row["after"] - row["before"])
        rows.append([
            LABELS.get(name, name), cell(row["before"], row.get("before_ci")),
            cell(row["after"], row.get("after_ci")),
            cell(diff, [row.get("low"), row.get("high")], "+"), fmt_p(row.get("p_value")),
            str(row.get("n") or "n/a"), "" if drop is None else f"{100 * drop:.0f}%",
        ])  # fmt: skip
        if name != "kl":
            a, b = ({"value": row[k], **dict(zip(("low", "high"), row.get(f"{k}_ci") or [],
                                                  strict=False))}
                    for k in ("before", "after"))  # fmt: skip
            bars.append({"metric": LABELS.get(name, name), "a": a, "b": b})
    columns = ["figure", "before [95% CI]", "after [95% CI]", "diff [95% CI]", "p", "n", "cut by"]
    section.tables.append(Table("Headline figures", columns, rows))
    section.attach("Before and after", plots.comparison_bars(bars, "base model", "trained"))
    section.notes.append(
        "Rates are shares of held-out items of one kind (harmful requests, jailbreak-wrapped "
        "requests, benign and unanswerable questions), scored by the evaluation's first scorer; "
        "n is the number of items (or attack prompts) both runs answered. Intervals of the "
        "rates are score intervals (Clopper-Pearson below 30 items, Wilson from 30), whose "
        "upper end stays above 0 at a rate of 0; diff, its interval and p pair the same "
        "items (exact McNemar test, Newcombe's 1998 paired score interval; KL: BCa bootstrap)."
    )
    return section


def stages_section(stages: dict[str, dict[str, Any]]) -> Section:
    """What each stage made and how long it took."""
    section = Section("Stages", "pipeline-stages")
    rows = [
        [stage, f"{info.get('seconds', 0):.1f}", brief(info.get("outputs", {}))]
        for stage, info in stages.items()
    ]
    section.tables.append(Table("Stages", ["stage", "seconds", "outputs"], rows, None, False))
    train = stages.get("train", {}).get("outputs", {})
    if train.get("history"):
        section.tables.append(constraint_table(train["history"]))
        section.notes.append(constraint_note(train))
    return section


def _rate(figure: dict[str, Any] | None) -> str:
    """``rate [low, high]`` of a harmful-rate figure, or an empty cell."""
    if not figure or figure.get("harmful_rate") is None:
        return ""
    return f"{fmt(figure['harmful_rate'])} [{fmt(figure['low'])}, {fmt(figure['high'])}]"


def constraint_table(history: list[dict[str, Any]]) -> Table:
    """The Lagrangian rounds: the harmful rate by the cost model (which drives lambda) beside
    the independent evaluator's, each with n and a 95% interval."""
    independent = next((h["independent"] for h in history if h.get("independent")), None)
    name = independent["evaluator"] if independent else "none"
    rows = []
    for h in history:
        cost, ind = h.get("cost_model") or {}, h.get("independent") or {}
        rows.append([
            str(h.get("round")), fmt(h.get("lambda")), str(h.get("flipped", "")),
            str(cost.get("n", "")), _rate(cost), fmt(cost.get("mean_cost")),
            str(ind.get("n", "")), _rate(ind),
        ])  # fmt: skip
    columns = ["round", "lambda", "pairs flipped", "n", "cost model: harmful rate [95% CI]",
               "mean cost", "n", f"independent ({name}): harmful rate [95% CI]"]  # fmt: skip
    return Table("Safety constraint (Lagrangian rounds)", columns, rows)


def constraint_note(train: dict[str, Any]) -> str:
    """Whether the constraint is met, by whom, and what the pairs came from."""
    constraint = train.get("constraint") or {}
    met = "met" if train.get("constraint_met") else "NOT met"
    by = (
        f"verified by {constraint['evaluator']}, which did not drive the relabelling"
        if constraint.get("verified")
        else "by the cost model only: no independent evaluator"
    )
    if constraint.get("agree") is False:
        by += "; the cost model's verdict differs and only drives lambda"
    counts = ", ".join(f"{k} from {origin}" for origin, k in train.get("pairs", {}).items())
    n = (train["history"][-1].get("cost_model") or {}).get("n")
    held = train.get("held_out_failures")
    return (
        f"The constraint (threshold {constraint.get('threshold', '')}) is {met} ({by}), on the "
        f"answers to {n} red-team prompts held out of training ({held} of them failures of "
        f"the base model); the cost model's rate drives the rounds. Pairs trained on: {counts}."
    )


def revisions_section(run_dir: Path) -> Section | None:
    """A few failures with their constitutional revisions (untrusted text, escaped on render)."""
    path = run_dir / "revise" / "pairs.jsonl"
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as handle:
        pairs = [json.loads(line) for line in handle if line.strip()][:MAX_REVISIONS]
    if not pairs:
        return None
    section = Section("Failures and their revisions", "pipeline-revisions")
    for k, pair in enumerate(pairs, start=1):
        section.examples.append(
            Example(
                f"failure {k} ({pair.get('source', '')})", pair["prompt"], pair["chosen"],
                [("failure", pair["rejected"]), ("revision judged safe",
                 str(pair.get("chosen_safe")))],
            )
        )  # fmt: skip
    return section


class PipelineReport(AlignmentReportGenerator):
    """The comparison report of the baseline (A) and the trained model (B), led by the loop."""

    def __init__(self, run_dir: str | Path, human: Any = None) -> None:
        self.pipeline_dir = Path(run_dir)
        if human is None:  # the run's own reviews, if it has any
            from alignkit.review.feed import load_human_labels

            human = load_human_labels("run", self.pipeline_dir)
        self.human = human
        before, after = self.pipeline_dir / "baseline", self.pipeline_dir / "evaluate"
        if not (before / "eval.json").exists() or not (after / "eval.json").exists():
            raise DataError(
                f"{self.pipeline_dir}: the report needs the baseline and evaluate stages"
            )
        super().__init__(before, compare_to=after)

    @property
    def title(self) -> str:
        return f"alignkit pipeline: {self.pipeline_dir}"

    @property
    def basename(self) -> str:
        return "report"

    def sections(self):
        if self._sections is None:
            stages = _outputs(self.pipeline_dir)
            lead = [loop_section(stages), stages_section(stages), revisions_section(
                self.pipeline_dir)]  # fmt: skip
            redteam = self.pipeline_dir / "redteam"
            if (redteam / "redteam.json").exists():
                from alignkit.evaluation.redteam_section import redteam_section

                lead.append(redteam_section(load_run(redteam), "pipeline-"))
            from alignkit.pipeline.human import human_section

            scorer = stages.get("evaluate", {}).get("outputs", {}).get("headline", {})
            from alignkit.review.report_section import review_section

            lead.append(human_section(self.pipeline_dir, stages, scorer.get("scorer", "testbed"),
                                      self.human))  # fmt: skip
            lead.append(review_section([self.pipeline_dir], "pipeline-review-stats"))
            groups = super().sections()
            self._sections = [("The loop", [s for s in lead if s is not None]), *groups]
        return self._sections


def write_report(run_dir: str | Path, human: Any = None) -> dict[str, Path]:
    """Write ``report/report.{html,md,json}`` for a pipeline run directory; format -> path.
    ``human``: the people's verdicts to report (default: the run's own reviews, if any)."""
    out = Path(run_dir) / "report"
    return PipelineReport(run_dir, human).write(out)


def report(ctx: StageContext) -> dict[str, Any]:
    """The ``report`` stage: :func:`write_report` of the run directory."""
    return {"files": {k: str(v) for k, v in write_report(ctx.out, ctx.human).items()}}
