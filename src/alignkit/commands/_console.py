"""Rich consoles for command output (stdout) and messages (stderr)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def stdout() -> Console:
    """A console on the current ``sys.stdout`` (made per call, so test runners can capture it)."""
    return Console()


def stderr() -> Console:
    """A console on the current ``sys.stderr``."""
    return Console(stderr=True)


def print_error(message: str) -> None:
    """Print a user error on one line of stderr, with no traceback."""
    stderr().print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)


def print_note(message: str) -> None:
    """Print a progress or status note on stderr (keeps stdout clean for data)."""
    stderr().print(f"[dim]{escape(message)}[/]", soft_wrap=True, highlight=False)


def change_table(
    change: dict, title: str = "Before and after the loop", first: str = "figure"
) -> Table:
    """Before / after / paired change per figure (rows of a before-after ``change`` dict),
    each with its 95% interval, the paired test's p and n; "(N% cut)" where a harm fell."""
    from alignkit.evaluation.sections import fmt_p
    from alignkit.pipeline.headline import LABELS, cell, cut

    table = Table(title=title, title_justify="left")
    for column in (first, "before [95% CI]", "after [95% CI]", "change [95% CI]", "p", "n"):
        table.add_column(column, justify="left" if column == first else "right")
    for name, row in change.items():
        drop = cut(row)
        diff = row.get("diff", row["after"] - row["before"])
        what = cell(diff, [row.get("low"), row.get("high")], "+")
        what += "" if drop is None else f" ({100 * drop:.0f}% cut)"
        p = row.get("p_value")
        table.add_row(
            LABELS.get(name, name), cell(row["before"], row.get("before_ci")),
            cell(row["after"], row.get("after_ci")), what, "" if p is None else fmt_p(p),
            str(row.get("n") or ""),
        )  # fmt: skip
    return table
