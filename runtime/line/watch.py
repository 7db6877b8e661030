"""Watch a folder and score every image that lands in it, exactly once.

Rules (the things that lose or duplicate data when done loosely):

* **Complete files only.** The folder is polled (portable: no inotify). A file is read once its
  size and mtime have not changed for ``settle`` seconds, and its size and mtime are checked
  again around the read; dot-files and temporary names (``*.part``, ``*.tmp``, ``*.crdownload``,
  ...; see :data:`runtime.selection.TEMPORARY_SUFFIXES`) are never read. A writer that pauses
  longer than ``settle`` mid-file should write under a temporary name and rename at the end.
* **Exactly once, across crashes.** ``OUT/results.jsonl`` is the journal (see
  :mod:`runtime.journal`): a file whose (relative path, size, mtime) is recorded is never scored
  again. Order per batch: claim overlay files, append + fsync the records (the commit), then
  move inputs. A kill before the commit rescores the batch; a kill after it finishes the moves on
  restart from the ``moved_to`` field of the records.
* **Moves never overwrite.** ``--move`` puts inputs under ``OUT/ok``, ``OUT/ng`` or ``OUT/error``
  keeping their sub-folder, as ``name-1.ext``, ``name-2.ext`` ... when the name is taken.
* **Bad files do not stop the watcher**: they get a record with ``verdict: "error"`` and an
  ``error`` message.
* Files already in the folder at start are scored unless ``existing`` is off; then the files
  present at this start are ignored (by path, size and mtime: a later change makes them new).
* A stop request (SIGINT/SIGTERM set the ``stop`` event) takes effect after the current batch.
* A new bundle (``source``, see :mod:`runtime.line.reload`) is taken between batches, never
  within one: every record names the bundle that scored it.
"""

from __future__ import annotations

import filecmp
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import UsageError
from .console import warn
from .journal import Journal, Key
from .outputs import encode_png, free_name, move_new, overlay_image, overlay_label, write_new
from .records import Item, Outcome, record, score_items
from .selection import is_temporary_name

RESULTS = "results.jsonl"
LOCK = ".watch.lock"


@dataclass
class WatchOptions:
    folder: Path
    out: Path
    existing: bool = True
    move: bool = False
    overlays: bool = False
    batch: int = 8
    poll: float = 0.25
    settle: float = 1.0
    recursive: bool = True
    once: bool = False  # stop when nothing is left to do (for scripts and tests)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise UsageError("--batch must be >= 1")
        if self.poll <= 0:
            raise UsageError("--poll must be > 0 seconds")
        if self.settle < 0:
            raise UsageError("--settle must be >= 0 seconds")


@dataclass
class WatchSummary:
    scored: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "ng": 0, "error": 0, "none": 0})
    already_recorded: int = 0  # in results.jsonl when the watcher started
    torn_bytes: int = 0
    moves_completed: int = 0  # interrupted moves finished on this start


class WatchStatus(Protocol):
    def batch(self, outcomes: list[Outcome], queue: int, settling: int) -> None: ...

    def idle(self, queue: int, settling: int) -> None: ...


def scan(folder: Path, exclude: Path | None, recursive: bool = True) -> dict[str, tuple[int, int]]:
    """Regular, non-temporary files under ``folder`` -> (size, mtime_ns), by relative posix path.
    Skips dot-folders, ``exclude`` (the output folder) and symlinked folders."""
    out: dict[str, tuple[int, int]] = {}
    stack = [(folder, "")]
    while stack:
        d, prefix = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                if is_temporary_name(e.name):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        if recursive and not (exclude and os.path.realpath(e.path) == str(exclude)):
                            stack.append((Path(e.path), f"{prefix}{e.name}/"))
                        continue
                    st = e.stat()
                except OSError:
                    continue  # vanished or unreadable between listing and stat
                if stat.S_ISREG(st.st_mode):
                    out[f"{prefix}{e.name}"] = (st.st_size, st.st_mtime_ns)
    return out


