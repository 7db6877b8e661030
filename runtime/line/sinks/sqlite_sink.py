"""``sqlite:///path/results.db``: the embedded results history (standard library ``sqlite3``).

WAL mode (a reader, a shift report, never blocks the writer), a ``results`` table indexed by time
and by verdict, the record id unique so a record delivered again after a restart is dropped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .base import SinkDown, SinkError, query, redact, release, split
from .rows import row

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, time TEXT, verdict TEXT, score REAL, "
    "normalised REAL, part TEXT, bundle TEXT, record TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS results_time ON results (time)",
    "CREATE INDEX IF NOT EXISTS results_verdict ON results (verdict, time)",
)


class SqliteSink:
    def __init__(self, url: str, path: Path):
        self.url, self.path = url, path
        self.db: sqlite3.Connection | None = None

    def open(self) -> None:
        try:
            self.db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            for s in SCHEMA:
                self.db.execute(s)
        except sqlite3.Error as e:
            raise SinkError(f"--publish {self.url}: cannot use {self.path} as a results database ({e})") from None

    def send(self, record: dict[str, Any], record_id: str) -> None:
        try:
            self.db.execute("INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?,?)", row(record, record_id))
        except sqlite3.Error as e:  # locked for longer than the timeout, disk full
            raise SinkDown(str(e)) from None

    def close(self) -> None:
        self.db = release(self.db)


def make(url: str) -> SqliteSink:
    parts = split(url, need_host=False)
    query(parts, url, set())
    if parts.netloc or not parts.path or parts.path == "/":
        raise SinkError(f"--publish {redact(url)}: give a file as sqlite:///relative/results.db or "
                        "sqlite:////absolute/results.db")
    path = Path(parts.path[1:])
    if not path.parent.is_dir():
        absolute = Path("/" + parts.path[1:])
        hint = (f"; for the absolute path {absolute} write four slashes: sqlite:///{absolute}"
                if not path.is_absolute() and absolute.parent.is_dir() else
                "; create it first (sqlite:///relative/results.db is relative to the current folder, "
                "sqlite:////absolute/results.db absolute)")
        raise SinkError(f"--publish {redact(url)}: folder {path.parent} does not exist{hint}")
    return SqliteSink(redact(url), path)
