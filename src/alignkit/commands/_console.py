"""Rich consoles for command output (stdout) and messages (stderr)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape


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
