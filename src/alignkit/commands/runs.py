"""``alignkit runs list|show|trend``: the runs alignkit wrote, their figures, and their history.

``list [DIR ...]`` finds every run below the folders (default ``runs/``) and prints kind, path,
model, time and headline figures, unreadable runs with their reason; ``show RUN_DIR`` prints
one run's figures with n and 95% interval; ``trend RUN_DIR ...`` writes one HTML page of the
chosen metrics over time, with paired tests between consecutive runs of one model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from alignkit.commands._console import change_table, print_note, stdout
from alignkit.errors import DataError

group = typer.Typer(
    name="runs",
    help="History across runs: list the runs alignkit wrote, show one, plot them over time.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``runs`` command group to ``app``."""
    app.add_typer(group)


def _collect(dirs: list[Path]) -> list:
    """Every run in and below ``dirs`` (each run once, by path and kind)."""
    from alignkit.runs import find_runs

    seen, runs = set(), []
    for directory in dirs:
        for run in find_runs(directory):
            key = (str(run.path.resolve()), run.kind)
            if key not in seen:
                seen.add(key)
                runs.append(run)
    return runs


def list_table(runs: list) -> Table:
    """kind, path, model, time, headline figures (or the reason a run is unreadable)."""
    from alignkit.runs import headline_text

    table = Table(title="alignkit runs", title_justify="left")
    for column in ("kind", "path", "model", "time (UTC)", "figures [95% CI]"):
        table.add_column(column, overflow="fold")
    for run in runs:
        kind = run.kind if run.readable else f"{run.kind} [red](unreadable)[/]"
        time = run.time_text + ("" if run.time_source == "created" else " (file)")
        table.add_row(kind, escape(str(run.path)), escape(str(run.model or "")), time,
                      escape(headline_text(run, sep="\n")))  # fmt: skip
    return table


def figures_table(run) -> Table:
    """One run's figures: value [95% CI] and n per metric."""
    from alignkit.runs.trend import METRICS, figure_text

    title = f"{run.kind} run {run.path} ({run.model or 'unknown model'}, {run.time_text})"
    table = Table(title=escape(title), title_justify="left")
    for column in ("figure", "value [95% CI]", "n"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for name, figure in run.figures.items():
        n = "" if figure.get("n") is None else str(figure["n"])
        table.add_row(METRICS[name][0], figure_text(figure), n)
    return table


@group.command("list")
def list_cmd(
    dirs: Annotated[
        Optional[list[Path]],  # noqa: UP045 (typer reads the annotation at run time)
        typer.Argument(help="Folders to search, recursively [default: runs]."),
    ] = None,
) -> None:
    """List every run below DIR: kind, path, model, time and headline figures."""
    runs = _collect(dirs or [Path("runs")])
    stdout().print(list_table(runs))
    bad = sum(not r.readable for r in runs)
    print_note(f"{len(runs)} runs, {bad} unreadable")


@group.command("show")
def show_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
) -> None:
    """Print the figures of one run, each with n and its 95% interval."""
    from alignkit.runs import read_dir

    if not run_dir.is_dir():
        raise DataError(f"runs show: {str(run_dir)!r} is not a directory")
    runs = read_dir(run_dir)
    if not runs:
        raise DataError(
            f"runs show: {str(run_dir)!r} holds no alignkit run (no eval.json, redteam.json, "
            "campaign.sqlite, metrics.jsonl, run.json or pipeline.json)"
        )
    bad = [r for r in runs if not r.readable]
    if bad:
        raise DataError(f"runs show: unreadable {bad[0].kind} run: {bad[0].error}")
    console = stdout()
    for run in runs:
        if run.figures:
            console.print(figures_table(run))
        if run.change:
            title = escape(f"pipeline run {run.path} ({run.model}): before and after the loop")
            console.print(change_table(run.change, title=title))
        if not run.figures and not run.change:
            console.print(escape(f"{run.kind} run {run.path}: no figures yet"))


@group.command("trend")
def trend_cmd(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run directories, or folders whose runs are all taken.")
    ],
    metrics: Annotated[
        Optional[list[str]],  # noqa: UP045 (typer reads the annotation at run time)
        typer.Option("--metrics", help="Metrics (repeat or comma-separate) [default: all]."),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML page to write.")] = Path(
        "trend.html"
    ),
) -> None:
    """Write one HTML page of the chosen metrics over time, with paired tests between
    consecutive runs of one model on the same items."""
    from alignkit.runs import trend, write_trend_html

    runs = _collect(run_dirs)
    if not any(r.readable for r in runs):
        raise DataError(f"runs trend: no readable run in {', '.join(map(str, run_dirs))}")
    result = trend(runs, metrics)
    path = write_trend_html(result, output)
    stdout().print(trend_table(result))
    print_note(f"{len(result['runs'])} runs, {len(result['unreadable'])} unreadable")
    print_note(f"wrote trend page to {path}")


def trend_table(result: dict) -> Table:
    """Per metric, the changes between consecutive runs (paired where the items match)."""
    from alignkit.pipeline.headline import cell

    table = Table(title="changes between runs", title_justify="left")
    for column in ("metric", "from", "to", "change [95% CI]", "p", "n", "flag"):
        table.add_column(column, justify="left" if column in ("metric", "flag") else "right")
    for metric in result["metrics"].values():
        for c in metric["changes"]:
            p = c.get("p_value")
            flag = f"significant, {c['direction']}" if c.get("significant") else ""
            table.add_row(
                metric["label"], f"#{c['from']}", f"#{c['to']}",
                cell(c.get("diff"), [c.get("low"), c.get("high")], "+"),
                "" if p is None else f"{p:.4f}", str(c.get("n") or ""),
                flag if c.get("paired") else f"not paired: {c.get('reason')}",
            )  # fmt: skip
    return table
