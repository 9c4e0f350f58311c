"""Training checkpoints that resume exactly: weights, optimizer, scheduler, RNG, data position.

A checkpoint is a directory ``checkpoints/step-NNNNNN`` written under a temporary name and
renamed when complete, so a run killed mid-write (even with SIGKILL) leaves either the old
checkpoint or the new one, never half of one: a checkpoint of the same step that is replaced is
first renamed aside (:func:`alignkit.atomic.replace_dir`), never deleted file by file under its
own name. Names with a dot (``.tmp``, ``.old``) are never loaded. Metric rows are appended one
line at a time; a line torn by a kill is dropped when the run resumes (:func:`trim_metrics`).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from alignkit.atomic import replace_dir, write_text

STATE_FILE = "trainer_state.pt"


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, if any."""
    root = checkpoint_root(output_dir)
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).exists() and "." not in p.name]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: Path, step: int, save_weights, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step``: ``save_weights(dir)`` writes the model, ``state`` the rest."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    for leftover in [*root.glob("step-*.tmp"), *root.glob("step-*.old")]:  # of a killed run
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(tmp)
    torch.save({**state, "rng": rng_state(), "step": step}, tmp / STATE_FILE)
    replace_dir(tmp, final)
    old = sorted(root.glob("step-??????"), key=lambda p: p.name)[:-keep] if keep else []
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return final


def load_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint (loaded with ``weights_only=True``)."""
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after ``step`` (they are redone after a resume) and a line torn by
    a kill mid-write; the file is rewritten atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line)
    write_text(path, "".join(f"{line}\n" for line in kept))
