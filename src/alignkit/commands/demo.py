"""``alignkit demo`` and ``alignkit pipeline``: the whole loop, on the testbed or any model."""

from __future__ import annotations

import typer

from alignkit.commands._console import change_table, stdout
from alignkit.commands._options import config_command
from alignkit.pipeline.config import STAGES, DemoConfig, PipelineConfig


def run_pipeline(config: PipelineConfig):
    """Run the pipeline, printing stage headers, then the table and the report's path."""
    from alignkit.pipeline.runner import AlignmentPipeline

    console = stdout()
    pipeline = AlignmentPipeline(config)
    stages = [s for s in STAGES if config.enabled(s)]
    console.print(f"[bold]{config.model}[/] -> {config.output_dir}: {' -> '.join(stages)}")
    result = pipeline.run(console=console)
    if result.change:
        console.print(change_table(result.change))
    if result.report:
        console.print(f"report: {result.report.get('html')}")
    console.print(f"run directory: {result.output_dir}")
    return result


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``pipeline`` to ``app``."""

    @config_command(app, "demo", DemoConfig)
    def demo(config: DemoConfig) -> None:
        """The whole loop on the built-in testbed model: red team, critique and revision, AI
        feedback, safety-constrained DPO, evaluation and an HTML report (a few minutes on CPU)."""
        run_pipeline(config)

    @config_command(app, "pipeline", PipelineConfig)
    def pipeline(config: PipelineConfig) -> None:
        """The whole loop on any model, in one run directory; a rerun resumes."""
        run_pipeline(config)
