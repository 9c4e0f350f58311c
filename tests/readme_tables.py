"""The README's measured tables, read back so that tests can hold them to a fresh run."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_table(after: str) -> dict[str, list[str]]:
    """The first table after the paragraph that starts with ``after``: the first cell of each
    row -> the row's other cells."""
    section = README.read_text().split(after, 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()]
    return {row[0]: row[1:] for row in rows[2:]}


def point(cell: str) -> float:
    """The point figure of a cell such as ``0.470 [0.402, 0.539]`` or ``96.0% [92.3, 98.0]``
    (percentages as fractions)."""
    text = cell.split()[0]
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)
