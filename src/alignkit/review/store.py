"""The label store: every human label as an appended row of ``RUN_DIR/review/labels.sqlite``.

Nothing is updated or deleted: a changed answer is a new row and an undo is a retraction row
(``value`` NULL); :meth:`LabelStore.labels` with ``current=True`` gives the latest row per
(item, reviewer, question) without retractions, ``current=False`` the whole audit trail. The
database uses WAL with ``synchronous=FULL`` and each label is committed before
:meth:`LabelStore.add_label` returns, so a label is durable once acknowledged (``kill -9`` loses
none). An ``idempotency_key`` is UNIQUE: a repeated request returns the stored row and adds none.
Reviewer tokens are stored only as their sha256 and compared with :func:`hmac.compare_digest`.
One connection guarded by a lock serves every thread (``check_same_thread=False``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path

from alignkit.errors import DataError
from alignkit.review.items import QUESTIONS, Item

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviewers (
    name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL, kind TEXT NOT NULL,
    run TEXT NOT NULL, reviewer TEXT NOT NULL, question TEXT NOT NULL, value TEXT,
    queue TEXT NOT NULL, extra TEXT NOT NULL, content_hash TEXT NOT NULL,
    provenance TEXT NOT NULL, idempotency_key TEXT UNIQUE, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_item ON labels (item_id, reviewer, question);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLS = (
    "id, item_id, kind, run, reviewer, question, value, queue, extra, content_hash, "
    "provenance, idempotency_key, created"
)
_EXTRA_KEYS = ("severity", "category", "note", "order")


def pair_order(item_id: str, reviewer: str) -> str:
    """ "ab" (A = chosen) or "ba", fixed per (item, reviewer) by a hash."""
    return "ab" if hashlib.sha256(f"{item_id}\0{reviewer}".encode()).digest()[0] % 2 else "ba"


def majority(values: Sequence[Hashable]):
    """The strict plurality of several reviewers' answers to one question; None on a tie
    (or no answer)."""
    counts = Counter(values).most_common(2)
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def current_labels(run_dirs: Sequence[str | Path], required: bool = False) -> list[dict]:
    """Current labels of every run that has a labels database (none is created; with
    ``required`` a run without one is a DataError)."""
    out: list[dict] = []
    for run in run_dirs:
        if required or (Path(run) / "review" / "labels.sqlite").is_file():
            store = LabelStore(run, create=False)
            try:
                out += store.labels()
            finally:
                store.close()
    return out


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _row(row: tuple) -> dict:
    out = dict(zip([c.strip() for c in _COLS.split(",")], row, strict=True))
    out["extra"] = json.loads(out["extra"])
    out["provenance"] = json.loads(out["provenance"])
    return out


def _check_extra(extra: dict | None) -> dict:
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(_EXTRA_KEYS))
    if unknown:
        raise DataError(f"label extra: unknown field(s) {', '.join(unknown)}")
    sev = extra.get("severity")
    if sev is not None and (isinstance(sev, bool) or sev not in (1, 2, 3, 4, 5)):
        raise DataError(f"label extra.severity: {sev!r} is not an integer 1-5")
    for key in ("category", "note"):
        if extra.get(key) is not None and not isinstance(extra[key], str):
            raise DataError(f"label extra.{key}: must be a string")
    if len(extra.get("note") or "") > 10_000:
        raise DataError("label extra.note: longer than 10000 characters")
    if extra.get("order") not in (None, "ab", "ba"):
        raise DataError(f"label extra.order: {extra['order']!r} is not 'ab' or 'ba'")
    return {k: v for k, v in extra.items() if v is not None}


class LabelStore:
    """Human labels of one run (see the module docstring)."""

    def __init__(self, run_dir: str | Path, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "review" / "labels.sqlite"
        if not create and not self.path.is_file():
            raise DataError(f"{self.path}: no labels database (nothing reviewed yet)")
        if not self.run_dir.is_dir():
            raise DataError(f"{self.run_dir}: not a directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT COUNT(*) FROM labels").fetchone()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a labels database ({exc})") from None

    # reviewers -----------------------------------------------------------------------------
    def add_reviewer(self, name: str) -> str:
        """Register ``name``; returns a fresh token (only its sha256 is stored)."""
        name = (name or "").strip()
        if not name or len(name) > 100 or any(c in name for c in "\n\r\t"):
            raise DataError(f"reviewer name {name!r}: must be 1-100 printable characters")
        token = secrets.token_urlsafe(32)
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT INTO reviewers (name, token_sha256, created) VALUES (?, ?, ?)",
                    (name, _sha(token), time.time()),
                )
        except sqlite3.IntegrityError:
            raise DataError(f"{self.path}: reviewer {name!r} already exists") from None
        return token

    def reviewer(self, token: str) -> str | None:
        """The reviewer whose token this is, or None (constant-time compare of hashes)."""
        if not token:
            return None
        digest = _sha(token)
        with self._lock:
            rows = self._db.execute("SELECT name, token_sha256 FROM reviewers").fetchall()
        found = None
        for name, stored in rows:
            if hmac.compare_digest(stored, digest):
                found = name
        return found

    def reviewers(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT name FROM reviewers ORDER BY created, name").fetchall()
        return [r[0] for r in rows]

    # labels --------------------------------------------------------------------------------
    pair_order = staticmethod(pair_order)

    def add_label(self, item: Item, reviewer: str, question: str, value: str | None, *,
                  queue: str = "random", extra: dict | None = None,
                  idempotency_key: str | None = None) -> dict:  # fmt: skip
        """Append one label (``value`` None = retraction); committed before it returns."""
        allowed = QUESTIONS[item.kind]
        if question not in allowed:
            raise DataError(f"label question {question!r}: {item.kind} asks {', '.join(allowed)}")
        if value is not None and value not in allowed[question]:
            raise DataError(
                f"label value {value!r}: {question} takes {', '.join(allowed[question])}"
            )
        extra = _check_extra(extra)
        if item.kind == "pair":
            extra.setdefault("order", pair_order(item.id, reviewer))
        prov = {"source": item.source, "judges": item.judges}
        args = (item.id, item.kind, item.run, reviewer, question, value, queue,
                json.dumps(extra, sort_keys=True), item.content_hash, json.dumps(prov),
                idempotency_key, time.time())  # fmt: skip
        with self._lock:
            if idempotency_key is not None:
                row = self._db.execute(
                    f"SELECT {_COLS} FROM labels WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    return _row(row)
            try:
                with self._db:
                    cur = self._db.execute(
                        f"INSERT INTO labels ({_COLS}) VALUES (NULL, {','.join('?' * 12)})", args
                    )
                where, key = "id = ?", cur.lastrowid
            except sqlite3.IntegrityError:  # another process stored this idempotency key first
                where, key = "idempotency_key = ?", idempotency_key
            row = self._db.execute(f"SELECT {_COLS} FROM labels WHERE {where}", (key,)).fetchone()
        return _row(row)

    def labels(self, current: bool = True, reviewer: str | None = None) -> list[dict]:
        """Current labels (latest per item/reviewer/question, no retractions) or the audit trail."""
        where, args = ("WHERE reviewer = ?", (reviewer,)) if reviewer else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM labels {where} ORDER BY id", args)
            rows = [_row(r) for r in rows.fetchall()]
        if not current:
            return rows
        latest: dict[tuple, dict] = {}
        for r in rows:
            latest[(r["item_id"], r["reviewer"], r["question"])] = r
        return [r for r in sorted(latest.values(), key=lambda r: r["id"]) if r["value"] is not None]

    def max_id(self) -> int:
        """The highest label row id (0 if none): one primary-key lookup, a cheap way to see
        whether any process has added labels since a previous call."""
        with self._lock:
            return self._db.execute("SELECT max(id) FROM labels").fetchone()[0] or 0

    def labels_after(self, row_id: int) -> list[dict]:
        """Every row (answers and retractions) with an id above ``row_id``, in id order."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLS} FROM labels WHERE id > ? ORDER BY id", (row_id,)
            ).fetchall()
        return [_row(r) for r in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
