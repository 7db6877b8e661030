"""GigE Vision and USB3 Vision cameras (GenICam) through Aravis 0.8, by GObject introspection.

``genicam://<address or id>``: an IP address opens that GigE Vision camera directly (no discovery
broadcast); a device id (``Vendor-Serial`` as ``arv-tool-0.8`` lists it, a USB3 Vision serial) is
found by Aravis' discovery; ``genicam://`` alone opens the first camera found.

The settings file (:mod:`.settings`) is applied at open, each value checked against the camera's
own range first, and read back into :attr:`GenicamSource.camera`. Faults never end the run: a camera
that stops answering is released in the background (a dead GigE Vision camera takes seconds to time
out), reconnected with backoff, and the frames it would have sent meanwhile are counted as missed; a
frame that arrives incomplete becomes an error frame, not a score.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .base import FrameSource, SourceError, stamp_frame
from .pixels import check_format, to_bgr

BUFFERS = 8  # frames Aravis may hold for us; more arrive only if we keep up (else the camera's are missed)
POP_US = 100_000  # one wait for a frame, so read() returns often enough to notice stops
PROBE_AFTER_S = 1.0  # silence after which the camera is asked whether it is still there
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # waits between reconnection attempts (the last repeats)
MAX_GAP = 1000  # larger jumps in frame ids are restarts, not losses
CLOSE_S = 3.0  # longest close() waits for a camera to stop acquisition
# What to install, in one line (PyGObject has no wheel: it builds against the -dev packages)
DEBIAN_PACKAGES = "gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config gcc"
INSTALL = (f"apt-get install {DEBIAN_PACKAGES} (Debian/Ubuntu), then pip install 'patchcore-rt[genicam]' "
           "(in a checkout: make install-genicam); docs/cameras.md")


def _aravis():
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as e:
        raise SourceError(f"genicam:// sources need PyGObject and Aravis 0.8 ({e}): {INSTALL}") from None
    return Aravis, GLib


def available() -> tuple[bool, str]:
    try:
        _aravis()
    except SourceError as e:
        return False, str(e)
    return True, ""


def _g(x: float) -> float:
    return float(f"{x:.6g}")


class Features:
    """Setting and reading GenICam features of one device, each value checked against its range."""

    def __init__(self, Aravis, GLib, cam, where: str):
        self.A, self.GLib, self.cam, self.dev, self.where = Aravis, GLib, cam, cam.get_device(), where

    def node(self, name: str):
        node = self.dev.get_feature(name)
        if node is None or not node.is_implemented() or not node.is_available():
            raise SourceError(f"{self.where}: the camera has no feature {name}")
        return node

    def has(self, name: str) -> bool:
        node = self.dev.get_feature(name)
        return node is not None and node.is_implemented() and node.is_available()

    def set(self, name: str, value: Any, label: str | None = None) -> None:
        node, A, label = self.node(name), self.A, label or name
        try:
            if isinstance(node, A.GcEnumeration):
                values = list(node.dup_available_string_values())
                if str(value) not in values:
                    raise SourceError(f"{self.where}: {label} {value!r} is not one the camera offers "
                                      f"(feature {name}: {', '.join(values)})")
                self.dev.set_string_feature_value(name, str(value))
            elif isinstance(node, A.GcBoolean):
                if not isinstance(value, bool):
                    raise SourceError(f"{self.where}: {label} must be true or false (feature {name})")
                self.dev.set_boolean_feature_value(name, value)
            elif isinstance(node, A.GcInteger) and not isinstance(node, A.GcFloat):
                lo, hi = A.GcInteger.get_min(node), A.GcInteger.get_max(node)
                if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                    raise SourceError(f"{self.where}: {label} {value!r} is out of the camera's range {lo}..{hi} "
                                      f"(feature {name}, whole numbers)")
                self.dev.set_integer_feature_value(name, value)
            elif isinstance(node, A.GcFloat):
                lo, hi = A.GcFloat.get_min(node), A.GcFloat.get_max(node)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                    raise SourceError(f"{self.where}: {label} {value!r} is out of the camera's range "
                                      f"{lo:g}..{hi:g} (feature {name})")
                self.dev.set_float_feature_value(name, float(value))
            elif isinstance(node, A.GcString):
                self.dev.set_string_feature_value(name, str(value))
            else:
                raise SourceError(f"{self.where}: feature {name} is a {type(node).__name__}, not a value to set")
        except self.GLib.Error as e:
            raise SourceError(f"{self.where}: the camera refused {label} = {value!r} (feature {name}: {e.message})") from None

    def get(self, name: str) -> Any:
        node, A, dev = self.node(name), self.A, self.dev
        if isinstance(node, A.GcEnumeration) or isinstance(node, A.GcString):
            return dev.get_string_feature_value(name)
        if isinstance(node, A.GcBoolean):
            return dev.get_boolean_feature_value(name)
        if isinstance(node, A.GcInteger) and not isinstance(node, A.GcFloat):
            return dev.get_integer_feature_value(name)
        return _g(dev.get_float_feature_value(name))

    def bounded(self, label: str, value: float, available: bool, bounds, setter, feature: str) -> None:
        """A setting Aravis names itself (its feature differs between cameras: ExposureTime or
        ExposureTimeAbs, Gain or GainRaw...)."""
        if not available:
            raise SourceError(f"{self.where}: the camera has no {label} feature ({feature})")
        lo, hi = bounds.min, bounds.max
        if not lo <= value <= hi:
            raise SourceError(f"{self.where}: {label} {value:g} is out of the camera's range {lo:g}..{hi:g} "
                              f"(feature {feature})")
        try:
            setter(float(value))
        except self.GLib.Error as e:
            raise SourceError(f"{self.where}: the camera refused {label} = {value:g} ({e.message})") from None


TRIGGER = (("trigger_mode", "TriggerMode"), ("trigger_source", "TriggerSource"),
           ("trigger_activation", "TriggerActivation"))


def configure(f: Features, settings: dict[str, Any]) -> dict[str, Any]:
    """Apply ``settings`` in the order cameras need (format and region before rates, the frame rate
    before the trigger, since Aravis turns the trigger off to set a rate) and read them back."""
    cam = f.cam
    if "pixel_format" in settings:
        check_format(settings["pixel_format"], f.where)
        f.set("PixelFormat", settings["pixel_format"], "pixel_format")
    if "region" in settings:
        r = settings["region"]
        for name in ("OffsetX", "OffsetY"):
            if f.has(name):
                f.dev.set_integer_feature_value(name, 0)
        f.set("Width", r["width"], "region width")
        f.set("Height", r["height"], "region height")
        f.set("OffsetX", r["x"], "region x")
        f.set("OffsetY", r["y"], "region y")
    if "frame_rate" in settings:
        f.bounded("frame_rate", settings["frame_rate"], cam.is_frame_rate_available(), cam.get_frame_rate_bounds(),
                  cam.set_frame_rate, "AcquisitionFrameRate")
    if "exposure_us" in settings:
        f.bounded("exposure_us", settings["exposure_us"], cam.is_exposure_time_available(),
                  cam.get_exposure_time_bounds(), cam.set_exposure_time, "ExposureTime")
    if "gain" in settings:
        f.bounded("gain", settings["gain"], cam.is_gain_available(), cam.get_gain_bounds(), cam.set_gain, "Gain")
    if any(key in settings for key, _ in TRIGGER) and f.has("TriggerSelector"):
        f.set("TriggerSelector", "FrameStart")
    for key, feature in TRIGGER:
        if key in settings:
            f.set(feature, settings[key], key)
    for name, value in settings.get("features", {}).items():
        f.set(name, value)
    return read_back(f, settings)


def read_back(f: Features, settings: dict[str, Any]) -> dict[str, Any]:
    """What the camera says it now runs with: recorded in every record's ``camera`` block."""
    cam = f.cam
    x, y, w, h = cam.get_region()
    out: dict[str, Any] = {"vendor": cam.get_vendor_name(), "model": cam.get_model_name(),
                           "serial": cam.get_device_serial_number(), "pixel_format": cam.get_pixel_format_as_string(),
                           "region": {"x": x, "y": y, "width": w, "height": h}}
    if cam.is_exposure_time_available():
        out["exposure_us"] = _g(cam.get_exposure_time())
    if cam.is_gain_available():
        out["gain"] = _g(cam.get_gain())
    if cam.is_frame_rate_available():
        out["frame_rate"] = _g(cam.get_frame_rate())
    for key, feature in TRIGGER:
        if key in settings or (key != "trigger_activation" and f.has(feature)):
            out[key] = f.get(feature)
    if settings.get("features"):
        out["features"] = {name: f.get(name) for name in settings["features"]}
    check_format(out["pixel_format"], f.where)
    return out


