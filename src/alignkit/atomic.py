"""Atomic writes: a file or a directory appears whole at its final path, or not at all.

Every writer works the same way: the content goes to a temporary name in the same directory
(so the same file system), then one ``os.replace`` puts it in place; a reader, or a run that
crashed mid-write, never sees half of it. There is no ``fsync`` (none of the writers had one):
this guards against a crashed or killed process, not against a power cut.

- :func:`write_text`: a text file (result files, JSON, JSON Lines).
- :func:`temporary_path`: a file written by someone else's ``save(path)`` (safetensors, torch).
- :func:`replace_dir`: a directory built under a temporary name (a checkpoint, a model).
- :func:`move_files_into`: files saved under a temporary folder, into a folder kept as is.
- :func:`check_writable_dir`: before the work, whether a run directory can be written at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from alignkit.errors import ConfigError, DataError


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


def move_files_into(tmp: Path, directory: Path) -> None:
    """Move each file of the finished folder ``tmp`` into ``directory`` (one rename each, so
    each appears whole) and remove ``tmp``; other files of ``directory`` stay. For a save into
    a folder that may hold more than the save writes; write its marker file last."""
    for item in Path(tmp).iterdir():
        os.replace(item, Path(directory) / item.name)
    shutil.rmtree(tmp, ignore_errors=True)


def check_writable_dir(out: Path, option: str = "output_dir") -> None:
    """Fail now, before a model loads, if results cannot be written into directory ``out``: it
    is a file, it lies under a file, or its nearest existing folder cannot be written (a
    read-only disk, ``/proc``). One :class:`~alignkit.errors.ConfigError` naming ``option``;
    nothing is created (a temporary file is made and removed in that folder)."""
    import tempfile

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {str(out)!r} is a file, not a directory; give a directory")
    folder = next(p for p in [out, *out.absolute().parents] if p.exists())
    if not folder.is_dir():
        raise ConfigError(
            f"{option} {str(out)!r} lies under {str(folder)!r}, which is a file; give a directory"
        )
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".alignkit-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot create or write {option} {str(out)!r} ({exc.strerror or exc}); give a "
            "directory you can write to"
        ) from None
