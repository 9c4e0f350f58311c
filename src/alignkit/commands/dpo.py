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

        result = DPOPipeline(config).run()
        table = Table(title=f"DPO ({config.loss_type}, beta={config.beta})", title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in sorted(result.metrics):
            table.add_row(key, f"{result.metrics[key]:.4g}")
        stdout().print(table)
        print_note(f"data: {result.data_report.get('summary', result.data_report)}")
        print_note(f"model saved to {result.model_path}")
