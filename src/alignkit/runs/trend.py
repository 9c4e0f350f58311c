"""Figures of several runs over time, and the paired change between consecutive runs.

:func:`trend` orders the readable runs by time (then path) and, per chosen metric, lists every
run's figure (value, 95% interval, n) and the changes between consecutive runs of the same
model: where both are eval runs that scored the same item ids for the metric, the change is the
paired test of :func:`alignkit.pipeline.headline.paired` (exact McNemar test and Newcombe's
interval for 0/1 scores; sign-flip permutation test and BCa interval otherwise), flagged
significant at p < 0.05; otherwise the plain difference, marked not paired, with the reason.
A demo / pipeline run adds its own before/after change (``evaluate/change.json``) between its
``baseline/`` and ``evaluate/`` runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from alignkit.errors import ConfigError
from alignkit.pipeline.headline import HEADLINE, LABELS, cell, paired
from alignkit.runs.discover import RunInfo

ALPHA = 0.05
METRICS: dict[str, tuple[str, bool]] = {
    # name: (label, higher is better)
    **{name: (LABELS[name], spec[3]) for name, spec in HEADLINE.items()},
    "redteam_asr": ("red-team ASR", False),
    "redteam_attempt_success": ("red-team success per attempt", False),
    "dpo_loss": ("DPO final loss", False),
    "reward_accuracy": ("DPO reward accuracy", True),
}
"""Every metric a run can carry, in display order."""
LIST_METRICS = ("harmful_compliance", "jailbreak_asr", "helpful", "honest", "redteam_asr",
                "dpo_loss", "reward_accuracy")  # fmt: skip
"""The metrics ``alignkit runs list`` shows."""


def figure_text(figure: dict[str, Any]) -> str:
    """``value [low, high]`` (3 decimals; just the value without an interval)."""
    return cell(figure.get("value"), [figure.get("low"), figure.get("high")])


def headline_text(run: RunInfo, metrics: Sequence[str] = LIST_METRICS, sep: str = "; ") -> str:
    """A run's figures, ``label value [low, high] n=N`` joined by ``sep``; a pipeline run's
    figures as ``before -> after``; a redteam store without summary: its per-attempt success."""
    if not run.readable:
        return f"unreadable: {run.error}"
    parts = []
    for name in metrics:
        figure = run.figures.get(name)
        if figure is not None:
            n = f" n={figure['n']}" if figure.get("n") is not None else ""
            parts.append(f"{METRICS[name][0]} {figure_text(figure)}{n}")
    for name in metrics:
        row = run.change.get(name)
        if row is not None:
            before, after = (cell(row.get(k)) for k in ("before", "after"))
            parts.append(f"{LABELS.get(name, name)} {before} -> {after} n={row.get('n')}")
    if not parts and run.figures.get("redteam_attempt_success"):
        figure = run.figures["redteam_attempt_success"]
        parts.append(f"success per attempt {figure_text(figure)} n={figure['n']} (no summary)")
    return sep.join(parts) or "no figures"


def check_metrics(metrics: Iterable[str] | None, runs: Sequence[RunInfo]) -> list[str]:
    """The chosen metrics (comma-separated entries allowed), or every metric some run has; an
    unknown name raises ConfigError."""
    if not metrics:
        present = {name for run in runs for name in run.figures}
        present |= {name for run in runs for name in run.change if name in METRICS}
        return [name for name in METRICS if name in present]
    chosen = [m.strip() for entry in metrics for m in entry.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise ConfigError(
            f"runs trend --metrics: unknown metric(s) {unknown}; choose from {', '.join(METRICS)}"
        )
    return list(dict.fromkeys(chosen))


def order(runs: Iterable[RunInfo]) -> list[RunInfo]:
    """Readable runs sorted by time (runs without a time last), then path and kind."""
    far = "9999"
    return sorted(
        (r for r in runs if r.readable),
        key=lambda r: (r.time.isoformat() if r.time else far, str(r.path), r.kind),
    )


def _change(metric: str, a: RunInfo, b: RunInfo, ia: int, ib: int, seed: int) -> dict:
    """The change of ``metric`` from run ``a`` (index ``ia``) to the next run ``b`` of its
    model: paired over the same items where both scored the same ones."""
    higher = METRICS[metric][1]
    row: dict[str, Any] = {"from": ia, "to": ib, "model": a.model, "source": "consecutive runs"}
    before, after = a.items.get(metric), b.items.get(metric)
    if before and after and set(before) == set(after):
        test = paired(before, after, higher, seed) or {}
        row.update(test, paired=True)
        row["significant"] = test.get("p_value") is not None and test["p_value"] < ALPHA
    else:
        va, vb = a.figures[metric]["value"], b.figures[metric]["value"]
        row.update(paired=False, significant=False,
                   diff=None if va is None or vb is None else vb - va,
                   reason="items differ" if before and after else "no per-item values")  # fmt: skip
    return _direction(row, higher)


def _direction(row: dict[str, Any], higher: bool) -> dict[str, Any]:
    diff = row.get("diff")
    if not row.get("significant") or diff is None:
        row["direction"] = ""
    else:
        row["direction"] = "better" if (diff > 0) == higher else "worse"
    return row


def _pipeline_changes(metric: str, runs: list[RunInfo]) -> list[dict[str, Any]]:
    """The before/after change a pipeline recorded, between its baseline and evaluate runs."""
    where = {(str(r.path), r.kind): i for i, r in enumerate(runs)}
    out = []
    for run in runs:
        row = run.change.get(metric) if run.kind == "pipeline" else None
        ends = [where.get((str(run.path / d), "eval")) for d in ("baseline", "evaluate")]
        if row is None or None in ends:
            continue
        p = row.get("p_value")
        change = {**row, "from": ends[0], "to": ends[1], "model": run.model, "paired": True,
                  "source": "pipeline change.json",
                  "significant": isinstance(p, (int, float)) and p < ALPHA}  # fmt: skip
        change.setdefault("diff", None)
        out.append(_direction(change, METRICS[metric][1]))
    return out


def trend(
    runs: Iterable[RunInfo], metrics: Iterable[str] | None = None, seed: int = 0
) -> dict[str, Any]:
    """Runs in time order and, per metric, each run's figure and the changes.

    Returns ``{"runs": [RunInfo.to_dict() + "index"], "unreadable": [...], "metrics": {name:
    {"label", "higher_is_better", "points": [{"run": index, **figure}], "changes": [{"from",
    "to", "model", "diff", "low", "high", "p_value", "n", "method", "paired", "significant",
    "direction", "source"}]}}}``; indices are positions in ``runs``."""
    runs = list(runs)
    ordered = order(runs)
    chosen = check_metrics(metrics, ordered)
    table: dict[str, Any] = {}
    for metric in chosen:
        label, higher = METRICS[metric]
        points = [{"run": i, **r.figures[metric]} for i, r in enumerate(ordered)
                  if metric in r.figures]  # fmt: skip
        changes, last = [], {}
        for i, run in enumerate(ordered):
            if metric not in run.figures:
                continue
            if run.model in last:
                j = last[run.model]
                changes.append(_change(metric, ordered[j], run, j, i, seed))
            last[run.model] = i
        changes += _pipeline_changes(metric, ordered)
        table[metric] = {"label": label, "higher_is_better": higher, "points": points,
                         "changes": changes}  # fmt: skip
    return {
        "runs": [{"index": i, **r.to_dict()} for i, r in enumerate(ordered)],
        "unreadable": [r.to_dict() for r in runs if not r.readable],
        "metrics": table,
    }
