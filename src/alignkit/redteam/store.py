"""The campaign store: one SQLite row per attempt, so campaigns survive crashes.

Rows are keyed by ``(attack, behaviour_id, step, index)``; a chunk of attempts is written in
one transaction and a repeated row is ignored, so rerunning an interrupted campaign neither
loses nor duplicates an attempt. The one exception is a retry: a row whose stored attempt is
errored (the target failed) is replaced by a new attempt with the same key and prompt, and its
``tries`` counter goes up; ``transient`` marks errors that may go away (429, 5xx, no
connection), the ones a campaign tries again. ``done`` marks (attack, behaviour) pairs that
are finished (success with early stop, budget spent, attack exhausted); ``meta`` holds the
campaign config. The database uses WAL journaling: a reader (``alignkit redteam report``) can
open it while a campaign writes. Stores written before ``tries`` and ``transient`` existed get
the columns on opening, with their errors that read as transient (HTTP 408 / 429 / 5xx, no
connection, a timeout) marked so.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from alignkit.errors import DataError
from alignkit.redteam.base import Attempt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    attack TEXT NOT NULL, behaviour_id TEXT NOT NULL, step INTEGER NOT NULL, idx INTEGER NOT NULL,
    category TEXT, prompt TEXT NOT NULL, response TEXT, scores TEXT NOT NULL,
    success INTEGER NOT NULL, style TEXT, parent INTEGER, meta TEXT NOT NULL, error TEXT,
    latency_s REAL NOT NULL, created REAL DEFAULT (julianday('now')),
    tries INTEGER NOT NULL DEFAULT 1, transient INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (attack, behaviour_id, step, idx)
);
CREATE TABLE IF NOT EXISTS done (
    attack TEXT NOT NULL, behaviour_id TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (attack, behaviour_id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = (
    "attack, behaviour_id, step, idx, category, prompt, response, scores, success, style, "
    "parent, meta, error, latency_s"
)
_REPLACED = (
    "category", "response", "scores", "success", "style", "parent", "meta", "error", "latency_s",
    "transient",
)  # fmt: skip
_UPSERT = (
    f"INSERT INTO attempts ({_COLUMNS}, transient) VALUES ({','.join('?' * 15)}) "
    "ON CONFLICT (attack, behaviour_id, step, idx) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _REPLACED)
    + ", tries = attempts.tries + 1 "
    "WHERE attempts.error IS NOT NULL AND attempts.prompt = excluded.prompt"
)
"""Insert a row; a repeated one is ignored unless it retries a stored errored attempt."""
_TRANSIENT_TEXT = ("HTTP 408", "HTTP 429", "HTTP 5", "could not connect", "timed out")
"""What errors stored before the ``transient`` column read like when they may go away."""


def _row(a: Attempt) -> tuple:
    return (
        a.attack,
        a.behaviour_id,
        a.step,
        a.index,
        a.category,
        a.prompt,
        a.response,
        json.dumps(a.scores),
        int(a.success),
        a.style,
        a.parent,
        json.dumps(a.meta),
        a.error,
        a.latency_s,
    )


def _attempt(row: tuple) -> Attempt:
    (attack, bid, step, idx, category, prompt, response, scores, success, style, parent, meta,
     error, latency) = row  # fmt: skip
    return Attempt(
        attack=attack,
        behaviour_id=bid,
        step=step,
        index=idx,
        prompt=prompt,
        response=response,
        scores=json.loads(scores),
        success=bool(success),
        style=style or "",
        parent=parent,
        meta=json.loads(meta),
        error=error,
        latency_s=latency,
        category=category,
    )


class CampaignStore:
    """A campaign's attempts in a SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise DataError(f"campaign store {str(self.path)!r} not found")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._upgrade()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a campaign store ({exc})") from None

    def _upgrade(self) -> None:
        """Give a store from before retries its ``tries`` and ``transient`` columns."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(attempts)")}
        if "transient" in columns:
            return
        like = " OR ".join("error LIKE ?" for _ in _TRANSIENT_TEXT)
        with self._db:
            self._db.execute("ALTER TABLE attempts ADD COLUMN tries INTEGER NOT NULL DEFAULT 1")
            self._db.execute("ALTER TABLE attempts ADD COLUMN transient INTEGER NOT NULL DEFAULT 0")
            self._db.execute(
                f"UPDATE attempts SET transient = 1 WHERE error IS NOT NULL AND ({like})",
                [f"%{t}%" for t in _TRANSIENT_TEXT],
            )

    def add_round(
        self,
        attempts: list[Attempt],
        transient: list[bool] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Insert ``attempts`` in one transaction; the number of rows written.

        A repeated row is ignored, except that an attempt retrying a stored errored one (same
        key and prompt) replaces it and counts a try. ``transient`` flags errors that may go
        away (one per attempt); ``meta`` keys are set in the same transaction.
        """
        flags = transient or [False] * len(attempts)
        rows = [
            (*_row(a), int(t and a.error is not None)) for a, t in zip(attempts, flags, strict=True)
        ]
        with self._lock, self._db:
            before = self._db.total_changes
            self._db.executemany(_UPSERT, rows)
            changed = self._db.total_changes - before
            for key, value in (meta or {}).items():
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (key, json.dumps(value)),
                )
            return changed

    def _select(self, where: str = "", args: tuple = ()) -> list[Attempt]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM attempts {where} ORDER BY attack, behaviour_id, step, idx",
                args,
            ).fetchall()
        return [_attempt(r) for r in rows]

    def history(self, attack: str, behaviour_id: str) -> list[Attempt]:
        return self._select("WHERE attack = ? AND behaviour_id = ?", (attack, behaviour_id))

    def attempts(self, attack: str | None = None) -> list[Attempt]:
        return self._select("WHERE attack = ?", (attack,)) if attack else self._select()

    def retryable(self, attack: str, behaviour_id: str | None = None) -> list[Attempt]:
        """The errored attempts of an attack (of one behaviour, if given) whose error may go
        away: campaigns and quality-diversity send them again."""
        where = "WHERE attack = ? AND error IS NOT NULL AND transient = 1"
        if behaviour_id is None:
            return self._select(where, (attack,))
        return self._select(where + " AND behaviour_id = ?", (attack, behaviour_id))

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]

    def errored(self) -> dict[str, int]:
        """Errored attempts in the store: ``errored`` (all), ``transient`` (may go away, so a
        rerun tries them again) and ``retried`` (rows sent more than once)."""
        with self._lock:
            row = self._db.execute(
                "SELECT SUM(error IS NOT NULL), SUM(error IS NOT NULL AND transient = 1), "
                "SUM(tries > 1) FROM attempts"
            ).fetchone()
        return dict(zip(("errored", "transient", "retried"), (v or 0 for v in row), strict=True))

    def tries(self) -> dict[tuple[str, str, int, int], int]:
        """How many times each attempt was sent, by (attack, behaviour_id, step, index)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT attack, behaviour_id, step, idx, tries FROM attempts"
            ).fetchall()
        return {(a, b, s, i): t for a, b, s, i, t in rows}

    def mark_done(self, attack: str, behaviour_id: str, reason: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO done (attack, behaviour_id, reason) VALUES (?, ?, ?)",
                (attack, behaviour_id, reason),
            )

    def is_done(self, attack: str, behaviour_id: str) -> bool:
        return self.done_reason(attack, behaviour_id) is not None

    def done_reason(self, attack: str, behaviour_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT reason FROM done WHERE attack = ? AND behaviour_id = ?",
                (attack, behaviour_id),
            ).fetchone()
        return row[0] if row else None

    def done(self) -> dict[tuple[str, str], str]:
        with self._lock:
            rows = self._db.execute("SELECT attack, behaviour_id, reason FROM done").fetchall()
        return {(a, b): r for a, b, r in rows}

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
