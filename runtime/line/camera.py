"""Score frames from a camera, a video file or a stream, at the rate the model sustains.

Sources come from the frame-source table (:mod:`runtime.line.sources`): anything
``cv2.VideoCapture`` opens (a device index ``0``, a video file, a URL ``rtsp://``, ``http://``...)
and industrial GigE Vision / USB3 Vision cameras (``genicam://``) with their settings file.

* **Live sources** (device index, URL) are read by a grabber thread that keeps only the newest
  frame: when the model is slower than the camera, the frames in between are *dropped* (and
  counted in each record's ``dropped``), so results never fall behind the line.
* **Video files** are read sequentially and, by default, every frame is scored (``stride`` k
  scores every k-th frame; the skipped ones are not "dropped"). ``realtime`` treats a file like a
  live camera instead: it is read at its own frame rate and frames are dropped as for a camera.

One JSON record per scored frame (``source``, ``frame`` index, ``time`` of capture, ``pos_ms``
for files, ``score``, ``normalised``, ``verdict``, ``latency_ms``, ``lag_ms`` from capture to
result, ``dropped`` so far, ``bundle``; for industrial cameras a ``camera`` block: the settings read
back from the camera, its frame id and timestamp, frames ``missed`` so far). A frame the camera
delivered broken is an error record (``error``, no score). Frames judged anomalous are saved to the output folder
as ``frame-<index>-<UTC timestamp>.png`` with a ``...-overlay.png`` beside them. Every frame's map is exact
at and above the pixel threshold (its record and regions); only a frame saved with an overlay has its map
settled down to the overlay's floor (:func:`~runtime.line.records.drawn_outcome`). A replaced bundle
folder or SIGHUP switches bundles between batches (:mod:`runtime.line.reload`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2

from ..errors import OutputError, UsageError
from .outputs import encode_png, outcome_overlay, write_new
from .products import score_by_product
from .records import Item, drawn_outcome, evidence_fields, score_items, scored_fields
from .run_options import RunOptions
from .sources import Frame, FrameSource, SourceError, open_source
from .sources.base import stamp_frame


class LatestFrameGrabber:
    """Reads ``cap`` (a :class:`FrameSource` or anything with ``read()`` like ``cv2.VideoCapture``)
    in a thread as fast as it delivers (or at ``pace_fps``) and keeps only the newest frame; a
    frame replaced before anyone took it counts as dropped."""

    def __init__(self, cap, pace_fps: float | None = None):
        self.cap = cap
        self.pace_fps = pace_fps
        self.dropped = 0
        self.grabbed = 0
        self.ended = False
        self._latest: Frame | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="frame-grabber", daemon=True)

    def start(self) -> "LatestFrameGrabber":
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        index = 0
        try:
            while not self._stop:
                if self.pace_fps:
                    delay = t0 + index / self.pace_fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                ok, got = self.cap.read()
                if not ok:
                    break
                if got is None:  # nothing yet (an industrial camera waiting for its trigger)
                    continue
                frame = got if isinstance(got, Frame) else stamp_frame(index, got)
                with self._cond:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame
                    self.grabbed += 1
                    self._cond.notify_all()
                index += 1
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet taken; None when the source ended (or on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self.ended or self._stop, timeout)
            frame, self._latest = self._latest, None
            return frame

    def stop(self) -> bool:
        """Stop reading; True when the thread has ended (only then may the capture be released)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        return not self._thread.is_alive()


def sequential_frames(cap, stride: int = 1, fps: float | None = None) -> Iterator[Frame]:
    """Every ``stride``-th frame of a file, in order, none dropped."""
    index = 0
    while True:
        if index % stride == 0:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return
            pos = 1000.0 * index / fps if fps else None
            yield stamp_frame(index, bgr, pos_ms=pos)
        elif not cap.grab():
            return
        index += 1


