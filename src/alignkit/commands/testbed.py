"""``alignkit testbed build | info | sample``: the built-in world and its tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from alignkit.commands._console import print_note, stdout
from alignkit.commands._options import config_command
from alignkit.config import BehaviourConfig, BuildTestbedConfig, SampleTestbedConfig
from alignkit.models import load_backend
from alignkit.testbed import BehaviourReport, World, build_testbed, measure_behaviour

group = typer.Typer(
    name="testbed",
    help="The built-in testbed: a seeded assistant world with ground truth, and its tiny model.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``testbed`` command group to ``app``."""
    app.add_typer(group)


def behaviour_table(report: BehaviourReport, title: str) -> Table:
    """A rich table of a BehaviourReport: metric, value (%), n, target, ok."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    table.add_column("target")
    table.add_column("ok", justify="center")
    for row in report.rows:
        ok = "[green]yes[/]" if row.ok else "[red]no[/]"
        table.add_row(escape(row.name), f"{100 * row.value:.1f}%", str(row.n), row.target, ok)
    return table


def measure(config: BehaviourConfig) -> BehaviourReport:
    """Load ``config.model`` (building the testbed if needed) and measure its behaviour."""
    backend = load_backend(config.model)
    try:
        return measure_behaviour(backend, n=config.n, seed=config.seed)
    finally:
        backend.close()


def show_behaviour(config: BehaviourConfig, report: BehaviourReport, title: str) -> None:
    """Print the behaviour table and, with --json, write the report."""
    stdout().print(behaviour_table(report, f"{title} ({config.model}, n={config.n})"))
    if config.json_path is not None:
        settings = config.model_dump(mode="json", by_alias=True)
        write_json(config.json_path, {"config": settings, **report.to_dict()})


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print_note(f"wrote {path}")


@config_command(group, "build", BuildTestbedConfig)
def build(config: BuildTestbedConfig) -> None:
    """Train and cache the testbed model (a few minutes on a CPU); print its directory."""
    path = build_testbed(config.testbed, force=config.force)
    typer.echo(str(path))


@config_command(group, "info", BehaviourConfig)
def info(config: BehaviourConfig) -> None:
    """Measure a model's behaviour on held-out testbed prompts (default: the testbed model)."""
    show_behaviour(config, measure(config), "Behaviour")


@config_command(group, "sample", SampleTestbedConfig)
def sample(config: SampleTestbedConfig) -> None:
    """Show examples from the testbed world (prompt, reference response, ground truth)."""
    examples = World(config.seed).sample(config.n, kind=config.kind, split=config.split)
    if config.jsonl:
        for example in examples:
            typer.echo(json.dumps(example.to_dict(), ensure_ascii=False))
        return
    table = Table(show_lines=True)
    for column in ("kind", "category", "class", "prompt", "response"):
        table.add_column(column, overflow="fold")
    for e in examples:
        kind = e.kind + (f" ({e.jailbreak})" if e.jailbreak else "")
        table.add_row(
            escape(kind), e.category, e.response_class, escape(e.prompt), escape(e.response)
        )
    stdout().print(table)
