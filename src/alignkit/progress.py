"""Progress displays shared by long-running work (training, generation, evaluation, campaigns).

On a terminal (or in Jupyter) :func:`make_progress` is a live rich progress bar. Anywhere else
(output to a file or a pipe, a CI log, a job scheduler) a live bar prints nothing until the end,
so a long run looks hung: there it is a :class:`PlainProgress`, which keeps rich's API but
prints one plain line per unfinished task every :func:`report_every` seconds (counts, rate,
elapsed time, ETA and the task's free-text field), and a last line when the work ends if it
printed any. Work shorter than the interval prints nothing. The interval is 30 s, or
``$ALIGNKIT_PROGRESS_EVERY`` seconds (``0`` turns the lines off).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)

EVERY_ENV = "ALIGNKIT_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0


def report_every() -> float:
    """Seconds between plain progress lines: ``$ALIGNKIT_PROGRESS_EVERY`` or 30 (0: none)."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    try:
        return max(float(raw), 0.0) if raw else DEFAULT_EVERY
    except ValueError:
        return DEFAULT_EVERY


def live_display() -> bool:
    """Whether progress can be drawn live (stderr is a terminal, or this is Jupyter)."""
    return console.is_terminal or console.is_jupyter


def _clock(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


class PlainProgress(Progress):
    """A rich :class:`~rich.progress.Progress` (same API) that draws nothing live; instead a
    daemon thread prints one plain line per unfinished task every ``every`` seconds.

    The rate and ETA count only the work done since the task was added, so a resumed run
    (a task added with ``completed=`` its finished part) is not credited with earlier work.
    """

    def __init__(self, *columns, every: float, **kwargs) -> None:
        super().__init__(*columns, disable=True, **kwargs)
        self.every = every
        self._baseline: dict[TaskID, tuple[float, float]] = {}  # task -> (time, completed)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._printed = False

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task = super().add_task(description, *args, **kwargs)
        self._baseline[task] = (self.get_time(), self._tasks[task].completed)
        return task

    def start(self) -> None:
        if self.every > 0 and self._thread is None:
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="alignkit-progress")
            self._thread.daemon = True
            self._thread.start()

    def stop(self) -> None:
        super().stop()
        if self._thread is not None:
            self._stopped.set()
            self._thread.join()
            self._thread = None
        if self._printed:
            self.report(final=True)

    def _run(self) -> None:
        while not self._stopped.wait(self.every):
            self.report()

    def report(self, final: bool = False) -> None:
        """Print the line of every visible task (unfinished ones only, unless ``final``)."""
        now = self.get_time()
        lines = [self.line(t, now) for t in self.tasks if t.visible and (final or not t.finished)]
        if not lines:
            return
        self._printed = True
        stream = self.console.file
        stream.write("".join(f"{line}\n" for line in lines))
        stream.flush()

    def line(self, task: Task, now: float) -> str:
        """``description: done/total (pct%) | rate/s | elapsed h:mm:ss | eta h:mm:ss | info``
        (slow work shows seconds per step instead of a rate)."""
        since, base = self._baseline.get(task.id, (task.start_time or now, 0.0))
        elapsed = max(now - since, 1e-9)
        rate = (task.completed - base) / elapsed
        parts = [f"{task.description}: {_count(task.completed)}"]
        if task.total is not None:
            parts[0] += f"/{_count(task.total)}"
            if task.total:
                parts[0] += f" ({100 * task.completed / task.total:.0f}%)"
        parts.append(f"{rate:,.2f}/s" if rate >= 1 or rate <= 0 else f"{1 / rate:,.1f} s each")
        parts.append(f"elapsed {_clock(elapsed)}")
        if task.total is not None and not task.finished:
            left = task.total - task.completed
            parts.append(f"eta {_clock(left / rate)}" if rate > 0 else "eta unknown")
        info = str(task.fields.get("info") or "").strip()
        if info:
            parts.append(info)
        return " | ".join(parts)


def make_progress(transient: bool = False) -> Progress:
    """A progress display with a bar, counts, elapsed time, ETA and a free-text field ``info``.

    Live on a terminal; elsewhere a :class:`PlainProgress` printing a line every
    :func:`report_every` seconds (``transient`` applies to the live bar only).
    """
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    if not live_display():
        return PlainProgress(*columns, every=report_every(), console=console)
    return Progress(*columns, console=console, transient=transient)


@contextmanager
def counter(description: str, total: int, show: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1)`` over a transient display of ``total`` steps (a no-op unless
    ``show``)."""
    if not show:
        yield lambda n=1: None
        return
    with make_progress(transient=True) as bar:
        task = bar.add_task(description, total=total, info="")
        yield lambda n=1: bar.advance(task, n)


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
