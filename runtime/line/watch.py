"""Watch a folder and score every image that lands in it, exactly once.

Rules (the things that lose or duplicate data when done loosely):

* **Complete files only.** The folder is polled (portable: no inotify). A file is read once its
  size and mtime have not changed for ``settle`` seconds, and its size and mtime are checked
  again around the read; dot-files and temporary names (``*.part``, ``*.tmp``, ``*.crdownload``,
  ...; see :data:`runtime.line.image_files.TEMPORARY_SUFFIXES`) are never read. A writer that pauses
  longer than ``settle`` mid-file should write under a temporary name and rename at the end.
* **Exactly once, across crashes.** ``OUT/results.jsonl`` is the journal (see
  :mod:`runtime.line.journal`): a file whose (relative path, size, mtime, inode, ctime) is
  recorded is never scored again. Order per batch: claim overlay files, append + fsync the
  records (the commit), then move inputs. A kill before the commit rescores the batch; a kill
  after it finishes the moves on restart (also with ``--once``) from the ``moved_to`` field of
  the records. Nothing is deleted without a line on stderr.
* **Our own outputs are never inputs.** ``--out`` may lie inside the watched folder (it is
  skipped by every scan, whatever path leads to it) but may not be the watched folder itself.
* **Links are not followed** unless ``follow_links``, and then only links that resolve inside
  the watched folder: anything else gets an error record without being read (and is moved to
  ``error/`` as a link with ``--move``).
* **One mover per folder.** The output folder is locked (one journal, one writer), and with
  ``--move`` the watched folder too, so a second watcher moving the same files is refused.
* **Moves never overwrite.** ``--move`` puts inputs under ``OUT/ok``, ``OUT/ng`` or ``OUT/error``
  keeping their sub-folder, as ``name-1.ext``, ``name-2.ext`` ... when the name is taken.
* **Bad files do not stop the watcher**: they get a record with ``verdict: "error"`` and an
  ``error`` message.
* Files already in the folder at start are scored unless ``existing`` is off; then the files
  present at this start are ignored (by path, size and mtime: a later change makes them new).
* A stop request (SIGINT/SIGTERM set the ``stop`` event) takes effect after the current batch.
* **Outputs that cannot be written** (read-only or full disk) stop the watcher with one line
  and exit code 9, the journal cut back to the last complete batch; a move that fails is
  warned about once and retried with a growing delay.
* A new bundle (``source``, see :mod:`runtime.line.reload`) is taken between batches, never
  within one: every record names the bundle that scored it.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import hashlib
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; documented limitation
    fcntl = None

from ..errors import OutputError, UsageError
from ..images import ImageReadError, read_file_bytes
from .journal import MOVE_STARTED, SAME, Journal, Key
from .outputs import encode_png, free_name, move_new, outcome_overlay, write_new
from .products import product_of_path, score_by_product
from .image_files import is_temporary_name
from .messages import info, warn
from .records import Item, Outcome, image_of, record, score_items
from .run_options import RunOptions

RESULTS = "results.jsonl"


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
    follow_links: bool = False  # score symlinks that resolve inside the watched folder

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise UsageError("--batch-size must be >= 1")
        if self.poll <= 0:
            raise UsageError("--poll must be > 0 seconds")
        if self.settle < 0:
            raise UsageError("--settle must be >= 0 seconds")
        if self.folder.is_dir() and os.path.realpath(self.out) == os.path.realpath(self.folder):
            raise UsageError(f"--out {self.out} is the watched folder itself: results, overlays and moved files "
                             "would be scored as inputs; give a sub-folder (e.g. the default FOLDER/_patchcore) "
                             "or a folder elsewhere")


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


@dataclass(frozen=True)
class Entry:
    """One file seen by a scan: its identity (from lstat, or stat of a followed link)."""

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int
    link: str | None = None  # why a symlink is not followed; None for files that are read

    @property
    def sig(self) -> tuple[int, int, int, int]:
        return self.size, self.mtime_ns, self.inode, self.ctime_ns


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def scan(folder: Path, exclude: Path | None, recursive: bool = True, follow_links: bool = False) -> dict[str, Entry]:
    """Non-temporary files under ``folder`` by relative posix path. Skips dot-folders, the
    folder ``exclude`` (our output folder, compared by its real path) and symlinked folders.
    Symlinks to files are entries with ``link`` set (not to be read) unless ``follow_links``
    and they resolve to a regular file inside ``folder``."""
    out: dict[str, Entry] = {}
    root = os.path.realpath(folder)
    skip = os.path.realpath(exclude) if exclude is not None else None
    stack = [(folder, "")]
    while stack:
        d, prefix = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue  # vanished, or not readable
        with it:
            for e in it:
                if is_temporary_name(e.name):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        if recursive and os.path.realpath(e.path) != skip:
                            stack.append((Path(e.path), f"{prefix}{e.name}/"))
                        continue
                    st = e.stat(follow_symlinks=False)
                    link = None
                    if stat.S_ISLNK(st.st_mode):
                        target = os.path.realpath(e.path)
                        if os.path.isdir(target):
                            continue  # linked folders are not descended into
                        if not os.path.exists(target):
                            link = "a broken symbolic link"
                        elif not follow_links:
                            link = "a symbolic link; links are not followed (--follow-links follows links inside " \
                                   "the watched folder)"
                        elif not _inside(target, root) or (skip and _inside(target, skip)):
                            link = "a symbolic link that leads outside the watched folder; not followed"
                        else:
                            st = os.stat(e.path)
                            if not stat.S_ISREG(st.st_mode):
                                continue
                    elif not stat.S_ISREG(st.st_mode):
                        continue  # FIFOs, sockets, devices: not files anyone drops for scoring
                except OSError:
                    continue  # vanished or unreadable between listing and stat
                out[f"{prefix}{e.name}"] = Entry(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, link)
    return out


class Settler:
    """Reports files whose signature (size, mtime, ...) has not changed for ``settle`` seconds."""

    def __init__(self, settle: float, clock: Callable[[], float] = time.monotonic):
        self.settle = settle
        self.clock = clock
        self.state: dict[str, tuple[Any, float]] = {}

    def update(self, entries: dict[str, Any]) -> list[str]:
        """``entries``: relative path -> signature (anything comparable with ``==``)."""
        now = self.clock()
        new: dict[str, tuple[Any, float]] = {}
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
    """An advisory lock (flock) on a folder, taken without blocking: the output folder is locked
    exclusively (one journal, one writer), the watched folder exclusively by a watcher that
    moves files and shared by one that does not (two moving watchers, or one moving and one
    reading, would race for the same files)."""

    def __init__(self, folder: Path, exclusive: bool, what: str):
        self.folder, self.exclusive, self.what = folder, exclusive, what
        self.fd = -1

    def __enter__(self) -> "_Lock":
        if fcntl is None:
            return self
        try:
            self.fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as e:
            raise OutputError(f"{self.folder}: cannot open the folder to lock it ({e.strerror or e})") from None
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            self.fd = -1
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UsageError(f"{self.folder}: another patchcore-rt watch {self.what}") from None
            raise OutputError(f"{self.folder}: cannot lock ({e.strerror or e})") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class _Retry:
    """A move that failed: when to try again (the delay doubles up to five minutes)."""

    at: float
    delay: float


def record_id(rel: str, key_fields: dict[str, Any]) -> str:
    """The id of a watched file's record: from what identifies the file (path, size, mtime, inode,
    ctime), so a file scored again after a crash gets the same id and consumers drop the repeat."""
    ident = "\0".join([rel] + [str(key_fields.get(k, "")) for k in ("size", "mtime_ns", "inode", "ctime_ns")])
    return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class Watcher:
    def __init__(self, predictor, options: WatchOptions, emit: Callable[[dict[str, Any]], None] | None = None,
                 status: WatchStatus | None = None, stop: threading.Event | None = None, source=None,
                 run: RunOptions = RunOptions(), publisher=None, products=None):
        folder = options.folder
        if not folder.is_dir():
            raise UsageError(f"watch folder not found: {folder}" if not folder.exists() else f"{folder}: not a folder")
        if options.move and predictor.threshold is None:
            raise UsageError("--move needs verdicts, but this bundle has no threshold (calibrate it first)")
        self.predictor = predictor
        self.source = source  # a BundleSource: hot reload between batches
        self.products = products  # runtime.line.products.Products: a bundle per first sub-folder
        self.opt = options
        self.run_options = run  # the image limits, and the rule judged per bundle
        self.limits = run.limits
        self.emit = emit or (lambda r: None)
        # the result sinks (runtime.line.sinks.delivery.Publisher): opened under the output folder's lock,
        # fed each record before its commit
        self.publisher = publisher
        self.status = status
        self.stop = stop or threading.Event()
        self.out_real = os.path.realpath(options.out)
        self.settler = Settler(options.settle)
        self.summary = WatchSummary()
        self._left: set[Key] = set()  # recorded files we leave where they are (warned once)
        self._retry: dict[str, _Retry] = {}  # failed moves by source path, tried again later

    # ------------------------------------------------------------------ main loop
    def run(self) -> WatchSummary:
        opt = self.opt
        try:
            opt.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"--out {opt.out}: cannot create the output folder ({e.strerror or e})") from None
        if not opt.out.is_dir():
            raise OutputError(f"--out {opt.out}: not a folder")
        with _Lock(opt.out, True, "is writing results here"), \
                _Lock(opt.folder, opt.move, "moves files out of this folder" if not opt.move else
                      "watches this folder (a watcher with --move must be the only one)"), \
                Journal(opt.out / RESULTS) as journal, \
                (self.publisher if self.publisher else contextlib.nullcontext()):
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
                ignored = {self._key(rel, e) for rel, e in self._scan().items()}
            while not self.stop.is_set():
                self._take_current_bundle()
                entries = self._scan()
                ready = set(self.settler.update({rel: e.sig for rel, e in entries.items()}))
                todo: list[Key] = []
                settling = pending = 0
                for rel in sorted(entries, key=lambda r: (entries[r].mtime_ns, r)):
                    key = self._key(rel, entries[rel])
                    if key in ignored:
                        continue
                    how, rec = journal.match(key)
                    if how is not None:
                        pending += self._recover(key, how, rec or {})  # recorded: no need to settle
                    elif rel in ready:
                        todo.append(key)
                    else:
                        settling += 1
                for i in range(0, len(todo), opt.batch):
                    outcomes = self._process(todo[i : i + opt.batch], entries)
                    if self.status:
                        self.status.batch(outcomes, max(0, len(todo) - i - opt.batch), settling)
                    if self.stop.is_set():
                        break
                if not todo:
                    if opt.once and settling == 0 and pending == 0:
                        break
                    if self.status:
                        self.status.idle(0, settling)
                    self.stop.wait(opt.poll)
        return self.summary

    @staticmethod
    def _key(rel: str, e: Entry) -> Key:
        return Key(rel, e.size, e.mtime_ns, e.inode, e.ctime_ns)

    def _take_current_bundle(self) -> None:
        if self.source is not None:
            self.predictor = self.source.current()

    def _scan(self) -> dict[str, Entry]:
        return scan(self.opt.folder, Path(self.out_real), self.opt.recursive, self.opt.follow_links)

    # ------------------------------------------------------------------ one batch
    def _read(self, key: Key, entry: Entry) -> Item | None:
        path = self.opt.folder / key.rel
        extra = key.fields()
        if entry.link:
            return Item(key.rel, path=path, error=f"{path}: {entry.link}", extra=extra)
        try:
            data = read_file_bytes(path, self.limits.max_bytes)
            st = os.stat(path)
        except ImageReadError as e:
            if not os.path.lexists(path):
                return None  # removed before we got to it: nothing to record
            return Item(key.rel, path=path, error=str(e), extra=extra)
        except FileNotFoundError:
            return None
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (key.size, key.mtime_ns, key.inode) or len(data) != key.size:
            self.settler.forget(key.rel)  # changed since it settled: wait for it again
            return None
        return Item(key.rel, path=path, data=data, extra=extra)

    def _process(self, keys: list[Key], entries: dict[str, Entry]) -> list[Outcome]:
        opt = self.opt
        items = [it for it in (self._read(k, entries[k.rel]) for k in keys) if it is not None]
        if not items:
            return []
        if self.products is None:
            self._take_current_bundle()
            outcomes = score_items(self.predictor, items, self.limits, self.run_options.judge(self.predictor),
                                   overlays=True if opt.overlays else None)
            preds, names = [self.predictor] * len(outcomes), [None] * len(outcomes)
        else:
            outcomes, preds, names = score_by_product(self.products, items,
                                                      lambda it: product_of_path(it.name, self.products), self.run_options,
                                                      overlays=True if opt.overlays else None)
        reserved: set[Path] = set()
        records = []
        for o, p, product in zip(outcomes, preds, names):
            extra: dict[str, Any] = {"id": record_id(o.item.name, o.item.extra)}
            if self.products is not None and self.products.named:
                extra["product"] = product
            image = image_of(o.item, self.limits) if opt.overlays and o.map is not None else None
            if image is not None:
                png = encode_png(outcome_overlay(image, o, p, self.run_options.judge(p)))
                # claimed before the commit: a crash in between leaves an unreferenced overlay,
                # never a record that points at nothing
                try:
                    dst = write_new(opt.out / "overlays" / Path(o.item.name).with_suffix(".png"), png)
                except OSError as e:
                    raise OutputError(f"{opt.out / 'overlays'}: cannot write an overlay ({e.strerror or e})") from None
                extra["overlay"] = dst.relative_to(opt.out).as_posix()
            if opt.move:
                dst = free_name(opt.out / o.verdict / o.item.name, reserved)
                reserved.add(dst)
                extra["moved_to"] = dst.relative_to(opt.out).as_posix()
            records.append(record(o, p.bundle.bundle_id if p else None, precision=p.precision if p else None,
                                  **extra))
        if self.publisher:
            # before the commit: a kill in between rescores the batch under the same ids, which
            # a sink drops as repeats; after it, a kill could lose the results for the sinks
            for r in records:
                self.publisher.publish(r)
        self.journal.append(records)  # the commit point
        for o, r in zip(outcomes, records):
            self.summary.scored += 1
            self.summary.counts[o.verdict or "none"] += 1
            self.emit(r)
        if opt.move:
            for r in records:
                self._move(opt.folder / r["file"], opt.out / r["moved_to"])
        return outcomes

    def _move(self, src: Path, dst: Path) -> bool:
        """Move ``src`` to ``dst`` (never overwriting); True when done or nothing is left to do.
        A failure is warned about once, then retried with a growing delay."""
        key = str(src)
        retry = self._retry.get(key)
        now = time.monotonic()
        if retry is not None and now < retry.at:
            return False
        try:
            got = move_new(src, dst)
        except FileNotFoundError:
            if not os.path.lexists(src):
                warn(f"{src}: gone before it could be moved to {dst}")
                self._retry.pop(key, None)
                return True
            got = None
            error = f"{dst.parent} does not exist"
        except OSError as e:
            got, error = None, e.strerror or str(e)
        if got is None:
            if retry is None:
                warn(f"{src}: could not move to {dst} ({error}); left in place, retried later (no more warnings "
                     "for this file)")
                self._retry[key] = _Retry(now + 1.0, 1.0)
            else:
                delay = min(retry.delay * 2, 300.0)
                self._retry[key] = _Retry(now + delay, delay)
            return False
        if retry is not None:
            info(f"{src}: moved to {got} after {self._retry.pop(key).delay:.0f} s of retries")
        if got != dst:
            warn(f"{src}: {dst} appeared meanwhile; moved to {got} instead")
        return True

    def _recover(self, key: Key, how: str, rec: dict[str, Any]) -> int:
        """A recorded file is still in the folder: finish an interrupted move, or leave it.
        Returns 1 while a move is still to be done (so ``--once`` waits for it), else 0."""
        if not self.opt.move or key in self._left:
            return 0
        moved_to = rec.get("moved_to")
        src = self.opt.folder / key.rel
        if not moved_to:
            self._left.add(key)  # scored by a run without --move: left where it is
            return 0
        dst = self.opt.out / moved_to
        try:
            if how == SAME and not os.path.lexists(dst):
                if self._move(src, dst):
                    self.summary.moves_completed += 1
                    return 0
                return 1
            if os.path.samefile(src, dst) or (how == SAME and filecmp.cmp(src, dst, shallow=False)):
                os.unlink(src)  # killed between creating dst and removing src: the move is finished
                self.summary.moves_completed += 1
                info(f"{src}: finished an interrupted move to {dst}")
                return 0
        except FileNotFoundError:
            return 0
        except OSError as e:
            warn(f"{src}: could not finish its move to {dst} ({e.strerror or e}); left in place")
        self._left.add(key)
        if how == MOVE_STARTED:
            return 0  # recorded as moved, but dst is another file: a new version, scored later if it changes
        warn(f"{src}: already recorded (same name, size, mtime and inode), but {dst} holds other content; "
             "not scored again, left in place")
        return 0
