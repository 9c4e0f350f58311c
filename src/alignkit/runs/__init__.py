"""History across runs: find the run directories alignkit wrote, read their figures, and follow
them over time (``alignkit runs list|show|trend``).

``find_runs("runs")`` lists every run below a folder (:class:`RunInfo`); ``trend(runs, metrics)``
orders them by time and pairs consecutive runs of one model; ``write_trend_html(result, path)``
writes the self-contained trend page.
"""

from __future__ import annotations

from alignkit.runs.discover import RunInfo, find_runs, read_dir
from alignkit.runs.page import render_trend_html, write_trend_html
from alignkit.runs.trend import METRICS, headline_text, trend

__all__ = [
    "METRICS",
    "RunInfo",
    "find_runs",
    "headline_text",
    "read_dir",
    "render_trend_html",
    "trend",
    "write_trend_html",
]
