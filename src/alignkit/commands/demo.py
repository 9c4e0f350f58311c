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
    if result.paused:
        console.print(pause_message(result.output_dir, result.paused), highlight=False)
        return result
    if result.change:
        console.print(change_table(result.change))
    if result.report:
        console.print(f"report: {result.report.get('html')}")
    console.print(f"run directory: {result.output_dir}")
    return result


def pause_message(run_dir, stage: str) -> str:
    """What to review after a pause and how: the queues of the run and the commands."""
    from rich.markup import escape

    from alignkit.errors import DataError
    from alignkit.review.items import load_run

    try:
        items = load_run(run_dir)
    except DataError:
        items = []
    kinds = {k: sum(i.kind == k for i in items) for k in ("finding", "pair", "sample")}
    what = ", ".join(f"{n} {k}s" for k, n in kinds.items() if n) or "nothing yet"
    run = escape(str(run_dir))
    return (
        f"[bold]paused after {stage}[/] for human review ({what} to review). Give each "
        f"reviewer a token and serve the queues:\n"
        f"  alignkit review add-reviewer NAME {run}\n"
        f"  alignkit review serve {run}   (http://127.0.0.1:8765)\n"
        "then run this command again: it goes on from here with their labels."
    )


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
