"""``mqtt://broker:1883/PREFIX`` (``mqtts://`` for TLS): the trigger as an MQTT message (paho-mqtt).

* The PLC (or an edge gateway) publishes to ``PREFIX/trigger``: the part id as text (``1`` or any
  text), or JSON ``{"part_id": "P-17", "product": "cap-red"}``. Each message is one part; an empty
  payload is ignored (it is how a retained trigger is cleared). Triggers are taken once the
  runtime says ``online`` on ``PREFIX/status`` (retained; ``offline`` as its last will).
* The runtime publishes ``PREFIX/ready`` ``0`` (retained) when it takes the trigger, the result
  on ``PREFIX/result`` (QoS 1, the JSON record, as ``--publish mqtt://`` does), then
  ``PREFIX/ready`` ``1`` (retained). A retained trigger is cleared (an empty retained message).
* Credentials, TLS and the plaintext-password refusal as for ``--publish mqtt(s)://``
  (:mod:`runtime.line.sinks.mqtt_sink`): ``ca=``, ``cert=``, ``key=``, ``password_file=``,
  ``password_env=``, ``allow_plaintext=1``, ``client_id=``.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from typing import Any

from ..sinks.base import SinkError, query, redact, split
from ..sinks.mqtt_sink import (ACK_WAIT_S, CONNECT_WAIT_S, TLS_KEYS, check_tls, config, new_client,
                               no_delay, refused)
from ..sinks.secure import CREDENTIAL_KEYS
from . import TriggerBase, TriggerEvent


def event_of(payload: bytes) -> TriggerEvent:
    """The part id and product of one trigger message (text, or a JSON object)."""
    text = payload.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
        except ValueError:
            d = None
        if isinstance(d, dict):
            pick = (lambda k: None if d.get(k) in (None, "") else str(d[k]))
            return TriggerEvent(pick("part_id"), pick("product"))
    return TriggerEvent(text or None, None)


class MqttTrigger(TriggerBase):
    def __init__(self, url: str):
        parts = split(url, default_port=1883, role="--trigger")
        q = query(parts, url, {"client_id"} | CREDENTIAL_KEYS | TLS_KEYS, role="--trigger")
        self.cfg = config(url, q, f"--trigger {redact(url)}")
        self.url = self.cfg.url
        self.shown = f"--trigger {self.url}"
        self.client_id = q.get("client_id") or f"patchcore-rt-trigger-{os.getpid()}"
        self.client = None
        self.triggers: queue.Queue = queue.Queue()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._retained = False

    def _topic(self, leaf: str) -> str:
        return f"{self.cfg.prefix}/{leaf}" if self.cfg.prefix else leaf

    def open(self) -> None:
        if self.cfg.tls:
            check_tls(self.cfg, self.shown)
        c = new_client(self.cfg, self.client_id, self.shown)
        c.will_set(self._topic("status"), "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self._connected.clear()
        c.on_message = lambda cl, ud, m: m.payload and self.triggers.put((m.payload, bool(m.retain)))
        self.client, self._refused = c, None
        try:
            c.connect_async(self.cfg.host, self.cfg.port, keepalive=15)
        except (OSError, ValueError) as e:
            raise SinkError(f"{self.shown}: {e}") from None
        c.loop_start()
        self._connected.wait(CONNECT_WAIT_S)
        if self._refused or not self._connected.is_set():
            why = f"the broker refused the connection ({self._refused})" if self._refused else \
                f"cannot connect to the broker at {self.cfg.host}:{self.cfg.port}"
            self.close()
            raise SinkError(f"{self.shown}: {why}")

    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        if reason.is_failure:
            if refused(reason):
                self._refused = str(reason)
                self._connected.set()
                client.disconnect()
            return
        no_delay(client)
        client.subscribe(self._topic("trigger"), qos=1)
        client.publish(self._topic("status"), "online", qos=1, retain=True)
        self._connected.set()

    def raised(self) -> bool:
        if self.client is None:
            raise ConnectionError("not connected")
        return not self.triggers.empty()

    def _publish(self, leaf: str, body: str, retain: bool = False) -> None:
        info = self.client.publish(self._topic(leaf), body, qos=1, retain=retain)
        info.wait_for_publish(ACK_WAIT_S)
        if not info.is_published():
            raise ConnectionError(f"no acknowledgement from the broker for {leaf} in {ACK_WAIT_S:.0f} s")

    def begin(self) -> TriggerEvent:
        payload, self._retained = self.triggers.get_nowait()
        self.client.publish(self._topic("ready"), "0", qos=1, retain=True)
        return event_of(payload)

    def finish(self, record: dict[str, Any]) -> None:
        self._publish("result", json.dumps(record, separators=(",", ":")))
        self._publish("ready", "1", retain=True)
        if self._retained:
            self.client.publish(self._topic("trigger"), b"", qos=1, retain=True)

    def close(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            if self._connected.is_set() and not self._refused:
                c.publish(self._topic("status"), "offline", qos=1, retain=True).wait_for_publish(2.0)
            c.disconnect()
            c.loop_stop()
        self._connected.clear()


def make(url: str) -> MqttTrigger:
    return MqttTrigger(url)
