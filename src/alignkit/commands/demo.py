"""``alignkit demo``: the alignment loop on the built-in testbed, stage by stage.

Each stage is a function of the shared :class:`DemoRun`; :data:`STAGES` lists them in order.
Today the loop has one stage, the baseline measurement; later stages (red teaming,
constitutional revision, DPO, evaluation, report) append themselves to :data:`STAGES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.rule import Rule

from alignkit.commands._console import stdout
from alignkit.commands._options import config_command
from alignkit.commands.testbed import measure, show_behaviour
from alignkit.config import DemoConfig


@dataclass
class DemoRun:
    """What the stages share: the config and each stage's results, by stage name."""

    config: DemoConfig
    results: dict[str, Any] = field(default_factory=dict)


def baseline(run: DemoRun) -> None:
    """Build or load the testbed model and measure its behaviour before any alignment."""
    report = measure(run.config)
    run.results["baseline"] = report
    show_behaviour(run.config, report, "Baseline behaviour")


STAGES: list[tuple[str, Callable[[DemoRun], None]]] = [("baseline", baseline)]


def run_demo(config: DemoConfig) -> DemoRun:
    """Run every stage in order; return the shared state with all results."""
    run = DemoRun(config)
    console = stdout()
    for number, (name, stage) in enumerate(STAGES, start=1):
        console.print(Rule(f"[bold]{number}/{len(STAGES)} {name}"))
        stage(run)
    return run


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""

    @config_command(app, "demo", DemoConfig)
    def demo(config: DemoConfig) -> None:
        """Run the alignment loop on the built-in testbed and print what each stage measured."""
        run_demo(config)
