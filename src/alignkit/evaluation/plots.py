"""Report figures as PNG ``data:`` URIs, drawn with matplotlib's Agg canvas (no display needed).

Each function takes the plain data of a run-directory file and returns a
``data:image/png;base64,...`` string (or None when there is nothing to draw), ready to be
embedded in a self-contained HTML page. Figures are built on :class:`matplotlib.figure.Figure`
with an Agg canvas directly, so pyplot's global state and the user's backend are left alone.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from alignkit.evaluation.rundir import as_float

_BLUE, _ORANGE, _GREY, _GREEN = "#2b6cb0", "#dd6b20", "#a0aec0", "#2f855a"
_DPI = 100
# training-log panels: title -> keys drawn in it (train and eval/ variants)
_TRAINING_PANELS = (
    ("loss", ("loss", "eval/loss")),
    ("reward accuracy", ("rewards/accuracies", "eval/rewards/accuracies")),
    ("reward margin", ("rewards/margins", "eval/rewards/margins")),
)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_to_data_uri(figure: Figure) -> str:
    """Render ``figure`` as PNG and return it as a base64 ``data:`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _error_bars(estimates: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[list[float]]]:
    """Bar values and asymmetric error-bar lengths (0 where the CI is unknown)."""
    values, below, above = [], [], []
    for est in estimates:
        value, low, high = (as_float(est.get(k)) for k in ("value", "low", "high"))
        values.append(0.0 if math.isnan(value) else value)
        below.append(0.0 if math.isnan(low) or math.isnan(value) else max(value - low, 0.0))
        above.append(0.0 if math.isnan(high) or math.isnan(value) else max(high - value, 0.0))
    return values, [below, above]


def estimate_bars(
    estimates: Mapping[str, Mapping[str, Any]],
    title: str,
    xlabel: str = "score (error bars: confidence interval)",
    highlight: Mapping[str, bool] | None = None,
    lower_is_better: bool = False,
) -> str | None:
    """Horizontal bars of ``name -> Estimate dict`` with their CIs as error bars and their n.

    ``highlight`` maps a name to False for lower-is-better figures (drawn orange and marked
    "(lower is better)"); the rest are blue. ``lower_is_better`` draws every bar orange.
    """
    names = list(estimates)
    if not names:
        return None
    values, errors = _error_bars([estimates[n] for n in names])
    lower = {n for n in names if highlight is not None and highlight.get(n) is False}
    labels = [f"{n} (lower is better)" if n in lower else n for n in names]
    labels = [  # each bar's n beside its name
        f"{label}, n={estimates[n]['n']}" if estimates[n].get("n") else label
        for label, n in zip(labels, names, strict=True)
    ]
    colours = [_ORANGE if n in lower or lower_is_better else _BLUE for n in names]
    figure = _new_figure(6.0, 0.9 + 0.38 * len(names))
    axes = figure.add_subplot()
    positions = list(range(len(names)))[::-1]
    axes.barh(positions, values, xerr=errors, color=colours, capsize=3, ecolor="#1a202c")
    axes.set_yticks(positions, labels)
    axes.set_xlabel(xlabel)
    axes.set_title(title, loc="left")
    if all(0.0 <= v <= 1.0 for v in values):
        axes.set_xlim(0.0, 1.05)
    axes.grid(axis="x", alpha=0.3)
    return figure_to_data_uri(figure)


def dimension_bars(
    metrics: Mapping[str, Mapping[str, Any]], higher_is_better: Mapping[str, bool]
) -> str | None:
    """Per-dimension scores of eval.json (``scorer/dimension -> Estimate``) with CI bars."""
    return estimate_bars(metrics, "Scores per dimension", highlight=higher_is_better)


def breakdown_bars(
    metric: str, categories: Mapping[str, Mapping[str, Any]], higher_is_better: bool = True
) -> str | None:
    """One metric broken down by category (``category -> Estimate``)."""
    title = f"{metric} by category" + ("" if higher_is_better else " (lower is better)")
    return estimate_bars(
        categories, title, xlabel=f"{metric} (with CI)", lower_is_better=not higher_is_better
    )


def comparison_bars(rows: Sequence[Mapping[str, Any]], label_a: str, label_b: str) -> str | None:
    """Grouped bars of each compared metric for run A and run B, with their CIs."""
    if not rows:
        return None
    names = [row["metric"] for row in rows]
    values_a, errors_a = _error_bars([row["a"] for row in rows])
    values_b, errors_b = _error_bars([row["b"] for row in rows])
    figure = _new_figure(7.5, 1.0 + 0.6 * len(names))
    axes = figure.add_subplot()
    base = [2.0 * i for i in range(len(names))][::-1]
    axes.barh(
        [p + 0.4 for p in base],
        values_a,
        height=0.8,
        xerr=errors_a,
        color=_GREY,
        capsize=3,
        label=f"A: {label_a}",
    )
    axes.barh(
        [p - 0.4 for p in base],
        values_b,
        height=0.8,
        xerr=errors_b,
        color=_BLUE,
        capsize=3,
        label=f"B: {label_b}",
    )
    axes.set_yticks(base, names)
    axes.set_title("Run A vs run B", loc="left")
    axes.set_xlabel("score (error bars: confidence interval)")
    figure.legend(loc="outside lower center", ncols=2, fontsize="small")
    axes.grid(axis="x", alpha=0.3)
    return figure_to_data_uri(figure)


def pareto_scatter(multi_objective: Mapping[str, Any]) -> str | None:
    """Scatter of every model on two objectives, the Pareto front highlighted and joined.

    Returns None unless ``multi_objective.json`` has exactly two objectives.
    """
    objectives = list(multi_objective.get("objectives") or [])
    models = multi_objective.get("models") or {}
    if len(objectives) != 2 or not models:
        return None
    x_name, y_name = objectives
    front = set(multi_objective.get("front") or [])
    better = multi_objective.get("higher_is_better") or {}
    figure = _new_figure(6.5, 4.8)
    axes = figure.add_subplot()
    points = {m: (as_float(v.get(x_name)), as_float(v.get(y_name))) for m, v in models.items()}
    for name, (x, y) in points.items():
        on_front = name in front
        axes.scatter(
            [x],
            [y],
            s=80 if on_front else 40,
            color=_GREEN if on_front else _GREY,
            edgecolors="#1a202c",
            zorder=3,
        )
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small")
    line = sorted((points[m] for m in front if m in points), key=lambda p: p[0])
    if len(line) > 1:
        axes.plot([p[0] for p in line], [p[1] for p in line], color=_GREEN, alpha=0.6, zorder=2)

    def label(name: str) -> str:
        return name if better.get(name, True) else f"{name} (lower is better)"

    axes.set_xlabel(label(x_name))
    axes.set_ylabel(label(y_name))
    axes.set_title("Pareto front (green: not dominated)", loc="left")
    axes.grid(alpha=0.3)
    return figure_to_data_uri(figure)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for index, row in enumerate(rows):
        value = as_float(row.get(key))
        if not math.isnan(value):
            step = as_float(row.get("step"))
            steps.append(float(index) if math.isnan(step) else step)
            values.append(value)
    return steps, values


def training_panels(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
    """The panels of :func:`training_curves` that have data: the fixed train/eval pairs, then
    one panel per remaining ``eval/*`` key (e.g. ``eval/kl``)."""
    keys = {k for row in rows for k, v in row.items() if isinstance(v, (int, float))}
    panels = [(t, tuple(k for k in ks if k in keys)) for t, ks in _TRAINING_PANELS]
    panels = [(t, ks) for t, ks in panels if ks]
    used = {k for _, ks in panels for k in ks}
    panels += [(k, (k,)) for k in sorted(keys) if k.startswith("eval/") and k not in used]
    return panels


def training_curves(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Training curves from metrics.jsonl: loss, reward accuracy and margin (train and
    ``eval/``), and any other ``eval/*`` figure, against the step."""
    panels = training_panels(rows)
    if not panels:
        return None
    columns = 2 if len(panels) > 1 else 1
    grid_rows = math.ceil(len(panels) / columns)
    figure = _new_figure(7.5 if columns == 2 else 5.5, 2.6 * grid_rows)
    for number, (title, keys) in enumerate(panels, start=1):
        axes = figure.add_subplot(grid_rows, columns, number)
        for key in keys:
            steps, values = _series(rows, key)
            is_eval = key.startswith("eval/")
            axes.plot(
                steps,
                values,
                marker="o" if is_eval else None,
                markersize=3,
                color=_ORANGE if is_eval else _BLUE,
                label="eval" if is_eval else "train",
            )
        axes.set_title(title, loc="left", fontsize="medium")
        axes.set_xlabel("step", fontsize="small")
        axes.grid(alpha=0.3)
        if len(keys) > 1:
            axes.legend(fontsize="x-small")
    return figure_to_data_uri(figure)
