"""The label store: append-only audit trail, undo, idempotency, durability, threads, tokens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from review_fixtures import make_run

from alignkit.errors import DataError
from alignkit.review.items import load_items
from alignkit.review.store import LabelStore


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


def _first(items, kind):
    return next(i for i in items if i.kind == kind)


def test_reviewers_tokens_hashed(run):
    store = LabelStore(run)
    token = store.add_reviewer("ann")
    assert store.reviewer(token) == "ann" and store.reviewer(token + "x") is None
    assert store.reviewer("") is None and store.reviewers() == ["ann"]
    with pytest.raises(DataError, match="already exists"):
        store.add_reviewer("ann")
    store.close()
    assert token.encode() not in (run / "review" / "labels.sqlite").read_bytes()


def test_append_only_undo_current_vs_audit(run):
    items = load_items([run])
    f = _first(items, "finding")
    store = LabelStore(run)
    store.add_label(f, "ann", "harmful", "harmful", extra={"severity": 4, "note": "bad"})
    store.add_label(f, "ann", "harmful", "not_harmful")
    store.add_label(f, "bob", "harmful", "harmful")
    cur = store.labels()
    assert {(r["reviewer"], r["value"]) for r in cur} == {
        ("ann", "not_harmful"),
        ("bob", "harmful"),
    }
    store.add_label(f, "ann", "harmful", None)  # undo
    assert [r["reviewer"] for r in store.labels()] == ["bob"]
    audit = store.labels(current=False)
    assert [r["value"] for r in audit] == ["harmful", "not_harmful", "harmful", None]
    assert audit[0]["extra"] == {"severity": 4, "note": "bad"}
    assert audit[0]["provenance"]["judges"] == f.judges
    assert audit[0]["content_hash"] == f.content_hash
    assert store.labels(reviewer="bob")[0]["value"] == "harmful"


def test_validation(run):
    items = load_items([run])
    store = LabelStore(run)
    with pytest.raises(DataError, match="question"):
        store.add_label(_first(items, "finding"), "ann", "preference", "a")
    with pytest.raises(DataError, match="value"):
        store.add_label(_first(items, "pair"), "ann", "preference", "c")
    with pytest.raises(DataError, match="severity"):
        store.add_label(
            _first(items, "finding"), "ann", "harmful", "harmful", extra={"severity": 9}
        )
    assert store.count() == 0


def test_idempotent_and_pair_order(run):
    items = load_items([run])
    p = _first(items, "pair")
    store = LabelStore(run)
    a = store.add_label(p, "ann", "preference", "a", idempotency_key="k1")
    b = store.add_label(p, "ann", "preference", "b", idempotency_key="k1")
    assert a == b and store.count() == 1
    assert a["extra"]["order"] == store.pair_order(p.id, "ann")
    orders = {store.pair_order(i.id, r) for i in items for r in ("ann", "bob", "cy")}
    assert orders == {"ab", "ba"}


def test_label_survives_kill_9(run):
    code = f"""
import os, signal
from alignkit.review.items import load_items
from alignkit.review.store import LabelStore
items = [i for i in load_items([{str(run)!r}]) if i.kind == "finding"]
store = LabelStore({str(run)!r})
for i in items[:10]:
    store.add_label(i, "ann", "harmful", "harmful")
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=os.environ.copy())
    assert proc.returncode == -signal.SIGKILL
    assert len(LabelStore(run).labels()) == 10


def test_two_threads_lose_nothing(run):
    items = load_items([run])
    store = LabelStore(run)

    def work(name):
        for k in range(200):
            store.add_label(items[k % len(items)], name, *_answer(items[k % len(items)]),
                            idempotency_key=f"{name}-{k}")  # fmt: skip

    threads = [threading.Thread(target=work, args=(n,)) for n in ("ann", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 400
    store.close()
    assert len(LabelStore(run).labels(current=False)) == 400


def _answer(item):
    return {"finding": ("harmful", "unsure"), "pair": ("preference", "tie"),
            "sample": ("helpful", "yes")}[item.kind]  # fmt: skip


def test_corrupt_db_is_data_error(run):
    path = Path(run) / "review" / "labels.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"this is not sqlite" * 300)
    with pytest.raises(DataError, match="labels.sqlite"):
        LabelStore(run)
    with pytest.raises(DataError, match="no labels database"):
        (run.parent / "run2").mkdir()
        LabelStore(run.parent / "run2", create=False)
