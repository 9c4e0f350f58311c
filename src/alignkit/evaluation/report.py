"""Alignment reports: one self-contained HTML page, plus Markdown and JSON with the same numbers.

``AlignmentReportGenerator("runs/dpo").write()`` reads a run directory (see
:mod:`alignkit.evaluation.rundir`) and writes ``report.html``, ``report.md`` and ``report.json``
into it. With ``compare_to=OTHER_RUN`` it writes ``comparison.*`` instead: a paired test per
metric (:func:`alignkit.evaluation.compare.compare_runs`) followed by both runs.

The HTML embeds its figures as PNG ``data:`` URIs, carries its CSS inline, has no JavaScript,
and sets a Content-Security-Policy that allows nothing but inline styles and ``data:`` images.
It is rendered by jinja2 with autoescaping on: model outputs (adversarial by nature) are shown
as text, never interpreted as markup.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from alignkit.errors import ConfigError, DataError
from alignkit.evaluation.compare import Comparison, compare_runs
from alignkit.evaluation.rundir import RunData, json_safe, load_run, write_text
from alignkit.evaluation.sections import (
    Section,
    comparison_section,
    run_sections,
    sample_items,
)

FORMATS = ("html", "md", "json")
TEMPLATES = Path(__file__).parent / "templates"
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_SUFFIX = {"html": "html", "md": "md", "json": "json"}
# table cells right-aligned as numbers: 0.950, -0.012 [-0.030, 0.004], 1.2e-05, n/a
_NUMBER = r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?"
_NUMERIC = re.compile(rf"n/a|-|{_NUMBER}( \[{_NUMBER}, {_NUMBER}\])?")


def _version() -> str:
    from alignkit import __version__

    return __version__


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every {{ }} is HTML-escaped; the template never uses |safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.tests["numeric"] = lambda cell: bool(_NUMERIC.fullmatch(str(cell)))
    return env


def _md_cell(text: str) -> str:
    """Text for one line of Markdown (e.g. a table cell), inert however it is rendered: HTML
    tags escaped, brackets escaped (no links or remote images), pipes escaped, one line."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    header = [_md_cell(c) or " " for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _md_section(section: Section, level: int) -> list[str]:
    lines = ["#" * level + " " + _md_cell(section.title), ""]
    for note in section.notes:
        lines += [_md_cell(note), ""]
    for table in section.tables:
        if table.title:
            lines += [f"**{_md_cell(table.title)}**", ""]
        lines += [*_md_table(table.columns, table.rows), ""]
    if section.figures:
        names = ", ".join(caption for caption, _ in section.figures)
        lines += [f"_Figures in the HTML report: {_md_cell(names)}._", ""]
    for example in section.examples:
        details = "; ".join(f"{k}: {v}" for k, v in example.details)
        lines += [
            f"- **{_md_cell(example.label)}**" + (f" ({_md_cell(details)})" if details else "")
        ]
        lines += [
            f"  - prompt: {_md_cell(example.prompt)}",
            f"  - response: {_md_cell(example.response)}",
        ]
    if section.examples:
        lines.append("")
    return lines


