"""``results.jsonl`` as the watcher's journal: one fsynced line per processed file.

The result record *is* the journal entry, so there is no window between "result written" and
"marked done" in which a crash could produce a duplicate or lose a file. A file is identified by
its path relative to the watched folder, its size, its mtime, its inode and its ctime (all from
one ``stat``): a file replaced under the same name is a new file even when it kept the size and
mtime of the one before (a copy that preserves timestamps), while the same file seen again after
a restart is skipped. Records written before inode and ctime were recorded still match on path,
size and mtime.

ctime also changes when the watcher itself hard-links a file into ``ok/``/``ng/``/``error/``
(``--move``); a file that matches a record in everything but ctime and whose record says where it
was moved is reported as :data:`MOVE_STARTED`, so the watcher can check the link and finish the
move instead of scoring the file again.

A record line is written with one ``write`` and fsynced before anything else happens to the file
(overlay names are claimed before, moves happen after). A process killed in the middle of a
write can leave a last line without its newline; on opening, such a torn tail is cut off (that
file was never acknowledged, so it is scored again). A write that fails (a full disk, say) is
cut back to the last complete batch before the error is raised.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import OutputError
from .records import dumps

SAME = "same"
MOVE_STARTED = "move-started"


@dataclass(frozen=True)
class Key:
    """What identifies one version of one file in the watched folder."""

    rel: str  # path relative to the watched folder, posix separators
    size: int
    mtime_ns: int
    inode: int = 0
    ctime_ns: int = 0

    @property
    def base(self) -> tuple[str, int, int]:
        return self.rel, self.size, self.mtime_ns

    def fields(self) -> dict[str, Any]:
        """The record fields that store this key."""
        return {"size": self.size, "mtime_ns": self.mtime_ns, "inode": self.inode, "ctime_ns": self.ctime_ns}


def key_of(record: dict[str, Any]) -> Key | None:
    try:
        return Key(str(record["file"]), int(record["size"]), int(record["mtime_ns"]),
                   int(record.get("inode", 0)), int(record.get("ctime_ns", 0)))
    except (KeyError, TypeError, ValueError):
        return None


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        self.count = 0
        self.torn_bytes = 0  # size of a torn tail cut off on opening
        self.bad_lines = 0  # complete lines that are not records (edited by hand?), ignored
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._load()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot open the journal ({e.strerror or e})") from None

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
            except (UnicodeDecodeError, ValueError, RecursionError):
                self.bad_lines += 1
                continue
            key = key_of(rec) if isinstance(rec, dict) else None
            if key is None:
                self.bad_lines += 1
                continue
            self._index(key, rec)

    def _index(self, key: Key, rec: dict[str, Any]) -> None:
        self.records.setdefault(key.base, []).append(rec)
        self.count += 1

    def match(self, key: Key) -> tuple[str | None, dict[str, Any] | None]:
        """(:data:`SAME` or :data:`MOVE_STARTED` or None, the record)."""
        started = None
        for rec in self.records.get(key.base, ()):
            inode, ctime = int(rec.get("inode", 0)), int(rec.get("ctime_ns", 0))
            if not inode or (inode == key.inode and ctime == key.ctime_ns):
                return SAME, rec
            if inode == key.inode and rec.get("moved_to"):
                started = rec
        return (MOVE_STARTED, started) if started else (None, None)

    def __contains__(self, key: Key) -> bool:
        return self.match(key)[0] is not None

    def __len__(self) -> int:
        return self.count

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each with file, size, mtime_ns) in one write, then fsync. On failure
        the file is cut back to where it was, so no partial batch stays recorded."""
        records = list(records)
        if not records:
            return
        keys = [key_of(r) for r in records]
        if any(k is None for k in keys):
            raise ValueError(f"journal record lacks file/size/mtime_ns: {records[keys.index(None)]}")
        data = "".join(dumps(r) + "\n" for r in records).encode("ascii")
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
            except OSError:
                pass
            raise OutputError(f"{self.path}: cannot write the journal ({e.strerror or e}); "
                              "this batch is not recorded and will be scored again") from None
        for k, r in zip(keys, records):
            self._index(k, r)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
