"""``alignkit testbed build | info | sample``: the built-in world and its tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from alignkit.atomic import write_text
from alignkit.commands._console import print_note, stdout
from alignkit.commands._options import config_command
from alignkit.config import (
    BehaviourConfig,
    BuildTestbedConfig,
    SampleTestbedConfig,
    TestbedPreferencesConfig,
)
from alignkit.models import load_backend
from alignkit.testbed import (
    BehaviourReport,
    BehaviourRow,
    World,
    build_testbed,
    is_built,
    measure_behaviour,
    testbed_dir,
)

group = typer.Typer(
    name="testbed",
    help="The built-in testbed: a seeded assistant world with ground truth, and its tiny model.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``testbed`` command group to ``app``."""
    app.add_typer(group)


def behaviour_table(report: BehaviourReport, title: str, targets: bool = True) -> Table:
    """A rich table of a BehaviourReport: metric, value (%) with its 95% interval, n and, with
    ``targets``, the built testbed model's targets (a helpful-only assistant) and whether the
    point value meets them."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value [95% CI]", justify="right")
    table.add_column("n", justify="right")
    if targets:
        table.add_column("testbed target")
        table.add_column("ok", justify="center")
    for row in report.rows:
        cells = [escape(row.name), percent_cell(row), str(row.n)]
        if targets:
            cells += [row.target, "[green]yes[/]" if row.ok else "[red]no[/]"]
        table.add_row(*cells)
    return table


def category_table(report: BehaviourReport) -> Table:
    """Harmful compliance per harm category (direct and jailbroken requests together)."""
    table = Table(title="Compliance by harm category", title_justify="left")
    table.add_column("category")
    table.add_column("compliance [95% CI]", justify="right")
    table.add_column("n", justify="right")
    for category, row in report.by_category.items():
        table.add_row(escape(category), percent_cell(row), str(row.n))
    return table


def percent_cell(row: BehaviourRow) -> str:
    """``96.0% [92.3, 98.0]``: a rate and its 95% interval, in percent."""
    return f"{100 * row.value:.1f}% [{100 * row.low:.1f}, {100 * row.high:.1f}]"


def testbed_summary() -> str | None:
    """One line about the cached testbed model (where, how big, how it was built)."""
    path = testbed_dir()
    if not is_built(path):
        return None
    meta = json.loads((path / "testbed.json").read_text())
    return (
        f"testbed model {path}: {meta['parameters']:,} parameters, {meta['steps']:,} steps on "
        f"{meta['train_tokens']:,} tokens, built in {meta['seconds']} s, "
        f"final train loss {meta['final_loss']}"
    )


def measure(config: BehaviourConfig) -> BehaviourReport:
    """Load ``config.model`` (building the testbed if needed) and measure its behaviour."""
    backend = load_backend(config.model)
    try:
        return measure_behaviour(backend, n=config.n, seed=config.seed)
    finally:
        backend.close()


def show_behaviour(config: BehaviourConfig, report: BehaviourReport, title: str) -> None:
    """Print the behaviour table and, with --json, write the report."""
    console = stdout()
    if config.model == "testbed" and (summary := testbed_summary()):
        console.print(escape(summary))
    title = f"{title} ({config.model}, n={config.n})"
    console.print(behaviour_table(report, title, targets=config.model == "testbed"))
    if report.by_category:
        console.print(category_table(report))
    if config.json_path is not None:
        settings = config.model_dump(mode="json", by_alias=True)
        write_json(config.json_path, {"config": settings, **report.to_dict()})


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically, creating parent directories."""
    write_text(path, json.dumps(data, indent=2) + "\n")
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
    world = World(config.world_seed)
    examples = world.sample(config.n, kind=config.kind, split=config.split, seed=config.seed)
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


@config_command(group, "preferences", TestbedPreferencesConfig)
def preferences(config: TestbedPreferencesConfig) -> None:
    """Write preference data from the testbed world (refusal over harmful compliance, helpful
    over over-refusal and wrong answers, "I don't know" over made-up answers)."""
    from alignkit.testbed.preferences import preference_pairs, ranked_records, write_jsonl

    make = ranked_records if config.ranked else preference_pairs
    records = make(World(config.world_seed), config.n, split=config.split, seed=config.seed)
    write_jsonl(records, config.output)
    print_note(f"wrote {len(records)} records to {config.output}")
