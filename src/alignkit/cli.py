"""The ``alignkit`` command line: one typer app, assembled from :mod:`alignkit.commands`.

Each command group lives in its own module under ``alignkit/commands/`` with a
``register(app)`` function; add a new one to :data:`COMMAND_MODULES`. User errors
(:class:`~alignkit.errors.AlignkitError`) print one line on stderr and exit with code 2,
without a traceback; Ctrl-C exits with 130.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from alignkit.commands import (
    cai,
    demo,
    dpo,
    eval,
    generate,
    monitor,
    redteam,
    report,
    review,
    runs,
    safety,
    testbed,
)
from alignkit.commands._console import print_error
from alignkit.errors import AlignkitError

COMMAND_MODULES = (
    generate,
    testbed,
    dpo,
    redteam,
    cai,
    safety,
    eval,
    report,
    demo,
    review,
    monitor,
    runs,
)


class _AlignkitGroup(TyperGroup):
    """Turns user errors raised by any command into a one-line message and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except AlignkitError as exc:
            print_error(exc.message)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="alignkit",
    cls=_AlignkitGroup,
    help="Align language models: red teaming, constitutional AI, DPO, safety and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
for _module in COMMAND_MODULES:
    _module.register(app)


@app.callback()
def _global_options(
    threads: int | None = typer.Option(
        None,
        "--threads",
        envvar="ALIGNKIT_THREADS",
        min=1,
        help="CPU threads for torch (default: torch's, one per core). On a shared or busy "
        "machine use 1: two threads on two busy cores ran 6-20x slower than one.",
    ),
) -> None:
    """Align language models: red teaming, constitutional AI, DPO, safety and evaluation."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app; user errors exit 2, Ctrl-C exits 130."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="alignkit")
    except AlignkitError as exc:
        print_error(exc.message)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
