"""The trend page: one self-contained HTML file of :func:`alignkit.runs.trend.trend`'s result.

Per metric a matplotlib plot (each run's value with its 95% interval as an error bar, runs in
time order, one line per model, significant paired changes ringed red), embedded as a PNG
``data:`` URI, then the table of runs and the table of changes. Like alignkit's report
(:mod:`alignkit.evaluation.report`): inline CSS, no scripts, the same Content-Security-Policy,
and jinja2 autoescaping for every value (model names and paths are shown as text).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import jinja2

from alignkit.atomic import write_text
from alignkit.evaluation.report import CONTENT_SECURITY_POLICY
from alignkit.pipeline.headline import cell

TEMPLATES = Path(__file__).parent / "templates"
_COLOURS = ("#2b6cb0", "#dd6b20", "#2f855a", "#805ad5", "#b7791f", "#319795", "#718096")
_LEGEND_CHARS = 40


def _short(text: str | None, limit: int = _LEGEND_CHARS) -> str:
    text = " ".join(str(text).split()) if text is not None else "unknown model"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bars(points: list[dict[str, Any]]) -> tuple[list[float], list[list[float]]]:
    """Values and asymmetric error-bar lengths (0 where the interval is unknown)."""
    values, below, above = [], [], []
    for p in points:
        value = p["value"] if p["value"] is not None else math.nan
        values.append(value)
        below.append(value - p["low"] if p["low"] is not None else 0.0)
        above.append(p["high"] - value if p["high"] is not None else 0.0)
    return values, [[max(b, 0.0) for b in below], [max(a, 0.0) for a in above]]


def metric_plot(metric: dict[str, Any], runs: list[dict[str, Any]]) -> str | None:
    """One metric over the runs as a PNG ``data:`` URI: x is the run's place in time order
    (``#index``), y its value with the interval; None when no run has a value."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from alignkit.evaluation.plots import figure_to_data_uri

    points = [p for p in metric["points"] if p["value"] is not None]
    if not points:
        return None
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        figure = Figure(figsize=(7.0, 3.0), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        models = list(dict.fromkeys(runs[p["run"]]["model"] for p in points))
        for k, model in enumerate(models):
            mine = [p for p in points if runs[p["run"]]["model"] == model]
            values, errors = _bars(mine)
            axes.errorbar([p["run"] for p in mine], values, yerr=errors, fmt="o-",
                          capsize=4, color=_COLOURS[k % len(_COLOURS)],
                          label=_short(model))  # fmt: skip
        flagged = [c["to"] for c in metric["changes"] if c.get("significant")]
        ys = {p["run"]: p["value"] for p in points}
        rings = [(i, ys[i]) for i in flagged if i in ys]
        if rings:
            axes.scatter(*zip(*rings, strict=True), s=160, facecolors="none",
                         edgecolors="#c53030", linewidths=2, label="significant change",
                         zorder=3)  # fmt: skip
        axes.set_xticks(sorted(ys), [f"#{i}" for i in sorted(ys)])
        axes.set_xlabel("run, in time order (see the table)")
        better = "higher is better" if metric["higher_is_better"] else "lower is better"
        axes.set_ylabel(better)
        axes.set_title(f"{metric['label']} (error bars: 95% interval)", fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="best")
        return figure_to_data_uri(figure)


def _number(value: Any, spec: str = ".3f", sign: str = "") -> str:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return format(value, sign + spec) if ok else "n/a"


def _side(change: dict[str, Any], runs: list[dict[str, Any]], name: str, side: str) -> str:
    """A change's before (``side="before"``) or after value with its interval: from the
    paired test where there is one, else the run's own figure."""
    if change.get(side) is not None:
        return cell(change[side], change.get(f"{side}_ci"))
    figure = runs[change["from" if side == "before" else "to"]]["figures"].get(name, {})
    return cell(figure.get("value"), [figure.get("low"), figure.get("high")])


def change_rows(name: str, metric: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict]:
    """The changes of metric ``name`` as table cells (all text)."""
    rows = []
    for c in metric["changes"]:
        p = c.get("p_value")
        test = c.get("method") or ("" if c.get("paired") else f"not paired: {c.get('reason')}")
        rows.append({
            "from": f"#{c['from']}", "to": f"#{c['to']}", "model": str(c.get("model")),
            "before": _side(c, runs, name, "before"), "after": _side(c, runs, name, "after"),
            "diff": cell(c.get("diff"), [c.get("low"), c.get("high")], "+"),
            "p": _number(p, ".4f") if p is not None else "", "n": str(c.get("n") or ""),
            "test": f"{test} ({c['source']})",
            "flag": f"significant, {c['direction']}" if c.get("significant") else "",
        })  # fmt: skip
    return rows


def page_context(result: dict[str, Any], title: str) -> dict[str, Any]:
    """Everything the template shows, as text (and PNG URIs)."""
    runs = result["runs"]
    sections = []
    for name, metric in result["metrics"].items():
        points = [{"index": f"#{p['run']}", "time": runs[p["run"]]["time_text"],
                   "kind": runs[p["run"]]["kind"], "role": runs[p["run"]]["role"] or "",
                   "model": str(runs[p["run"]]["model"]), "path": runs[p["run"]]["path"],
                   "value": cell(p["value"], [p["low"], p["high"]]),
                   "n": "" if p["n"] is None else str(p["n"])}
                  for p in metric["points"]]  # fmt: skip
        sections.append({"anchor": f"metric-{name}", "name": name, "label": metric["label"],
                         "better": "higher" if metric["higher_is_better"] else "lower",
                         "plot": metric_plot(metric, runs), "points": points,
                         "changes": change_rows(name, metric, runs)})  # fmt: skip
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"title": title, "csp": CONTENT_SECURITY_POLICY, "sections": sections,
            "runs": runs, "unreadable": result["unreadable"], "generated": generated}  # fmt: skip


def render_trend_html(result: dict[str, Any], title: str = "alignkit runs over time") -> str:
    """The trend page as HTML text (autoescaped: every value is shown as text)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )  # fmt: skip
    return env.get_template("trend.html.j2").render(**page_context(result, title))


def write_trend_html(result: dict[str, Any], output: str | Path = "trend.html") -> Path:
    """Write the trend page of ``result`` (:func:`~alignkit.runs.trend.trend`) to ``output``
    atomically; returns its path."""
    path = Path(output)
    write_text(path, render_trend_html(result))
    return path
