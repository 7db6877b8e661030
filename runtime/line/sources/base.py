"""What every frame source is: one interface (open, configure, read frames with their timestamps and
ids, trigger, close) that :mod:`runtime.line.camera` drives, whatever delivers the pixels."""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ...errors import UsageError


class SourceError(UsageError):
    """A camera source that cannot be opened, configured or read (exit code 2)."""


@dataclass
class Frame:
    index: int  # position in the source (counts dropped and skipped frames)
    bgr: np.ndarray | None  # None for a frame that arrived broken (see ``error``)
    captured: _dt.datetime
    captured_mono: float
    pos_ms: float | None = None
    camera: dict[str, Any] | None = None  # the camera's own frame id and timestamp (industrial cameras)
    error: str | None = None  # why this frame cannot be scored (an incomplete transfer): an error record


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def stamp_frame(index: int, bgr: np.ndarray | None, **kw) -> Frame:
    return Frame(index, bgr, now(), time.monotonic(), **kw)


class FrameSource:
    """One camera, stream or file. ``read()`` follows ``cv2.VideoCapture``: ``(False, None)`` at the
    end, ``(True, image)`` for a frame the reader numbers itself, ``(True, Frame)`` for a frame the
    source numbered and timestamped, ``(True, None)`` when nothing came yet (call again).

    ``live`` sources are read by a thread that keeps only the newest frame; the others (files) are
    read in order. ``settings`` (a camera settings file's contents) are applied by ``open`` and read
    back into ``camera`` (recorded in every record); sources without settings refuse them.
    """

    kind = "?"
    live = True
    fps: float | None = None
    missed = 0  # frames the camera sent (or was triggered for) that never arrived; None-counting sources keep 0
    counts_missed = False

    def __init__(self, url: str, settings: dict[str, Any] | None = None, log: Callable[[str], None] | None = None):
        self.url = url
        self.settings = settings
        self.log = log or (lambda msg: None)
        self.camera: dict[str, Any] = {}  # settings read back from the device after open

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> tuple[bool, Any]:
        raise NotImplementedError

    def grab(self) -> bool:
        """Skip one frame (files read with a stride)."""
        return self.read()[0]

    def trigger(self) -> None:
        """Fire one software trigger: the camera exposes one frame now."""
        raise SourceError(f"{self.kind} source {self.url!r} has no software trigger")

    def close(self) -> None:
        raise NotImplementedError
