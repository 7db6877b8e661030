"""Anything ``cv2.VideoCapture`` opens: a device index (``0``), a video file, or a stream URL
(``rtsp://``, ``http://``...). Device indices and URLs are live; files are read in order."""

from __future__ import annotations

from pathlib import Path

import cv2

from .base import FrameSource, SourceError


def parse_source(source: str) -> tuple[int | str, bool]:
    """``"0"`` -> (0, live); a URL -> (url, live); anything else -> (file path, not live)."""
    s = source.strip()
    if s.isdigit():
        return int(s), True
    if "://" in s:
        return s, True
    if not Path(s).exists():
        raise SourceError(f"camera source not found: {s} (give a device index, a video file or an rtsp:// URL)")
    return s, False


def open_capture(source: int | str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open camera source {source!r} with OpenCV")
    return cap


class OpenCVSource(FrameSource):
    kind = "opencv"

    def __init__(self, url, settings=None, log=None):
        super().__init__(url, settings, log)
        if settings is not None:
            raise SourceError(f"--settings applies to industrial cameras (genicam://...), not to {url!r}")
        self.src, self.live = parse_source(url)
        self.cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        self.cap = open_capture(self.src)
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or None

    def read(self):
        return self.cap.read()

    def grab(self) -> bool:
        return self.cap.grab()

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
