"""``alignkit dpo``: preference optimisation (DPO family) of a local model."""

from __future__ import annotations

import typer
from rich.table import Table

from alignkit.commands._console import print_note, stdout
from alignkit.commands._options import config_command
from alignkit.dpo.config import DPOConfig


def register(app: typer.Typer) -> None:
    """Add ``dpo`` to ``app``."""

    @config_command(app, "dpo", DPOConfig)
    def dpo(config: DPOConfig) -> None:
        """Train a model on preference data (DPO, IPO, SimPO, ...); optional SFT first."""
        from alignkit.dpo.pipeline import DPOPipeline

        # --resume typed on the command line insists on a run to continue; resume: true in a
        # --config file (one file for the first run and every rerun) starts one if there is none
        insist = config.resume and _given_on_command_line("resume")
        result = DPOPipeline(config).run(require_run=insist)
        if result.already_finished:
            print_note(
                f"{result.output_dir} holds a finished run: nothing to resume, nothing was "
                "trained (pass --overwrite to train it again)"
            )
        if result.selection:
            _print_selection(result.selection)
            config = config.model_copy(update=result.selection["chosen"])
        table = Table(title=f"DPO ({config.loss_type}, beta={config.beta})", title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in sorted(result.metrics):
            table.add_row(key, f"{result.metrics[key]:.4g}")
        stdout().print(table)
        print_note(f"data: {result.data_report.get('summary', result.data_report)}")
        saved = "is in" if result.already_finished else "saved to"
        print_note(f"model {saved} {result.model_path}")


def _given_on_command_line(name: str) -> bool:
    """Whether option ``name`` was typed on the command line of the running command (not taken
    from --config or its default). Typer vendors click and has no public accessor of the
    current context, hence the private import."""
    from typer._click.globals import get_current_context

    source = get_current_context().get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _print_selection(selection: dict) -> None:
    """The race: every trial's rung, steps and held-out accuracy, the choice and the compute."""
    table = Table(title="Method selection (successive halving)", title_justify="left")
    for column in ("candidate", "rung", "steps", "held-out accuracy"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for t in selection["trials"]:
        table.add_row(t["name"], str(t["rung"]), str(t["steps"]), f"{t['accuracy']:.3f}")
    stdout().print(table)
    chosen = ", ".join(f"{k}={v}" for k, v in selection["chosen"].items())
    print_note(
        f"chosen: {chosen} ({selection['held_out_pairs']} held-out pairs); compute: "
        f"{selection['total_steps']} steps with the final run, against "
        f"{selection['full_steps']} to train every candidate in full"
    )
