"""Rich progress bars shared by long-running work (training, generation, campaigns)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def make_progress(transient: bool = False) -> Progress:
    """A progress display with a bar, counts, elapsed time, ETA and a free-text field."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
    )


@contextmanager
def training_progress(
    total_steps: int, enabled: bool = True, description: str = "training"
) -> Iterator[Callable[[float, int], None]]:
    """Yield ``update(loss, tokens)``; shows loss (smoothed) and tokens/s when enabled."""
    start, tokens, smoothed = time.time(), 0, None
    progress = make_progress() if enabled else None
    task = progress.add_task(description, total=total_steps, info="") if progress else None

    def update(loss: float, step_tokens: int) -> None:
        nonlocal tokens, smoothed
        tokens += step_tokens
        smoothed = loss if smoothed is None else 0.95 * smoothed + 0.05 * loss
        if progress is not None:
            rate = tokens / max(time.time() - start, 1e-9)
            progress.update(task, advance=1, info=f"loss {smoothed:.3f} | {rate:,.0f} tok/s")

    if progress is None:
        yield update
        return
    with progress:
        yield update
