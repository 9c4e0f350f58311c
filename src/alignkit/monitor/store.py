"""The monitor's time series: one SQLite row per round, durable across kills and restarts.

``RUN_DIR/monitor.sqlite`` (WAL, ``synchronous=FULL``): ``meta`` (what the series watches:
model, suite, baseline, bounds) and ``rounds`` (index, start time, seconds, status ``ok`` or
``failed``, the counts of bad outcomes per metric, raw and, once the guard is on, guarded,
the error of a failed round, the alerts it raised). A round is written in one transaction when
it ends, so a killed monitor loses at most the round in progress; a restart goes on with the
next index.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import DataError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    idx INTEGER PRIMARY KEY, started REAL NOT NULL, seconds REAL NOT NULL,
    status TEXT NOT NULL, counts TEXT NOT NULL, guarded TEXT, error TEXT,
    alerts TEXT NOT NULL
);
"""


@dataclass
class Round:
    """One round: ``counts`` maps a metric to ``[bad, trials]`` (raw model), ``guarded`` the
    same behind the guardrail (None while the guard is off)."""

    idx: int
    started: float
    seconds: float
    status: str  # ok | failed
    counts: dict[str, list[int]] = field(default_factory=dict)
    guarded: dict[str, list[int]] | None = None
    error: str | None = None
    alerts: list[str] = field(default_factory=list)  # metrics that entered alarm this round


class MonitorStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise DataError(f"monitor store {str(self.path)!r} cannot be used ({exc})") from None

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    def add(self, r: Round) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (r.idx, r.started, r.seconds, r.status, json.dumps(r.counts),
                 None if r.guarded is None else json.dumps(r.guarded), r.error,
                 json.dumps(r.alerts)),
            )  # fmt: skip

    def rounds(self) -> list[Round]:
        rows = self._db.execute("SELECT * FROM rounds ORDER BY idx").fetchall()
        return [
            Round(i, s, sec, st, json.loads(c), None if g is None else json.loads(g), e,
                  json.loads(a))
            for i, s, sec, st, c, g, e, a in rows
        ]  # fmt: skip

    def next_index(self) -> int:
        row = self._db.execute("SELECT MAX(idx) FROM rounds").fetchone()
        return 0 if row[0] is None else row[0] + 1

    def close(self) -> None:
        self._db.close()