class Settler:
    """Reports files whose (size, mtime) has not changed for ``settle`` seconds."""

    def __init__(self, settle: float, clock: Callable[[], float] = time.monotonic):
        self.settle = settle
        self.clock = clock
        self.state: dict[str, tuple[tuple[int, int], float]] = {}

    def update(self, entries: dict[str, tuple[int, int]]) -> list[str]:
        now = self.clock()
        new: dict[str, tuple[tuple[int, int], float]] = {}
        ready = []
        for rel, sig in entries.items():
            prev = self.state.get(rel)
            since = prev[1] if prev is not None and prev[0] == sig else now
            new[rel] = (sig, since)
            if now - since >= self.settle:
                ready.append(rel)
        self.state = new
        return ready

    def forget(self, rel: str) -> None:
        self.state.pop(rel, None)


class _Lock:
    """An exclusive lock on the output folder: two watchers on one journal would duplicate."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self) -> "_Lock":
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; documented limitation
            return self
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise UsageError(f"{self.path.parent}: another patchcore-rt watch is writing here") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()


class Watcher:
    def __init__(self, predictor, options: WatchOptions, emit: Callable[[dict[str, Any]], None] | None = None,
                 status: WatchStatus | None = None, stop: threading.Event | None = None, source=None):
        folder = options.folder
        if not folder.is_dir():
            raise UsageError(f"watch folder not found: {folder}" if not folder.exists() else f"{folder}: not a folder")
        if options.move and predictor.threshold is None:
            raise UsageError("--move needs verdicts, but this bundle has no threshold (calibrate it first)")
        self.predictor = predictor
        self.source = source  # a BundleSource: hot reload between batches
        self.opt = options
        self.emit = emit or (lambda r: None)
        self.status = status
        self.stop = stop or threading.Event()
        self.out_real = os.path.realpath(options.out)
        self.settler = Settler(options.settle)
        self.summary = WatchSummary()
        self._left: set[Key] = set()  # recorded files we leave where they are (warned once)

    # ------------------------------------------------------------------ main loop
    def run(self) -> WatchSummary:
        opt = self.opt
        opt.out.mkdir(parents=True, exist_ok=True)
        with _Lock(opt.out / LOCK), Journal(opt.out / RESULTS) as journal:
            self.journal = journal
            self.summary.already_recorded = len(journal)
            self.summary.torn_bytes = journal.torn_bytes
            if journal.torn_bytes:
                warn(f"{journal.path}: cut off a torn last line ({journal.torn_bytes} bytes, from a run that was "
                     "killed mid-write); that file is scored again")
            if journal.bad_lines:
                warn(f"{journal.path}: ignored {journal.bad_lines} line(s) that are not result records")
            ignored: set[Key] = set()
            if not opt.existing:
                ignored = {(rel, *sig) for rel, sig in self._scan().items()}
            while not self.stop.is_set():
                self._take_current_bundle()
                entries = self._scan()
                ready = set(self.settler.update(entries))
                todo: list[Key] = []
                settling = 0
                for rel in sorted(entries, key=lambda r: (entries[r][1], r)):
                    key = (rel, *entries[rel])
                    if key in ignored:
                        continue
                    if key in journal:
                        if rel in ready:
                            self._recover(key)
                    elif rel in ready:
                        todo.append(key)
                    else:
                        settling += 1
                for i in range(0, len(todo), opt.batch):
                    outcomes = self._process(todo[i : i + opt.batch])
                    if self.status:
                        self.status.batch(outcomes, max(0, len(todo) - i - opt.batch), settling)
                    if self.stop.is_set():
                        break
                if not todo:
                    if opt.once and settling == 0:
                        break
                    if self.status:
                        self.status.idle(0, settling)
                    self.stop.wait(opt.poll)
        return self.summary

    def _take_current_bundle(self) -> None:
        if self.source is not None:
            self.predictor = self.source.current()

    def _scan(self) -> dict[str, tuple[int, int]]:
        return scan(self.opt.folder, Path(self.out_real), self.opt.recursive)

    # ------------------------------------------------------------------ one batch
    def _read(self, key: Key) -> Item | None:
        rel, size, mtime = key
        path = self.opt.folder / rel
        extra = {"size": size, "mtime_ns": mtime}
        try:
            st = os.stat(path)
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                self.settler.forget(rel)  # changed since it settled: wait for it again
                return None
            data = path.read_bytes()
            st = os.stat(path)
        except FileNotFoundError:
            return None  # removed before we got to it: nothing to record
        except OSError as e:
            return Item(rel, path=path, error=f"{path}: cannot read file ({e.strerror or e})", extra=extra)
        if (st.st_size, st.st_mtime_ns) != (size, mtime) or len(data) != size:
            self.settler.forget(rel)
            return None
        return Item(rel, path=path, data=data, extra=extra)

    def _process(self, keys: list[Key]) -> list[Outcome]:
        opt = self.opt
        items = [it for it in (self._read(k) for k in keys) if it is not None]
        if not items:
            return []
        self._take_current_bundle()
        outcomes = score_items(self.predictor, items)
        bundle_id = self.predictor.bundle.bundle_id
        reserved: set[Path] = set()
        records = []
        for o in outcomes:
            extra: dict[str, Any] = {}
            if opt.overlays and o.map is not None and o.item.image is not None:
                png = encode_png(overlay_image(o.item.image, o.map, self.predictor.spec, self.predictor.threshold,
                                               self.predictor.scale, overlay_label(o.verdict, o.score, o.normalised)))
                # claimed before the commit: a crash in between leaves an unreferenced overlay,
                # never a record that points at nothing
                dst = write_new(opt.out / "overlays" / Path(o.item.name).with_suffix(".png"), png)
                extra["overlay"] = dst.relative_to(opt.out).as_posix()
            if opt.move:
                dst = free_name(opt.out / o.verdict / o.item.name, reserved)
                reserved.add(dst)
                extra["moved_to"] = dst.relative_to(opt.out).as_posix()
            o.item.image = None
            records.append(record(o, bundle_id, **extra))
        self.journal.append(records)  # the commit point
        for o, r in zip(outcomes, records):
            self.summary.scored += 1
            self.summary.counts[o.verdict or "none"] += 1
            self.emit(r)
        if opt.move:
            for r in records:
                self._move(opt.folder / r["file"], opt.out / r["moved_to"])
        return outcomes

    def _move(self, src: Path, dst: Path) -> None:
        try:
            got = move_new(src, dst)
        except FileNotFoundError:
            warn(f"{src}: gone before it could be moved to {dst}")
            return
        except OSError as e:
            warn(f"{src}: could not move to {dst} ({e.strerror or e}); left in place")
            return
        if got != dst:
            warn(f"{src}: {dst} appeared meanwhile; moved to {got} instead")

    def _recover(self, key: Key) -> None:
        """A recorded file is still in the folder: finish an interrupted move, or leave it."""
        if not self.opt.move or key in self._left:
            return
        rec = self.journal.get(key) or {}
        moved_to = rec.get("moved_to")
        src = self.opt.folder / key[0]
        if not moved_to:
            self._left.add(key)  # scored by a run without --move: left where it is
            return
        dst = self.opt.out / moved_to
        try:
            if not dst.exists():
                self._move(src, dst)
                self.summary.moves_completed += 1
                return
            if os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False):
                os.unlink(src)  # killed between creating dst and removing src
                self.summary.moves_completed += 1
                return
        except FileNotFoundError:
            return
        self._left.add(key)
        warn(f"{src}: same name, size and mtime as an already recorded file, but {dst} holds other "
             "content; not scored again, left in place")