@dataclass
class CameraOptions:
    source: str
    out: Path
    max_frames: int | None = None
    stride: int = 1
    realtime: bool = False
    batch: int = 4  # frames per model call for files read sequentially (live sources use 1)
    save_overlays: bool = True
    settings: dict[str, Any] | None = None  # an industrial camera's settings file (runtime.line.sources.settings)
    fire_every: float | None = None  # seconds between software triggers the runtime fires

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise UsageError("--stride must be >= 1")
        if self.batch < 1:
            raise UsageError("--batch-size must be >= 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise UsageError("--max-frames must be >= 1")
        if self.fire_every is not None and self.fire_every <= 0:
            raise UsageError("--fire-trigger-every must be > 0 seconds")


@dataclass
class CameraSummary:
    processed: int = 0
    dropped: int = 0
    saved: list[int] = field(default_factory=list)  # frame indices saved as anomalous
    live: bool = False
    missed: int | None = None  # frames an industrial camera sent (or was triggered for) that never arrived
    errors: int = 0  # frames that arrived broken (error records)


class CameraRunner:
    def __init__(self, predictor, options: CameraOptions, emit: Callable[[dict[str, Any]], None] | None = None,
                 status=None, stop: threading.Event | None = None, source=None, products=None,
                 run: RunOptions = RunOptions()):
        if predictor.threshold is None:
            raise UsageError("camera needs verdicts to save anomalous frames, but this bundle has no threshold")
        self.predictor = predictor
        self.source = source  # a BundleSource: hot reload between batches (runtime.line.reload)
        self.opt = options
        self.run_options = run  # the rule judged per bundle
        self.emit = emit or (lambda r: None)
        self.status = status
        self.stop = stop or threading.Event()
        self.summary = CameraSummary()
        self.cam: FrameSource | None = None  # the open source, for a trigger to fire (trigger())
        # Several bundles (runtime.line.products): ``product`` names the product of the next part
        # scored. ``--product`` sets it at start; a PLC trigger with a ``product_in`` value sets it per
        # part (set_product) before the frame is taken. An unknown product gives an error record.
        self.products = products
        self.product: str | None = None

    def set_product(self, name: str | None) -> None:
        """The product of the next triggered part (the trigger's ``product_in``; None keeps the last)."""
        if name is not None:
            self.product = str(name).strip() or None

    def run(self) -> CameraSummary:
        """Score until the source ends, ``max_frames`` or a stop request. A source that delivers
        no frame at all is a SourceError (exit 2), not a run that scored nothing."""
        log = self.status.log if self.status else None
        cap = self.cam = open_source(self.opt.source, self.opt.settings, log)
        fps = cap.fps
        if self.opt.fire_every is not None and not getattr(cap, "triggered", False):
            cap.close()
            raise UsageError("--fire-trigger-every needs a camera set to trigger_mode On, trigger_source Software "
                             "(--settings)")
        try:
            self.opt.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            cap.close()
            raise OutputError(f"--out {self.opt.out}: cannot create the folder ({e.strerror or e})") from None
        release = True
        try:
            if cap.live or self.opt.realtime:
                self.summary.live = True
                release = self._run_live(cap, fps if self.opt.realtime else None)
            else:
                self._run_file(cap, fps)
        finally:
            if cap.counts_missed:
                self.summary.missed = cap.missed
            if release:  # never under a grabber thread still blocked in read(); exit frees it
                cap.close()
        if self.summary.processed == 0 and not self.stop.is_set():
            raise SourceError(f"camera source {self.opt.source!r} delivered no frame (empty or unreadable video, "
                              "or a camera that sends nothing)")
        return self.summary

    def _remaining(self) -> int | None:
        return None if self.opt.max_frames is None else self.opt.max_frames - self.summary.processed

    def trigger(self) -> None:
        """Fire the camera's software trigger now (one frame per call; see docs/cameras.md)."""
        if self.cam is not None:
            self.cam.trigger()

    def _fire_triggers(self) -> None:
        while not self.stop.wait(self.opt.fire_every):
            self.trigger()

    def _run_live(self, cap, pace_fps: float | None) -> bool:
        """Score the newest frames of a grabber thread; True when that thread ended (the capture may go)."""
        grabber = LatestFrameGrabber(cap, pace_fps).start()
        try:
            self._score_live(grabber)
        finally:
            ended = grabber.stop()
            self.summary.dropped = grabber.dropped
        return ended

    def _score_live(self, grabber: LatestFrameGrabber) -> None:
        """Each newest frame as it comes (a PLC trigger's runner scores one per trigger instead)."""
        if self.opt.fire_every is not None:
            threading.Thread(target=self._fire_triggers, name="software-trigger", daemon=True).start()
        while not self.stop.is_set() and self._remaining() != 0:
            frame = grabber.get(timeout=0.5)
            if frame is None:
                if grabber.ended:
                    break
                continue
            self._score([frame], lambda: grabber.dropped)

    def _run_file(self, cap, fps: float | None) -> None:
        frames = sequential_frames(cap, self.opt.stride, fps)
        while not self.stop.is_set():
            n = self.opt.batch if self._remaining() is None else min(self.opt.batch, self._remaining())
            chunk = [f for _, f in zip(range(n), frames)]
            if not chunk:
                break
            self._score(chunk, lambda: 0)
            if self._remaining() == 0:
                break

    def _record(self, f: Frame) -> dict[str, Any]:
        rec: dict[str, Any] = {"source": self.opt.source, "frame": f.index,
                               "time": f.captured.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        if f.pos_ms is not None:
            rec["pos_ms"] = round(f.pos_ms, 3)
        if f.camera is not None:
            rec["camera"] = {**self.cam.camera, **f.camera, "missed": self.cam.missed}
        return rec

    def _score(self, frames: list[Frame], dropped: Callable[[], int]) -> None:
        for f in [f for f in frames if f.error]:  # arrived broken: an error record, never a score
            self.summary.errors += 1
            self.emit({**self._record(f), "error": f.error, "dropped": dropped()})
        frames = [f for f in frames if not f.error]
        if not frames:
            return
        items = [Item(f"{self.opt.source}#{f.index}", image=cv2.cvtColor(f.bgr, cv2.COLOR_BGR2RGB)) for f in frames]
        run = self.run_options
        if self.products is not None:
            outcomes, preds, _ = score_by_product(self.products, items, lambda it: self.product, run)
        else:
            if self.source is not None:
                self.predictor = self.source.current()
            outcomes = score_items(self.predictor, items, run.limits, run.judge(self.predictor))
            preds = [self.predictor] * len(outcomes)
        for f, o, p in zip(frames, outcomes, preds):
            stamp = f.captured.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
            rec = self._record(f)
            rec.update(scored_fields(o))
            rec.update({"lag_ms": round(1000.0 * (time.monotonic() - f.captured_mono), 3),
                        "dropped": dropped(), "bundle": p.bundle.bundle_id if p else None,
                        "precision": p.precision if p else None})
            if self.products is not None and self.products.named:
                rec["product"] = self.product
            rec.update(evidence_fields(o))
            if o.verdict == "ng":
                base = self.opt.out / f"frame-{f.index:06d}-{stamp}.png"
                try:
                    rec["saved"] = str(write_new(base, encode_png(f.bgr)))
                    if self.opt.save_overlays and o.map is not None:
                        # the map exact down to the overlay's floor: settled for the frames drawn only
                        shown = drawn_outcome(p, o, run.limits, run.judge(p))
                        ov = outcome_overlay(o.item.image, shown, p, run.judge(p))
                        rec["overlay"] = str(write_new(base.with_name(base.stem + "-overlay.png"), encode_png(ov)))
                except OSError as e:
                    raise OutputError(f"--out {self.opt.out}: cannot save frame {f.index} ({e.strerror or e})") from None
                self.summary.saved.append(f.index)
            self.summary.processed += 1
            self.emit(rec)
        if self.status:
            self.status.extra = f"dropped {dropped()}" if self.summary.live else ""
            self.status.batch(outcomes, 0)
