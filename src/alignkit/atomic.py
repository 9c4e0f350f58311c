"""Atomic writes: a file or a directory appears whole at its final path, or not at all.

Every writer works the same way: the content goes to a temporary name in the same directory
(so the same file system), then one ``os.replace`` puts it in place; a reader, or a run that
crashed mid-write, never sees half of it. There is no ``fsync`` (none of the writers had one):
this guards against a crashed or killed process, not against a power cut.

- :func:`write_text`: a text file (result files, JSON, JSON Lines).
- :func:`temporary_path`: a file written by someone else's ``save(path)`` (safetensors, torch).
- :func:`replace_dir`: a directory built under a temporary name (a checkpoint, a model).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from alignkit.errors import DataError


@contextlib.contextmanager
def temporary_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (whose parent is created) to write to; on leaving the
    block it replaces ``path``, or is removed if the block raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes may race on one path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; a failure is a
    :class:`~alignkit.errors.DataError` naming the path."""
    try:
        with temporary_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise DataError(f"cannot write {str(path)!r}: {exc}") from None


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished directory ``tmp`` at ``final``, removing whatever was there. A directory
    already at ``final`` is first renamed aside (``FINAL.old``) and removed after, so a kill at
    any point leaves ``final`` whole (old or new) or absent, never half deleted."""
    final = Path(final)
    aside = final.with_name(f"{final.name}.old")
    shutil.rmtree(aside, ignore_errors=True)  # a leftover of a kill between the two renames
    if final.exists():
        os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)
