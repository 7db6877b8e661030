"""The columns a result becomes in a table (SQLite, PostgreSQL) or in a PLC's variables."""

from __future__ import annotations

import json
from typing import Any

COLUMNS = ("id", "time", "verdict", "score", "normalised", "part", "bundle", "record")


def part_of(record: dict[str, Any]) -> str:
    """What names the inspected part: the file (watch, predict, serve) or source#frame (camera)."""
    if record.get("file") is not None:
        return str(record["file"])
    if record.get("source") is not None:
        return f"{record['source']}#{record.get('frame')}"
    return ""


def row(record: dict[str, Any], record_id: str) -> tuple:
    return (record_id, record.get("time"), record.get("verdict"), record.get("score"), record.get("normalised"),
            part_of(record), record.get("bundle"), json.dumps(record, separators=(",", ":")))
