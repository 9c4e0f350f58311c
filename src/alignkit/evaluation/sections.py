"""The content of a report, built once and rendered as HTML and Markdown.

Each ``*_section`` function turns one part of a run directory into a :class:`Section`: tables
whose cells are already formatted strings, figures (PNG ``data:`` URIs, HTML only), notes and
text examples. Because both renderers print the same cell strings, the HTML and the Markdown
carry exactly the same numbers. Model outputs stay plain strings here; the renderers escape them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignkit.evaluation import plots
from alignkit.evaluation.compare import Comparison
from alignkit.evaluation.rundir import RunData, as_float, is_estimate

SAMPLES_PER_KIND = 3
MAX_EXAMPLES = 10
ESTIMATE_COLUMNS = ["value", "CI low", "CI high", "n"]
MC_FIGURES = (
    ("mc1", "MC1 accuracy"),
    ("mc1_normalised", "MC1 accuracy (length-normalised)"),
    ("mc2", "MC2 (probability on true answers)"),
)


@dataclass
class Table:
    """A table of preformatted cells; ``columns`` are the header cells."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    figure: tuple[str, str] | None = None  # (caption, data URI) drawn beside the table
    align_numbers: bool = True  # right-align numeric cells in HTML


@dataclass
class Example:
    """A text example (a prompt and a model's response, untrusted) with a metadata line."""

    label: str
    prompt: str
    response: str
    details: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Section:
    """One titled part of a report."""

    title: str
    anchor: str
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)

    @property
    def figures(self) -> list[tuple[str, str]]:
        """The (caption, data URI) figures of the section's tables."""
        return [table.figure for table in self.tables if table.figure]

    def attach(self, caption: str, uri: str | None) -> None:
        """Draw figure ``uri`` (if any) beside the section's last table."""
        if uri and self.tables:
            self.tables[-1].figure = (caption, uri)


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; missing or non-finite values print as ``n/a``."""
    number = as_float(value)
    return "n/a" if not math.isfinite(number) else f"{number:.{digits}f}"


def fmt_p(value: Any, digits: int = 3) -> str:
    """A p-value with ``digits`` decimals; one below their resolution prints as ``<0.001`` (for
    3 digits), never as a p of zero."""
    number = as_float(value)
    floor = 10.0**-digits
    if math.isfinite(number) and number < floor:
        return f"<{floor:.{digits}f}"
    return fmt(number, digits)


def fmt_general(value: Any) -> str:
    """A number in 4 significant digits (training logs span many magnitudes)."""
    number = as_float(value)
    return "n/a" if not math.isfinite(number) else f"{number:.4g}"


def estimate_cells(estimate: Mapping[str, Any] | None) -> list[str]:
    """The cells value, CI low, CI high, n of an Estimate dict (``n/a`` when absent)."""
    if not estimate:
        return ["n/a", "n/a", "n/a", "0"]
    n = estimate.get("n")
    return [fmt(estimate.get(k)) for k in ("value", "low", "high")] + [str(n if n else 0)]


def with_ci(estimate: Mapping[str, Any] | None) -> str:
    """``value [low, high]`` in one cell."""
    value, low, high, _ = estimate_cells(estimate)
    return value if low == "n/a" else f"{value} [{low}, {high}]"


INTERVALS = {
    "clopper-pearson": "Clopper-Pearson exact interval (pass/fail rates over fewer than 30 items)",
    "wilson": "Wilson score interval (pass/fail rates)",
    "bca": "BCa bootstrap interval (other means)",
    "percentile": "percentile bootstrap interval (means where BCa is undefined)",
    "constant": "a point where every value is equal (nothing to resample)",
}
"""How each interval method of :mod:`alignkit.evaluation.stats` is described in reports."""


def interval_note(estimates: Sequence[Any]) -> str | None:
    """One sentence naming the interval methods the Estimate dicts ``estimates`` used."""
    methods = {e.get("method") for e in estimates if isinstance(e, Mapping)}
    said = [text for method, text in INTERVALS.items() if method in methods]
    if not said:
        return None  # files written before the method was recorded
    return "Intervals: " + "; ".join(said) + ". n: the items each figure is a share or mean of."


def prompt_text(prompt: Any) -> str:
    """A prompt as text (chat prompts as ``role: content`` lines)."""
    if isinstance(prompt, list):
        return "\n".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
            for m in prompt
        )
    return "" if prompt is None else str(prompt)


def _section(title: str, prefix: str) -> Section:
    slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
    return Section(title=title, anchor=f"{prefix}{slug}")


def overview_section(run: RunData, prefix: str = "") -> Section:
    """Where the figures come from: directory, model, suite, settings."""
    section = _section("Run", prefix)
    ev = run.eval or {}
    facts = [
        ("run directory", str(run.path)),
        ("model", run.model or "n/a"),
        ("suite", str(ev.get("suite", "n/a"))),
        ("items", str(ev.get("n_items", len(run.items) or "n/a"))),
        ("seed", str(ev.get("seed", "n/a"))),
        ("scorers", ", ".join(map(str, ev.get("scorers") or [])) or "n/a"),
        (
            "generation",
            json.dumps(ev["generation"], sort_keys=True) if ev.get("generation") else "n/a",
        ),
        ("created", str(ev.get("created", "n/a"))),
        ("alignkit version", str(ev.get("alignkit_version", "n/a"))),
    ]
    files = [
        n for n in ("eval", "preference", "multi_objective", "mc", "redteam") if getattr(run, n)
    ]
    facts.append(("results", ", ".join(files + (["training log"] if run.training else []))))
    facts = [f for f in facts if f[1] != "n/a"]  # a red-team or training run has no eval facts
    section.tables.append(Table("", ["", ""], [list(f) for f in facts], align_numbers=False))
    return section


def eval_section(run: RunData, prefix: str = "") -> Section | None:
    """Scores per dimension with CIs, breakdowns per category, judge agreement, skipped items."""
    if not run.eval:
        return None
    ev, section = run.eval, _section("Alignment scores", prefix)
    dimensions = ev.get("dimensions") or {}
    metrics = ev.get("metrics") or {}
    better = {
        m: bool((dimensions.get(m.rsplit("/", 1)[-1]) or {}).get("higher_is_better", True))
        for m in metrics
    }
    said = ev.get("definitions") or {}  # what each scorer's dimension measures
    rows = []
    for metric, estimate in metrics.items():
        generic = (dimensions.get(metric.rsplit("/", 1)[-1]) or {}).get("description", "")
        direction = "higher" if better[metric] else "lower"
        rows.append(
            [metric, str(said.get(metric) or generic), direction, *estimate_cells(estimate)]
        )
    section.tables.append(
        Table("Scores", ["metric", "what it measures", "better", *ESTIMATE_COLUMNS], rows)
    )
    section.attach("Scores per dimension", plots.dimension_bars(metrics, better))
    note = interval_note(list(metrics.values()))
    if note:
        section.notes.append(note)
    for metric, categories in (ev.get("breakdown") or {}).items():
        estimates = {c: e for c, e in (categories or {}).items() if is_estimate(e)}
        table_rows = [[c, *estimate_cells(e)] for c, e in estimates.items()]
        section.tables.append(
            Table(f"{metric} by category", ["category", *ESTIMATE_COLUMNS], table_rows)
        )
        if len(estimates) > 1:
            section.attach(
                f"{metric} by category",
                plots.breakdown_bars(metric, estimates, better.get(metric, True)),
            )
    agreement = ev.get("agreement") or {}
    if agreement:
        rows = [
            [name, fmt(a.get("agreement")), fmt(a.get("kappa")), str(a.get("n", 0))]
            for name, a in agreement.items()
        ]
        section.tables.append(
            Table(
                "Judge agreement with ground truth",
                ["scorer/dimension", "agreement", "Cohen's kappa", "n"],
                rows,
            )
        )
    skipped = ev.get("skipped") or {}
    if skipped.get("count"):
        reasons = "; ".join(f"{r}: {c}" for r, c in (skipped.get("reasons") or {}).items())
        section.notes.append(f"{skipped['count']} items skipped ({reasons or 'no reason given'}).")
    return section


def preference_section(run: RunData, prefix: str = "") -> Section | None:
    """Win rate against a baseline, position bias, implicit-reward accuracy and KL."""
    pref = run.preference
    if not pref:
        return None
    section = _section("Preference", prefix)
    section.notes.append(
        f"model {pref.get('model', 'n/a')} against baseline "
        f"{pref.get('baseline', 'n/a')}, judged by {pref.get('judge', 'n/a')}."
    )
    rows = []
    if pref.get("win_rate"):
        rows.append(["win rate", *estimate_cells(pref["win_rate"])])
    if pref.get("lc_win_rate") is not None:
        rows.append(
            [
                "length-controlled win rate",
                fmt(pref["lc_win_rate"]),
                "n/a",
                "n/a",
                str(pref.get("n", 0)),
            ]
        )
    bias = pref.get("position_bias") or {}
    for key, label in (
        ("consistent", "judge consistency (both orders)"),
        ("first_position_rate", "first-position preference rate"),
    ):
        if bias.get(key) is not None:
            rows.append([label, fmt(bias[key]), "n/a", "n/a", str(bias.get("n", 0))])
    reward = pref.get("implicit_reward") or {}
    for key, label in (
        ("accuracy", "implicit-reward accuracy"),
        ("accuracy_no_ref", "implicit-reward accuracy (no reference)"),
        ("margin", "implicit-reward margin"),
    ):
        if reward.get(key):
            rows.append([label, *estimate_cells(reward[key])])
    if pref.get("kl"):
        rows.append(["KL(policy || reference)", *estimate_cells(pref["kl"])])
    section.tables.append(Table("Preference figures", ["figure", *ESTIMATE_COLUMNS], rows))
    note = interval_note([pref.get("win_rate"), pref.get("kl"), *reward.values()])
    if note:
        section.notes.append(note)
    if pref.get("wins") is not None:
        counts = [[str(pref.get(k, 0)) for k in ("wins", "ties", "losses", "n")]]
        section.tables.append(Table("Outcomes", ["wins", "ties", "losses", "n"], counts))
    return section


def multi_objective_section(run: RunData, prefix: str = "") -> Section | None:
    """Models x objectives, the Pareto front, dominance and hypervolume."""
    mo = run.multi_objective
    if not mo:
        return None
    section = _section("Multi-objective", prefix)
    objectives = list(mo.get("objectives") or [])
    front, dominates = set(mo.get("front") or []), mo.get("dominates") or {}
    rows = [
        [
            name,
            *(fmt(scores.get(o)) for o in objectives),
            "yes" if name in front else "no",
            ", ".join(dominates.get(name) or []) or "-",
        ]
        for name, scores in (mo.get("models") or {}).items()
    ]
    section.tables.append(
        Table("Models", ["model", *objectives, "Pareto front", "dominates"], rows)
    )
    if mo.get("hypervolume") is not None:
        section.notes.append(
            f"Hypervolume {fmt(mo['hypervolume'])} (reference point {mo.get('reference')})."
        )
    section.attach("Pareto front", plots.pareto_scatter(mo))
    return section


def _flatten(data: Mapping[str, Any], prefix: str = "") -> tuple[dict, list[list[str]]]:
    """Estimate dicts and scalar numbers anywhere in ``data``, keyed by dotted path."""
    estimates: dict[str, Any] = {}
    scalars: list[list[str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if is_estimate(value):
            estimates[name] = value
        elif isinstance(value, Mapping):
            inner_est, inner_scalars = _flatten(value, f"{name}.")
            estimates.update(inner_est)
            scalars += inner_scalars
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars.append([name, fmt(value) if isinstance(value, float) else str(value)])
    return estimates, scalars


def generic_section(title: str, data: Mapping[str, Any] | None, prefix: str = "") -> Section | None:
    """Every estimate and number of a result file whose layout is not fixed (e.g. mc.json)."""
    if not data:
        return None
    section = _section(title, prefix)
    estimates, scalars = _flatten(data)
    if estimates:
        rows = [[name, *estimate_cells(e)] for name, e in estimates.items()]
        section.tables.append(Table("Figures", ["figure", *ESTIMATE_COLUMNS], rows))
    if scalars:
        section.tables.append(Table("Values", ["field", "value"], scalars))
    return section if section.tables else None


def mc_section(run: RunData, prefix: str = "") -> Section | None:
    """Multiple-choice accuracy (mc.json): MC1, normalised MC1 and MC2, overall and per
    category, against chance. Files of another layout get :func:`generic_section`."""
    mc = run.mc
    if not mc:
        return None
    if not any(is_estimate(mc.get(key)) for key, _ in MC_FIGURES):
        return generic_section("Multiple choice", mc, prefix)
    section = _section("Multiple choice", prefix)
    formats = ", ".join(f"{k}: {v}" for k, v in (mc.get("formats") or {}).items())
    section.notes.append(
        f"{mc.get('n', 'n/a')} questions from {mc.get('file', 'n/a')} ({formats or 'n/a'}); "
        f"MC1 accuracy by chance {fmt(mc.get('chance'))}."
    )
    overall = {label: mc[key] for key, label in MC_FIGURES if is_estimate(mc.get(key))}
    rows = [[label, *estimate_cells(est)] for label, est in overall.items()]
    section.tables.append(Table("Overall", ["figure", *ESTIMATE_COLUMNS], rows))
    note = interval_note(list(overall.values()))
    if note:
        section.notes.append(note)
    section.attach("Multiple choice", plots.estimate_bars(overall, "Multiple choice"))
    by_category = mc.get("by_category") or {}
    if by_category:
        rows = [
            [category, str(v.get("n", 0)), fmt(v.get("chance"))]
            + [with_ci(v.get(key)) for key, _ in MC_FIGURES]
            for category, v in by_category.items()
        ]
        columns = ["category", "n", "chance", "MC1", "MC1 normalised", "MC2"]
        section.tables.append(Table("By category", columns, rows))
    skipped = mc.get("skipped") or {}
    if skipped.get("count"):
        reasons = "; ".join(f"{r}: {c}" for r, c in (skipped.get("reasons") or {}).items())
        section.notes.append(f"{skipped['count']} records skipped ({reasons}).")
    return section


def _example(row: Any, number: int) -> Example:
    if not isinstance(row, Mapping):
        return Example(f"example {number}", "", str(row))
    details = [
        (str(k), str(v))
        for k, v in row.items()
        if k not in ("prompt", "response") and isinstance(v, (str, int, float, bool))
    ]
    return Example(
        f"example {number}", prompt_text(row.get("prompt")), str(row.get("response") or ""), details
    )


def training_section(run: RunData, prefix: str = "") -> Section | None:
    """Training curves of metrics.jsonl and first / last / best value of each logged figure."""
    if not run.training:
        return None
    section = _section("Training", prefix)
    keys = sorted(
        {
            k
            for row in run.training
            for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    rows = []
    for key in keys:
        values = [as_float(r[key]) for r in run.training if key in r]
        values = [v for v in values if math.isfinite(v)]
        if values:
            rows.append(
                [
                    key,
                    str(len(values)),
                    *(fmt_general(v) for v in (values[0], values[-1], min(values), max(values))),
                ]
            )
    section.tables.append(
        Table("Logged figures", ["figure", "points", "first", "last", "min", "max"], rows)
    )
    section.attach("Training curves", plots.training_curves(run.training))
    return section


def sample_items(
    items: Sequence[Mapping[str, Any]], per_kind: int = SAMPLES_PER_KIND
) -> list[dict]:
    """The first ``per_kind`` items of each kind, in file order."""
    taken: dict[str, int] = {}
    samples = []
    for item in items:
        kind = str(item.get("kind") or "other")
        if taken.get(kind, 0) < per_kind:
            taken[kind] = taken.get(kind, 0) + 1
            samples.append(dict(item))
    return samples


def samples_section(run: RunData, prefix: str = "") -> Section | None:
    """A few evaluated items per kind: prompt, response and scores."""
    samples = sample_items(run.items)
    if not samples:
        return None
    section = _section("Sample outputs", prefix)
    for item in samples:
        label = " · ".join(
            str(item.get(k)) for k in ("id", "kind", "category", "jailbreak") if item.get(k)
        )
        scores = [(m, fmt(s)) for m, s in (item.get("scores") or {}).items() if s is not None]
        section.examples.append(
            Example(label, prompt_text(item.get("prompt")), str(item.get("response") or ""), scores)
        )
    return section


def comparison_section(comparison: Comparison) -> Section:
    """Per metric: run A, run B, B - A with its CI, the p-value and significance."""
    section = Section("Comparison", "comparison")
    section.notes.append(
        f"Run A: {comparison.run_a} (model {comparison.model_a}); run B: {comparison.run_b} "
        f"(model {comparison.model_b}); suite {comparison.suite}, {comparison.n_common_items} "
        f"items in common. diff = B - A, paired over items: pass/fail metrics by the exact "
        f"McNemar test with Newcombe's (1998) paired score interval, others by a sign-flip "
        f"permutation test with a BCa bootstrap interval (column test); "
        f"{round(100 * comparison.confidence)}% CI; significant: p < "
        f"{1 - comparison.confidence:.2g}."
    )
    rows = []
    for m in comparison.metrics:
        t = m.test
        diff = fmt(t.diff) if math.isnan(t.low) else f"{fmt(t.diff)} [{fmt(t.low)}, {fmt(t.high)}]"
        rows.append(
            [
                m.metric,
                with_ci(m.a),
                with_ci(m.b),
                diff,
                fmt_p(t.p_value, 4),
                "yes" if m.significant else "no",
                m.better or "-",
                str(t.n),
                t.method or "n/a",
            ]
        )
    columns = [
        "metric", "run A", "run B", "diff [CI]", "p-value", "significant", "better", "n", "test",
    ]  # fmt: skip
    section.tables.append(Table("Paired comparison", columns, rows))
    labels = [
        f"{model} ({path.name})"
        for model, path in (
            (comparison.model_a, comparison.run_a),
            (comparison.model_b, comparison.run_b),
        )
    ]
    rows = [m.to_dict() for m in comparison.metrics]
    section.attach("Run A vs run B", plots.comparison_bars(rows, *labels))
    return section


def run_sections(run: RunData, prefix: str = "") -> list[Section]:
    """Every section a run directory has data for, in report order."""
    from alignkit.evaluation.redteam_section import redteam_section

    built = [
        overview_section(run, prefix),
        eval_section(run, prefix),
        preference_section(run, prefix),
        multi_objective_section(run, prefix),
        mc_section(run, prefix),
        redteam_section(run, prefix),
        training_section(run, prefix),
        samples_section(run, prefix),
    ]
    return [s for s in built if s is not None]
