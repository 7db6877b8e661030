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

* OPC UA: ``opc.tcp://plc:4840?map=nodes.json#<trigger node id>``; the mapping file names the
  result nodes as for ``--publish`` plus ``ready`` (required) and ``part_in`` (optional: a string
  the PLC sets before the trigger, the part id of the record).

A trigger that cannot be set up (PLC not reachable, a node that does not exist, a malformed URL)
is exit 2 at start, before any frame is taken. A PLC that goes away at run time is logged and the
trigger is watched again once it is back.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

from .camera import CameraRunner, LatestFrameGrabber
from .sinks import opcua_model as model
from .sinks.base import SinkError, query, redact, split

POLL_S = 0.002  # how often the trigger is read
RETRY_S = 1.0  # after the PLC went away


class OpcUaTrigger:
    def __init__(self, url: str):
        from .sinks.opcua_sink import load_mapping

        self.raw, self.url = url, redact(url)
        parts = split(url, default_port=4840, fragment=True)
        q = query(parts, url, {"map"})
        self.trigger_node = parts.fragment
        if not self.trigger_node or not q.get("map"):
            raise SinkError(f"--trigger {self.url}: give opc.tcp://plc:4840?map=nodes.json#<trigger node id>")
        self.mapping = load_mapping(Path(q["map"]), f"--trigger {self.url}", model.KEYS + ("ready", "part_in"))
        if "ready" not in self.mapping:
            raise SinkError(f"--trigger {self.url}: the mapping file must name the \"ready\" node")
        self.client = None
        self.counter = 0

    def open(self) -> None:
        from .sinks.opcua_sink import connect_client, resolve_nodes

        shown = f"--trigger {self.url}"
        try:
            self.client = connect_client(self.raw, shown)
        except ConnectionError as e:
            raise SinkError(f"{shown}: cannot connect to the PLC ({e})") from None
        try:
            writable = {k: v for k, v in self.mapping.items() if k != "part_in"}
            self.nodes = resolve_nodes(self.client, writable, shown)
            self.trigger = resolve_nodes(self.client, {"trigger": self.trigger_node}, shown)["trigger"][0]
            self.part_in = self.client.get_node(self.mapping["part_in"]) if "part_in" in self.mapping else None
            if self.part_in is not None:
                self.part_in.read_value()
            self.ready = self.nodes.pop("ready")
            if "counter" in self.nodes:
                self.counter = int(self.nodes["counter"][0].read_value() or 0)
        except SinkError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - the part_in node
            self.close()
            raise SinkError(f"{shown}: node {self.mapping.get('part_in')} (part_in) cannot be read ({e})") from None

    def _write(self, node_type, value) -> None:
        from asyncua import ua

        node, vtype = node_type
        node.write_value(ua.DataValue(ua.Variant(model.convert(value, vtype), vtype)))

    def raised(self) -> bool:
        return bool(self.trigger.read_value())

    def begin(self) -> str | None:
        """The trigger is up: lower "result ready"; the part id the PLC gave, if mapped."""
        self._write(self.ready, False)
        return str(self.part_in.read_value()) if self.part_in is not None else None

    def finish(self, record: dict[str, Any]) -> None:
        from .sinks.opcua_sink import write_nodes

        write_nodes(self.nodes, model.values(record, str(record.get("id", "")), self.counter + 1))
        self.counter += 1
        self._write(self.ready, True)
        from asyncua import ua

        self.trigger.write_value(ua.DataValue(ua.Variant(False, ua.VariantType.Boolean)))

    def close(self) -> None:
        from .sinks.opcua_sink import close_client

        c, self.client = self.client, None
        if c is not None:
            close_client(c)

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


TRIGGERS = {"opc.tcp": OpcUaTrigger}


def make_trigger(url: str):
    """The trigger for ``url`` (parsed and checked, not yet connected); SinkError (exit 2) otherwise."""
    scheme = url.partition("://")[0].lower()
    cls = TRIGGERS.get(scheme)
    if cls is None:
        raise SinkError(f"--trigger {redact(url)}: give opc.tcp://...?map=nodes.json#<trigger node> "
                        f"(kinds: {', '.join(TRIGGERS)})")
    return cls(url)


class TriggeredCamera(CameraRunner):
    """A camera runner that scores the newest frame each time the PLC raises the trigger."""

    def __init__(self, *args, trigger=None, log: Callable[[str], None] = print, **kw):
        super().__init__(*args, **kw)
        self.live = True  # a file is read as a live camera (newest frame), paced with --realtime
        self.trigger, self.log = trigger, log
        self.round_trips_ms: list[float] = []
        self._emit, self.emit = self.emit, self._handshake
        self._t0 = 0.0
        self._part: str | None = None

    def _handshake(self, rec: dict[str, Any]) -> None:
        import uuid

        rec.setdefault("id", uuid.uuid4().hex)
        if self._part:
            rec["part_id"] = self._part
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

    def _run_live(self, cap, pace_fps: float | None) -> bool:
        grabber = LatestFrameGrabber(cap, pace_fps).start()
        down = False
        try:
            while not self.stop.is_set() and self._remaining() != 0 and not grabber.ended:
                try:
                    if not self.trigger.raised():
                        self.stop.wait(POLL_S)
                        continue
                    self._t0 = time.monotonic()
                    self._part = self.trigger.begin()
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
        finally:
            ended = grabber.stop()
            self.summary.dropped = grabber.dropped
        return ended

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
