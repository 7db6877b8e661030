"""Delivery that loses nothing and never holds up scoring.

Each sink gets an **outbox**: an SQLite file in the command's output folder
(``OUT/outbox/<scheme>-<hash of the URL>.db``) and a **sender thread**. The scoring thread
appends each record to the outbox (one insert in WAL mode without fsync: it survives a kill of
the process, SIGKILL included, and is cheap beside scoring; see BENCHMARKS.md "Result sinks") and
wakes the sender; the sender delivers the outbox in order and removes a record only once the
sink has taken it. So a sink that is slow or away never makes scoring wait: its records wait
in the outbox, in order, and go out when it is back, also after a restart of the runtime.

Bounds: the outbox holds at most ``max_pending`` records (``$PATCHCORE_RT_OUTBOX_MAX``, default
100000); a record that finds it full is not added and is counted as ``overflow`` (watch keeps
it in its journal, ``results.jsonl``). A record may be delivered twice (a kill between the
sink's acknowledgement and the outbox removal, or an MQTT resend); it carries its id, so a
consumer drops the repeat (the database sinks do).

The sink's state changes (up, down, back) are log lines, never exceptions in the scoring thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...errors import OutputError
from .base import Sink, SinkDown, SinkError
from .table import make_sink

DEFAULT_MAX_PENDING = 100_000
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
FLUSH_S = 5.0  # how long a stop waits for the outbox to drain before leaving the rest for next time


def max_pending_from_env() -> int:
    raw = os.environ.get("PATCHCORE_RT_OUTBOX_MAX", "")
    try:
        return int(raw) if raw else DEFAULT_MAX_PENDING
    except ValueError:
        raise SinkError(f"$PATCHCORE_RT_OUTBOX_MAX must be an integer, got {raw!r}") from None


def outbox_name(url: str) -> str:
    scheme = url.partition("://")[0].replace(".", "-")
    return f"{scheme}-{hashlib.sha256(url.encode()).hexdigest()[:12]}.db"


class Outbox:
    """Records waiting for one sink, in order, on disk."""

    def __init__(self, path: Path, max_pending: int):
        self.path, self.max_pending = path, max_pending
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                            "id TEXT NOT NULL, body TEXT NOT NULL)")
            self.pending = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except (OSError, sqlite3.Error) as e:
            raise OutputError(f"{path}: cannot open the outbox ({e})") from None
        self.lock = threading.Lock()

    def add(self, record_id: str, body: str) -> bool:
        """Append one record; False (not added) when the outbox is full."""
        with self.lock:
            if self.pending >= self.max_pending:
                return False
            self.db.execute("INSERT INTO outbox (id, body) VALUES (?, ?)", (record_id, body))
            self.pending += 1
            return True

    def head(self, n: int) -> list[tuple[int, str, str]]:
        with self.lock:
            return self.db.execute("SELECT seq, id, body FROM outbox ORDER BY seq LIMIT ?", (n,)).fetchall()

    def remove(self, seq: int) -> None:
        with self.lock:
            self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self.pending -= 1

    def close(self) -> None:
        with self.lock:
            self.db.close()


@dataclass
class SinkStats:
    url: str
    state: str = "starting"  # up | down | starting | closed
    delivered: int = 0
    overflow: int = 0
    pending: int = 0
    last_error: str = ""


class Delivery:
    """One sink behind its outbox and sender thread."""

    def __init__(self, sink: Sink, outbox: Outbox, log: Callable[[str], None]):
        self.sink, self.outbox, self.log = sink, outbox, log
        self.stats = SinkStats(sink.url, pending=outbox.pending)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink {sink.url}", daemon=True)
        self._warned_full = False

    def start(self) -> "Delivery":
        if self.outbox.pending:
            self.log(f"{self.sink.url}: {self.outbox.pending} result(s) from an earlier run still to deliver")
        self._thread.start()
        return self

    def submit(self, record_id: str, body: str) -> None:
        try:
            added = self.outbox.add(record_id, body)
        except sqlite3.Error as e:  # the disk is full: counted, never a stop of scoring
            added = False
            self.stats.last_error = f"outbox: {e}"
        if added:
            self._wake.set()
            return
        self.stats.overflow += 1
        if not self._warned_full:
            self._warned_full = True
            why = self.stats.last_error if self.stats.last_error.startswith("outbox:") else \
                f"outbox full: {self.outbox.max_pending} results waiting"
            self.log(f"{self.sink.url}: a result could not be queued for this sink ({why}); counted as overflow, "
                     "no more warnings")

    def _state(self, state: str, why: str = "") -> None:
        if state != self.stats.state:
            before = self.stats.state
            self.stats.state = state
            if state == "down":
                self.log(f"{self.sink.url}: down ({why}); results wait in {self.outbox.path} "
                         f"({self.outbox.pending} now)")
            elif state == "up" and before == "down":
                self.log(f"{self.sink.url}: back; delivering {self.outbox.pending} waiting result(s)")

    def _run(self) -> None:
        try:
            self._deliver()
        finally:
            try:
                self.sink.close()
            except Exception as e:  # noqa: BLE001 - closing a connection that is gone anyway
                self.log(f"{self.sink.url}: close: {e}")
            self.outbox.close()

    def _deliver(self) -> None:
        failures = 0
        while True:
            rows = self.outbox.head(64)
            if not rows:
                self.stats.pending = self.outbox.pending
                if self._stop.is_set():
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            for seq, record_id, body in rows:
                try:
                    self.sink.send(json.loads(body), record_id)
                except SinkDown as e:
                    self.stats.last_error = str(e)
                    self._state("down", str(e))
                    break
                except Exception as e:  # noqa: BLE001 - a sink's bug must not end delivery
                    self.stats.last_error = f"{type(e).__name__}: {e}"
                    self._state("down", self.stats.last_error)
                    break
                self.outbox.remove(seq)
                self.stats.delivered += 1
                failures = 0
                self._state("up")
            else:
                self.stats.pending = self.outbox.pending
                continue
            self.stats.pending = self.outbox.pending
            if self._stop.is_set():
                return  # stopping while down: the rest waits for the next run
            self._stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
            failures += 1

    def close(self, flush_s: float = FLUSH_S) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(flush_s)
        if self.outbox.pending:
            self.log(f"{self.sink.url}: {self.outbox.pending} result(s) not delivered yet; kept in "
                     f"{self.outbox.path} for the next run")
        self.stats.state = "closed"


def record_id_of(record: dict[str, Any]) -> str:
    """The record's ``id``, given one (a new random one) when it has none."""
    if not record.get("id"):
        record["id"] = uuid.uuid4().hex
    return str(record["id"])