def id_gap(last: int, now: int) -> int:
    """Frames the camera numbered between two arrivals (none arrived). GigE Vision 1.x ids are 16 bits
    and skip 0 (1..65535, then 1); a jump of over MAX_GAP is a camera restart, not a loss."""
    delta = now - last
    if delta < 0 and last <= 0xFFFF:
        delta += 0xFFFF
    return delta - 1 if 1 <= delta <= MAX_GAP else 0


def _release(cam, stream, GLib) -> None:
    """Stop and drop a camera; on one that no longer answers this takes the device's timeouts."""
    try:
        cam.stop_acquisition()
    except GLib.Error:
        pass
    del cam, stream


class GenicamSource(FrameSource):
    kind = "genicam"
    live = True
    counts_missed = True

    def __init__(self, url, settings=None, log=None):
        super().__init__(url, settings, log)
        self.device_id = url.split("://", 1)[1].strip("/") or None
        self.where = f"genicam://{self.device_id or ''}"
        self.missed = 0
        self.index = 0
        self.state = "closed"
        self._cam = self._stream = None
        self._closing = threading.Event()
        self._lost = threading.Event()  # Aravis' control-lost signal (its heartbeat thread)
        self._lost_at = 0.0
        self._tries = 0
        self._next_try = 0.0
        self._quiet_since = 0.0  # last frame or last answer to a probe
        self._last_frame_at = 0.0
        self._last_id: int | None = None  # the last whole frame's id
        self._broken_since = 0  # incomplete frames since it
        self._fired_lost = 0  # software triggers fired while the camera was away

    @property
    def triggered(self) -> bool:
        return self.camera.get("trigger_mode") == "On"

    def open(self) -> None:
        self.Aravis, self.GLib = _aravis()
        self._connect()

    def _connect(self) -> None:
        A, GLib = self.Aravis, self.GLib
        try:
            cam = A.Camera.new(self.device_id)
        except GLib.Error as e:
            raise SourceError(f"{self.where}: no camera answers ({e.message})") from None
        try:
            self.camera = configure(Features(A, GLib, cam, self.where), self.settings or {})
            stream = cam.create_stream(None, None)
            payload = cam.get_payload()
            for _ in range(BUFFERS):
                stream.push_buffer(A.Buffer.new_allocate(payload))
            cam.start_acquisition()
        except GLib.Error as e:
            raise SourceError(f"{self.where}: cannot start acquisition ({e.message})") from None
        self._lost.clear()
        cam.get_device().connect("control-lost", lambda *_: self._lost.set())
        self._cam, self._stream = cam, stream
        self.fps = None if self.triggered else self.camera.get("frame_rate")
        self._quiet_since = self._last_frame_at = time.monotonic()
        self._last_id, self._broken_since = None, 0
        self.state = "streaming"

    # -------------------------------------------------------------------------------- frames
    def read(self):
        if self._closing.is_set():
            return False, None
        if self._cam is None:
            self._reconnect()
            return True, None
        buf = self._stream.timeout_pop_buffer(POP_US)
        if buf is None:
            if self._lost.is_set() or not self._answers():
                self._lose("the camera stopped answering")
            return True, None
        try:
            return True, self._frame(buf)
        finally:
            self._quiet_since = self._last_frame_at = time.monotonic()
            self._stream.push_buffer(buf)

    def _frame(self, buf):
        frame_id = buf.get_frame_id()
        info = {"frame_id": frame_id, "timestamp_ns": buf.get_timestamp()}
        index, self.index = self.index, self.index + 1
        status = buf.get_status()
        if status != self.Aravis.BufferStatus.SUCCESS:  # its id may be lost too: only whole frames count ids
            self._broken_since += 1
            return stamp_frame(index, None, camera=info, error=f"incomplete frame from the camera ({status.value_nick})")
        if self._last_id is not None:  # ids between two whole frames that arrived neither whole nor broken
            self.missed += max(0, id_gap(self._last_id, frame_id) - self._broken_since)
        self._last_id, self._broken_since = frame_id, 0
        try:
            bgr = to_bgr(buf.get_image_data(), self.camera["pixel_format"], buf.get_image_width(),
                         buf.get_image_height())
        except ValueError as e:
            return stamp_frame(index, None, camera=info, error=f"unreadable frame from the camera ({e})")
        return stamp_frame(index, bgr, camera=info)

    def _answers(self) -> bool:
        """After PROBE_AFTER_S without a frame: does the camera still answer a register read?"""
        if time.monotonic() - self._quiet_since < PROBE_AFTER_S:
            return True
        try:
            self._cam.get_device().read_register(0)
        except self.GLib.Error:
            return False
        self._quiet_since = time.monotonic()
        return True

    # -------------------------------------------------------------------------------- faults
    def _lose(self, why: str) -> None:
        self.state = "reconnecting"
        self.log(f"{self.where}: camera lost ({why}); reconnecting")
        cam, stream, self._cam, self._stream = self._cam, self._stream, None, None
        threading.Thread(target=_release, args=(cam, stream, self.GLib), name="camera-release", daemon=True).start()
        self._lost_at = self._last_frame_at  # frames stopped coming then, not when it was noticed
        self._tries = 0
        self._next_try = time.monotonic() + BACKOFF_S[0]

    def _reconnect(self) -> None:
        wait = self._next_try - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, POP_US / 1e6))
            return
        try:
            self._connect()
        except SourceError:
            self._tries += 1
            self._next_try = time.monotonic() + BACKOFF_S[min(self._tries, len(BACKOFF_S) - 1)]
            return
        away = time.monotonic() - self._lost_at
        missed = (max(0, round(away * self.fps) - 1) if self.fps else 0) + self._fired_lost
        self.missed += missed
        self._fired_lost = 0
        self.log(f"{self.where}: camera back after {away:.1f} s ({self._tries + 1} attempts); "
                 f"{missed} frame(s) missed")

    def trigger(self) -> None:
        """Fire the camera's software trigger (settings: trigger_mode On, trigger_source Software):
        it exposes and sends one frame. Fired while the camera is away, the frame counts as missed."""
        cam = self._cam
        if cam is None:
            self._fired_lost += 1
            return
        try:
            cam.software_trigger()
        except self.GLib.Error:
            self._fired_lost += 1

    def close(self) -> None:
        """Stop acquisition and release the camera, waiting CLOSE_S at most (a camera that stopped
        answering is left to time out in the background rather than hang the shutdown)."""
        self._closing.set()
        cam, stream, self._cam, self._stream = self._cam, self._stream, None, None
        self.state = "closed"
        if cam is not None:
            t = threading.Thread(target=_release, args=(cam, stream, self.GLib), name="camera-release", daemon=True)
            t.start()
            t.join(CLOSE_S)
