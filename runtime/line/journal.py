"""``results.jsonl`` as the watcher's journal: one fsynced line per processed file.

The result record *is* the journal entry, so there is no window between "result written" and
"marked done" in which a crash could produce a duplicate or lose a file. A file is identified by
its path relative to the watched folder, its size and its mtime in nanoseconds: a file replaced
under the same name (new size or mtime) is a new file, while the same file seen again after a
restart is skipped.

A record line is written with one ``write`` and fsynced before anything else happens to the file
(overlay names are claimed before, moves happen after). A process killed in the middle of a
write can leave a last line without its newline; on opening, such a torn tail is cut off (that
file was never acknowledged, so it is scored again).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .console import dumps
from .outputs import append_durably

Key = tuple[str, int, int]  # (relative path, size in bytes, mtime in ns)


def key_of(record: dict[str, Any]) -> Key | None:
    try:
        return (str(record["file"]), int(record["size"]), int(record["mtime_ns"]))
    except (KeyError, TypeError, ValueError):
        return None


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[Key, dict[str, Any]] = {}
        self.torn_bytes = 0  # size of a torn tail cut off on opening
        self.bad_lines = 0  # complete lines that are not records (edited by hand?), ignored
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self.torn_bytes = len(data) - end
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                self.bad_lines += 1
                continue
            key = key_of(rec) if isinstance(rec, dict) else None
            if key is None:
                self.bad_lines += 1
                continue
            self.records.setdefault(key, rec)

    def __contains__(self, key: Key) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: Key) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each with file, size, mtime_ns) in one write, then fsync."""
        records = list(records)
        if not records:
            return
        for r in records:
            if key_of(r) is None:
                raise ValueError(f"journal record lacks file/size/mtime_ns: {r}")
        append_durably(self._fd, "".join(dumps(r) + "\n" for r in records).encode("utf-8"))
        for r in records:
            self.records.setdefault(key_of(r), r)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