class Publisher:
    """Every ``--publish`` URL of a command: opened at start (exit 2 for what cannot work), fed
    each record as it is emitted, closed at the end. An empty list costs nothing."""

    def __init__(self, urls: list[str], out: Path, log: Callable[[str], None]):
        self.urls, self.out, self.log = list(urls), out, log
        self.sinks = [make_sink(u) for u in self.urls]  # parse all before opening any
        seen = set()
        for s in self.sinks:
            if s.url in seen:
                raise SinkError(f"--publish {s.url}: given twice")
            seen.add(s.url)
        self.deliveries: list[Delivery] = []

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def open(self) -> "Publisher":
        max_pending = max_pending_from_env()
        try:
            for s, u in zip(self.sinks, self.urls):
                s.open()
                outbox = Outbox(self.out / "outbox" / outbox_name(s.url), max_pending)
                self.deliveries.append(Delivery(s, outbox, self.log).start())
                self.log(f"publishing to {s.url}")
        except BaseException:
            opened = len(self.deliveries)
            self.close(flush_s=0)
            for s in self.sinks[opened:]:
                try:
                    s.close()
                except Exception:  # noqa: BLE001
                    pass
            raise
        return self

    def publish(self, record: dict[str, Any]) -> None:
        if not self.deliveries:
            return
        rid = record_id_of(record)
        body = json.dumps(record, separators=(",", ":"))
        for d in self.deliveries:
            d.submit(rid, body)

    def stats(self) -> list[SinkStats]:
        for d in self.deliveries:
            d.stats.pending = d.outbox.pending
        return [d.stats for d in self.deliveries]

    def status_text(self) -> str:
        """A few words for the status line: sinks down, results waiting, overflow."""
        parts = []
        for st in self.stats():
            if st.state == "down" or st.pending or st.overflow:
                parts.append(f"{st.url.partition('://')[0]} {st.state} {st.pending} waiting"
                             + (f" {st.overflow} overflow" if st.overflow else ""))
        return "; ".join(parts)

    def close(self, flush_s: float = FLUSH_S) -> None:
        deadline = time.monotonic() + flush_s
        for d in self.deliveries:
            d.close(max(0.0, deadline - time.monotonic()))
        self.deliveries = []

    def __enter__(self) -> "Publisher":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def shared(self) -> "SharedPublisher":
        """A view for a watcher inside a command that opens and closes the publisher itself (serve)."""
        return SharedPublisher(self)


class SharedPublisher:
    def __init__(self, publisher: Publisher):
        self.publisher = publisher

    def __bool__(self) -> bool:
        return bool(self.publisher)

    def publish(self, record: dict[str, Any]) -> None:
        self.publisher.publish(record)

    def __enter__(self) -> "SharedPublisher":
        return self

    def __exit__(self, *exc) -> None:
        pass
