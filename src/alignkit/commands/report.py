"""``alignkit report RUN_DIR [OTHER_RUN_DIR]``: HTML / Markdown / JSON reports of eval runs.

A demo or pipeline run directory gets the pipeline's report again, in ``RUN_DIR/report``
(with the people's verdicts as they are now, where the run has been reviewed).

With one run directory it writes ``report.{html,md,json}``; with two it compares the second
run against the first (a paired test per metric) and writes ``comparison.{html,md,json}``.
Files go into ``--output`` or, by default, the first run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from alignkit.commands._console import print_note, stdout

if TYPE_CHECKING:  # the evaluation package loads on first use of the command
    from alignkit.evaluation.report import AlignmentReportGenerator


def _metric_column(table: Table, rows: list[list[str]], header: str = "metric") -> None:
    """A first column wide enough for the longest name, so names are never cut."""
    width = max([len(header), *(len(row[0]) for row in rows)])
    table.add_column(header, no_wrap=True, min_width=width)


def _comparison_table(generator: AlignmentReportGenerator) -> Table:
    table = Table(title=escape(generator.title), title_justify="left")
    rows = _comparison_rows(generator)
    _metric_column(table, rows)
    for column in ("run A", "run B", "B - A [CI]", "p-value", "significant"):
        table.add_column(column, justify="right", min_width=min(len(column), 7))
    for row in rows:
        cells = [escape(c) for c in row[:6]]
        cells[0] += f"\nn = {escape(row[7])}"  # the items paired, under the metric's name
        cells[1:3] = [c.split(" [")[0] for c in cells[1:3]]  # CIs of each run: in the files
        cells[5] = "[green]yes[/]" if row[5] == "yes" else "no"
        table.add_row(*cells)
    return table


def _comparison_rows(generator: AlignmentReportGenerator) -> list[list[str]]:
    """The rows of the paired-comparison table of a loaded comparison report."""
    for _, sections in generator.sections():
        for section in sections:
            if section.anchor == "comparison":
                return section.tables[0].rows
    return []


def _summary_table(generator: AlignmentReportGenerator) -> Table | None:
    """The first table of the report after the run overview (usually the scores)."""
    for _, sections in generator.sections():
        for section in sections[1:]:
            if section.tables:
                source = section.tables[0]
                table = Table(
                    title=escape(f"{generator.title}: {section.title.lower()}"),
                    title_justify="left",
                )
                # long descriptions stay in the files; the terminal gets the numbers
                keep = [
                    i for i, c in enumerate(source.columns)
                    if c not in ("dimension", "what it measures")
                ]  # fmt: skip
                _metric_column(table, source.rows, escape(source.columns[0]))
                for i in keep[1:]:
                    table.add_column(escape(source.columns[i]), justify="right")
                for row in source.rows:
                    table.add_row(*(escape(row[i]) for i in keep))
                return table
    return None


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""

    @app.command("report")
    def report(
        run_dir: Annotated[
            Path,
            typer.Argument(help="Run directory of 'alignkit eval', or of a demo / pipeline."),
        ],
        other_run_dir: Annotated[
            Optional[Path],  # noqa: UP045 (typer reads the annotation at run time)
            typer.Argument(help="A second run on the same suite: compare it against RUN_DIR."),
        ] = None,
        output: Annotated[
            Optional[Path],  # noqa: UP045 (typer reads the annotation at run time)
            typer.Option(
                "--output", "-o", help="Directory for the report files [default: RUN_DIR]."
            ),
        ] = None,
        formats: Annotated[
            str, typer.Option("--format", help="Comma-separated formats: html, md, json.")
        ] = "html,md,json",
    ) -> None:
        """Write an HTML / Markdown / JSON report of a run, or compare two runs."""
        from alignkit.evaluation.report import AlignmentReportGenerator, check_formats

        chosen = check_formats(formats)
        if other_run_dir is None and (run_dir / "pipeline.json").is_file():
            from alignkit.pipeline.report import PipelineReport  # a demo / pipeline run

            generator = PipelineReport(run_dir).load()
            output = output or run_dir / "report"
        else:
            generator = AlignmentReportGenerator(run_dir, compare_to=other_run_dir).load()
        paths = generator.write(output, chosen)
        console = stdout()
        table = _comparison_table(generator) if generator.comparison else _summary_table(generator)
        if table is not None:
            console.print(table)
        for fmt, path in paths.items():
            print_note(f"wrote {fmt} report to {path}")
