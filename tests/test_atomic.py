"""One atomic writer (issue 14 item 8): files and directories appear whole or not at all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from alignkit.atomic import replace_dir, temporary_path, write_text
from alignkit.errors import DataError

SRC = Path(__file__).resolve().parents[1] / "src" / "alignkit"


def test_write_text_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "runs" / "a" / "result.json"  # parents created
    write_text(path, "first\n")
    write_text(path, "second\n")
    assert path.read_text(encoding="utf-8") == "second\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_names_the_path(tmp_path):
    path = tmp_path / "result.json"
    write_text(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text(path, "ok \ud800")  # a lone surrogate: UTF-8 encoding fails mid-write
    assert path.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(DataError, match="cannot write .*child.json"):
        write_text(blocked / "child.json", "{}")  # parent is a file


def test_temporary_path_replaces_on_success_and_cleans_up_on_error(tmp_path):
    path = tmp_path / "logps.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), temporary_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-save")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]
    with temporary_path(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_replace_dir_puts_a_finished_directory_in_place(tmp_path):
    final, tmp = tmp_path / "step-000004", tmp_path / "step-000004.tmp"
    final.mkdir()
    (final / "stale.bin").write_text("stale")
    tmp.mkdir()
    (tmp / "weights.bin").write_text("new")
    replace_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["weights.bin"] and not tmp.exists()
    other = tmp_path / "built"
    other.mkdir()
    replace_dir(other, tmp_path / "absent")  # nothing there before
    assert (tmp_path / "absent").is_dir()


def test_no_module_writes_atomically_on_its_own():
    """Every rename-into-place goes through alignkit.atomic (there were four copies)."""
    pattern = re.compile(r"os\.replace\(|\.rename\(|\btmp\.replace\(|mkstemp|NamedTemporaryFile")
    found = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "atomic.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert found == []


def test_replace_dir_never_leaves_a_half_deleted_directory(tmp_path, monkeypatch):
    """The old directory is renamed aside in one step, not deleted under its own name: a failure
    (a kill) between the two renames leaves it whole beside, and the next replace cleans up."""
    import os

    final, tmp = tmp_path / "final", tmp_path / "final.tmp"
    for d, text in ((final, "old"), (tmp, "new")):
        d.mkdir()
        for k in range(3):
            (d / f"f{k}").write_text(text)
    real = os.replace
    calls = []

    def second_rename_dies(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for SIGKILL
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_dies)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(tmp, final)
    monkeypatch.setattr(os, "replace", real)
    aside = tmp_path / "final.old"
    assert not final.exists() and sorted(p.read_text() for p in aside.iterdir()) == ["old"] * 3
    replace_dir(tmp, final)  # the rerun
    assert sorted(p.read_text() for p in final.iterdir()) == ["new"] * 3 and not aside.exists()