class AlignmentReportGenerator:
    """Reports of a run directory, or of run B compared against run A (``compare_to``).

    ``load()`` reads the run(s) (and runs the comparison); ``to_html()``, ``to_markdown()`` and
    ``to_json()`` return the report as text; ``write()`` saves the files. Missing or malformed
    run directories raise :class:`~alignkit.errors.DataError`.
    """

    def __init__(self, run_dir: str | Path, compare_to: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.compare_to = Path(compare_to) if compare_to is not None else None
        self.runs: list[RunData] = []
        self.comparison: Comparison | None = None
        self._sections: list[tuple[str | None, list[Section]]] | None = None

    def load(self) -> AlignmentReportGenerator:
        """Read the run directories (and compare them); returns ``self``."""
        self.runs = [load_run(self.run_dir)]
        if self.compare_to is not None:
            self.runs.append(load_run(self.compare_to))
            self.comparison = compare_runs(self.runs[0], self.runs[1])
        self._sections = None
        return self

    @property
    def basename(self) -> str:
        """File name stem: ``report`` for one run, ``comparison`` for two."""
        return "comparison" if self.compare_to is not None else "report"

    @property
    def title(self) -> str:
        """The report title."""
        self._ensure_loaded()
        names = [run.model or run.path.name for run in self.runs]
        if len(names) == 2:
            return f"alignkit comparison: {names[0]} (A) vs {names[1]} (B)"
        return f"alignkit report: {names[0]}"

    def _ensure_loaded(self) -> None:
        if not self.runs:
            self.load()

    def sections(self) -> list[tuple[str | None, list[Section]]]:
        """The report content: (heading, sections) per group; the comparison comes first."""
        self._ensure_loaded()
        if self._sections is None:
            groups: list[tuple[str | None, list[Section]]] = []
            if self.comparison is not None:
                groups.append((None, [comparison_section(self.comparison)]))
            from alignkit.review.report_section import review_section

            for label, run in zip(("A", "B"), self.runs, strict=False):
                heading = f"Run {label}: {run.path}" if len(self.runs) > 1 else None
                prefix = f"run-{label.lower()}-"
                reviewed = review_section([run.path], f"{prefix}review") if run.path else None
                extra = [reviewed] if reviewed else []
                groups.append((heading, run_sections(run, prefix) + extra))
            self._sections = groups
        return self._sections

    def to_html(self) -> str:
        """The self-contained HTML report (inline CSS and figures, no scripts)."""
        template = _environment().get_template("report.html.j2")
        return template.render(
            title=self.title,
            csp=CONTENT_SECURITY_POLICY,
            groups=self.sections(),
            version=_version(),
        )

    def to_markdown(self) -> str:
        """The report as Markdown: the same tables and numbers as the HTML, without figures."""
        lines = [f"# {_md_cell(self.title)}", ""]
        for heading, sections in self.sections():
            if heading:
                lines += [f"## {_md_cell(heading)}", ""]
            for section in sections:
                lines += _md_section(section, 3 if heading else 2)
        lines.append(f"_Generated by alignkit {_version()}._")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The loaded run data (with the sample items shown) and the comparison, if any."""
        self._ensure_loaded()
        runs = [{**run.to_dict(), "samples": sample_items(run.items)} for run in self.runs]
        return json_safe(
            {
                "alignkit_version": _version(),
                "title": self.title,
                "runs": runs,
                "comparison": self.comparison.to_dict() if self.comparison else None,
            }
        )

    def to_json(self) -> str:
        """:meth:`to_dict` as indented, strict JSON."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    def write(
        self, output_dir: str | Path | None = None, formats: Sequence[str] = FORMATS
    ) -> dict[str, Path]:
        """Write the report files (default: into the first run directory); format -> path."""
        formats = check_formats(formats)
        self._ensure_loaded()
        directory = Path(output_dir) if output_dir is not None else self.run_dir
        if directory.exists() and not directory.is_dir():
            raise DataError(f"report output {str(directory)!r} is not a directory")
        render = {"html": self.to_html, "md": self.to_markdown, "json": self.to_json}
        paths = {}
        for fmt in formats:
            path = directory / f"{self.basename}.{_SUFFIX[fmt]}"
            write_text(path, render[fmt]())
            paths[fmt] = path
        return paths


def check_formats(formats: str | Sequence[str]) -> list[str]:
    """Report formats from a list or a comma-separated string; unknown ones raise ConfigError."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = [f.strip().lower() for f in items if f.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        given = f"unknown format(s) {unknown}" if unknown else "no format given"
        raise ConfigError(f"report --format: {given}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(chosen))


def generate_alignment_report(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    compare_to: str | Path | None = None,
) -> dict[str, Path]:
    """Write the report of ``run_dir`` (or its comparison with ``compare_to``); format -> path."""
    return AlignmentReportGenerator(run_dir, compare_to=compare_to).write(output_dir, formats)
