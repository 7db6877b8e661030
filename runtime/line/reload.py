"""Hot reload: ``watch`` and ``camera`` switch to a new bundle without a restart.

:class:`BundleSource` answers "which predictor scores the next batch?". It remembers the identity
of the bundle folder it was started with: the folder's resolved path (a symlink flipped to
another folder changes it), the manifest's bytes (another folder renamed into place changes
them) and the size and mtime of every file the manifest lists. Before each batch the caller
asks :meth:`BundleSource.current`; when the identity changed, or SIGHUP asked for it, the bundle
is opened and validated (every checksum, the graph loaded and checked, one blank image scored,
a threshold where verdicts are needed). A bundle that fails is refused with a warning and the
old predictor stays in use until the folder changes again or another SIGHUP comes. A batch is
scored by one predictor, so each record names the bundle that scored it.

Replace a bundle atomically (flip a symlink, or rename a complete folder into place: what
``patchcore-rt update --out`` writes is renamed into place the same way); while the folder is
missing between two renames, the old predictor carries on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..bundle import MANIFEST

Identity = tuple[str, str, tuple]


class BundleSource:
    """The bundle at ``path`` as a predictor, reopened when the folder is replaced."""

    def __init__(self, path: str | Path, open_predictor: Callable[[Path], object], predictor=None, *,
                 require_threshold: bool = False, log: Callable[[str], None] = print):
        self.path = Path(path)
        self.open_predictor = open_predictor
        self.require_threshold = require_threshold
        self.log = log
        self.predictor = predictor if predictor is not None else open_predictor(self.path)
        self.reloads = 0
        self.refused = 0
        self._seen = self.identity()
        self._requested = threading.Event()
        self._gone = False

    def identity(self) -> Identity | None:
        """What tells one bundle folder from another; None while there is no readable manifest."""
        real = os.path.realpath(self.path)
        try:
            data = (Path(real) / MANIFEST).read_bytes()
        except OSError:
            return None
        try:
            listed = json.loads(data).get("files", {})
        except (ValueError, AttributeError):
            listed = {}
        stats = []
        for rel in sorted(listed) if isinstance(listed, dict) else []:
            try:
                st = os.stat(Path(real) / rel)
                stats.append((rel, st.st_size, st.st_mtime_ns))
            except OSError:
                stats.append((rel, None, None))
        return real, hashlib.sha256(data).hexdigest(), tuple(stats)

    def request_reload(self) -> None:
        """Reopen the bundle before the next batch even if it looks unchanged (SIGHUP)."""
        self._requested.set()

    def current(self):
        """The predictor for the next batch: the new bundle's when it was replaced and is valid."""
        requested = self._requested.is_set()
        self._requested.clear()
        ident = self.identity()
        if ident is None:
            if not self._gone:
                self.log(f"warning: bundle folder {self.path} is missing or has no {MANIFEST}; "
                         f"still scoring with {self.predictor.bundle.bundle_id}")
                self._gone = True
            return self.predictor
        self._gone = False
        if ident != self._seen or requested:
            self._seen = ident
            self._reload("SIGHUP" if requested else "bundle folder replaced")
        return self.predictor

    def _reload(self, why: str) -> None:
        old = self.predictor.bundle.bundle_id
        self.log(f"{why}: opening {self.path} ({os.path.realpath(self.path)})")
        try:
            new = self.open_predictor(self.path)
            self.validate(new)
        except Exception as e:  # noqa: BLE001 - a bad bundle must never stop the line
            self.refused += 1
            self.log(f"warning: new bundle at {self.path} refused ({e or type(e).__name__}); "
                     f"still scoring with {old}")
            return
        self.predictor = new
        self.reloads += 1
        self.log(f"bundle reloaded: {old} -> {new.bundle.bundle_id}")

    def switch_to(self, path: str | Path, before_use: Callable[[], None] | None = None, follow: str | Path | None = None):
        """Serve the bundle at ``path`` from the next batch on (``serve``'s switch). It is opened and
        validated first: a bundle that fails raises (ValueError or BundleError, the reason) and the
        old predictor stays. ``before_use`` runs once the new one passed (e.g. flipping a symlink);
        if it raises, nothing changes. From then on the folder ``follow`` (default ``path``) is the
        one watched for replacement. Returns the new predictor."""
        new = self.open_predictor(Path(path))
        self.validate(new)
        if before_use is not None:
            before_use()
        old = self.predictor.bundle.bundle_id
        self.predictor = new
        self.path = Path(follow if follow is not None else path)
        self._seen = self.identity()
        self.reloads += 1
        self.log(f"bundle switched: {old} -> {new.bundle.bundle_id}")
        return new

    def validate(self, predictor) -> None:
        """Refuse a bundle that opens but cannot do the job: no threshold where verdicts are
        needed, or a blank image that does not score to a finite number."""
        if self.require_threshold and predictor.threshold is None:
            raise ValueError("it has no threshold, and verdicts are needed here")
        h, w = predictor.input_size
        score = predictor.predict([np.zeros((h, w, 3), np.uint8)]).image_scores
        if not np.all(np.isfinite(score)):
            raise ValueError(f"a blank test image scored {score.tolist()}")


@contextlib.contextmanager
def reload_on_sighup(source: BundleSource | None) -> Iterator[None]:
    """SIGHUP asks ``source`` to reopen its bundle before the next batch (POSIX, main thread)."""
    if source is None or not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGHUP, lambda signum, frame: source.request_reload())
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, old)
