"""The PLC trigger handshake for ``camera --trigger URL``: score a part when the PLC asks.

The usual handshake of a vision sensor on a PLC:

1. the PLC raises the **trigger** (a boolean node, or a coil);
2. the runtime lowers **result ready**, takes the newest frame from the camera, scores it, writes
   the result into the PLC (the same values as the ``--publish`` sinks write), raises **result
   ready**, and clears the trigger;
3. the PLC reads the result once it sees "result ready", and raises the trigger for the next part.

The time from seeing the trigger to raising "result ready" is each record's ``trigger_ms``; the
command ends with its median and 95th percentile. Frames between triggers are not scored (they
count in ``dropped``).

The transports (one table, :mod:`runtime.line.triggers`; this loop is the same for all):

* OPC UA: ``opc.tcp://plc:4840?map=nodes.json#<trigger node id>``; the mapping file names the
  result nodes as for ``--publish`` plus ``ready`` (required), ``part_in`` and ``product_in``
  (optional: values the PLC sets before the trigger);
* Modbus TCP: ``modbus://plc:502?unit=1&trigger=2&ready=3`` (coils; ``part_in=`` / ``product_in=``
  holding registers);
* MQTT: ``mqtt(s)://broker/PREFIX``: a message on ``PREFIX/trigger`` (text part id or JSON with
  ``part_id`` and ``product``), ``PREFIX/result`` and a retained ``PREFIX/ready`` back.

The part id the PLC gives becomes the record's ``part_id``, its product the record's ``product``
(and ``self.event``, the :class:`TriggerEvent` of the part being scored); a camera runner with
several products (``set_product``) is told the product before the frame is taken.

A trigger that cannot be set up (PLC not reachable, a node that does not exist, a malformed URL)
is exit 2 at start, before any frame is taken. A PLC that goes away at run time is logged and the
trigger is watched again once it is back.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from .camera import CameraRunner, LatestFrameGrabber
from .sinks.base import SinkError
from .triggers import TriggerEvent

POLL_S = 0.002  # how often the trigger is read
RETRY_S = 1.0  # after the PLC went away


class TriggeredCamera(CameraRunner):
    """A camera runner that scores the newest frame each time the PLC raises the trigger."""

    def __init__(self, *args, trigger=None, log: Callable[[str], None] = print, **kw):
        super().__init__(*args, **kw)
        self.live = True  # a file is read as a live camera (newest frame), paced with --realtime
        self.trigger, self.log = trigger, log
        self.round_trips_ms: list[float] = []
        self._emit, self.emit = self.emit, self._handshake
        self._t0 = 0.0
        self.event = TriggerEvent()

    def _handshake(self, rec: dict[str, Any]) -> None:
        import uuid

        rec.setdefault("id", uuid.uuid4().hex)
        if self.event.part_id:
            rec["part_id"] = self.event.part_id
        if self.event.product is not None:
            rec.setdefault("product", self.event.product)
        try:
            self.trigger.finish(rec)
        except Exception as e:  # noqa: BLE001 - the PLC went away mid-handshake: the record still goes out
            self.log(f"--trigger {self.trigger.url}: result not handed to the PLC ({type(e).__name__}: {e})")
            rec["trigger_error"] = str(e) or type(e).__name__
        else:
            rt = 1000.0 * (time.monotonic() - self._t0)
            rec["trigger_ms"] = round(rt, 3)
            self.round_trips_ms.append(rt)
        self._emit(rec)

    def _score_live(self, grabber: LatestFrameGrabber) -> None:
        down = False
        while not self.stop.is_set() and self._remaining() != 0 and not grabber.ended:
            try:
                if not self.trigger.raised():
                    self.stop.wait(POLL_S)
                    continue
                self._t0 = time.monotonic()
                self.event = self.trigger.begin()
                if self.event.product is not None and hasattr(self, "set_product"):
                    self.set_product(self.event.product)  # several products per process (camera.py)
                if down:
                    self.log(f"--trigger {self.trigger.url}: back")
                    down = False
            except Exception as e:  # noqa: BLE001 - the PLC went away: say so once, retry
                if not down:
                    self.log(f"--trigger {self.trigger.url}: PLC not reachable ({type(e).__name__}); retrying")
                    down = True
                self.trigger.close()
                self.stop.wait(RETRY_S)
                self._reconnect()
                continue
            frame = None
            while frame is None and not grabber.ended and not self.stop.is_set():
                frame = grabber.get(timeout=0.5)
            if frame is None:
                break
            self._score([frame], lambda: grabber.dropped)

    def _reconnect(self) -> None:
        try:
            self.trigger.open()
        except SinkError:
            pass

    def round_trip_text(self) -> str:
        r = self.round_trips_ms
        if not r:
            return "no trigger"
        p95 = sorted(r)[max(0, round(0.95 * len(r)) - 1)]
        return f"{len(r)} triggers, round trip median {statistics.median(r):.1f} ms, p95 {p95:.1f} ms"
