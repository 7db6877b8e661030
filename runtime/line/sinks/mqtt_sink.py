"""``mqtt://host:port/prefix`` (``mqtts://`` for TLS): results to an MQTT broker (paho-mqtt).

* Each result is published with QoS 1 on ``prefix/result`` as the JSON record, whose ``id`` is
  the record id (a consumer drops a repeat by it; MQTT 3.1.1, so no user properties).
  ``send`` returns once the broker has acknowledged it (PUBACK).
* ``prefix/status`` is retained: ``online`` once connected, and the broker publishes the last
  will ``offline`` when the runtime dies without saying goodbye (``offline`` too on a clean stop).
* paho reconnects by itself with a growing delay (1 s to 30 s); while the broker is away
  ``send`` raises SinkDown and the results wait in the outbox.
* Credentials: ``$PATCHCORE_RT_MQTT_USERNAME`` / ``$PATCHCORE_RT_MQTT_PASSWORD`` (or the URL's
  ``user:password@``, never printed). TLS (``mqtts://``): the system's CAs, or
  ``$PATCHCORE_RT_MQTT_CA`` (a CA file), with ``$PATCHCORE_RT_MQTT_CERT`` / ``$PATCHCORE_RT_MQTT_KEY``
  for a client certificate. Wrong credentials or a TLS failure at start: exit 2. A broker that
  is not reachable at start is waited for (results buffer), as it would be later.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from typing import Any

from .base import SinkDown, SinkError, credentials, need, query, redact, split

ENV = "PATCHCORE_RT_MQTT"
CONNECT_WAIT_S = 5.0
ACK_WAIT_S = 5.0


class MqttSink:
    def __init__(self, url: str, raw: str, host: str, port: int, prefix: str, tls: bool, client_id: str | None):
        self.url, self.raw, self.host, self.port, self.prefix, self.tls = url, raw, host, port, prefix, tls
        self.client_id = client_id or f"patchcore-rt-{os.getpid()}"
        self.client = None
        self._connected = threading.Event()
        self._refused: str | None = None

    def open(self) -> None:
        mqtt = need("paho.mqtt.client", "line", self.raw)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311)
        user, password = credentials(split(self.raw), ENV)
        if user:
            c.username_pw_set(user, password)
        if self.tls:
            try:
                c.tls_set(ca_certs=os.environ.get(f"{ENV}_CA") or None, certfile=os.environ.get(f"{ENV}_CERT") or None,
                          keyfile=os.environ.get(f"{ENV}_KEY") or None, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise SinkError(f"--publish {self.url}: TLS setup failed ({e})") from None
        c.will_set(self._topic("status"), "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self._connected.clear()
        self.client = c
        try:
            c.connect_async(self.host, self.port, keepalive=15)
        except (OSError, ValueError) as e:
            raise SinkError(f"--publish {self.url}: {e}") from None
        c.loop_start()
        self._connected.wait(CONNECT_WAIT_S)
        if self._refused:
            self.close()
            raise SinkError(f"--publish {self.url}: the broker refused the connection ({self._refused}); check "
                            f"${ENV}_USERNAME / ${ENV}_PASSWORD")

    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        if reason.is_failure:
            if str(reason).lower().replace(" ", "") in ("notauthorized", "badusernameorpassword"):
                self._refused = str(reason)
                self._connected.set()  # wake open(), which fails
                client.disconnect()
            return
        client.publish(self._topic("status"), "online", qos=1, retain=True)
        self._connected.set()

    def _topic(self, leaf: str) -> str:
        return f"{self.prefix}/{leaf}" if self.prefix else leaf

    def send(self, record: dict[str, Any], record_id: str) -> None:
        if not self._connected.is_set() or self._refused:
            raise SinkDown("not connected to the broker")
        body = json.dumps({**record, "id": record_id}, separators=(",", ":"))
        info = self.client.publish(self._topic("result"), body, qos=1)
        if info.rc != 0:
            raise SinkDown(f"publish failed (rc {info.rc})")
        try:
            info.wait_for_publish(ACK_WAIT_S)
        except (RuntimeError, ValueError) as e:
            raise SinkDown(f"publish failed ({e})") from None
        if not info.is_published():
            raise SinkDown(f"no acknowledgement from the broker in {ACK_WAIT_S:.0f} s")

    def close(self) -> None:
        c, self.client = self.client, None
        if c is None:
            return
        if self._connected.is_set() and not self._refused:
            c.publish(self._topic("status"), "offline", qos=1, retain=True).wait_for_publish(2.0)
        c.disconnect()
        c.loop_stop()


def make(url: str) -> MqttSink:
    tls = url.lower().startswith("mqtts://")
    parts = split(url, default_port=8883 if tls else 1883)
    q = query(parts, url, {"client_id"})
    prefix = parts.path.strip("/")
    if any(ch in prefix for ch in "+#"):
        raise SinkError(f"--publish {redact(url)}: the topic prefix may not contain MQTT wildcards (+ #)")
    return MqttSink(redact(url), url, parts.hostname, parts.port or (8883 if tls else 1883), prefix, tls,
                    q.get("client_id"))
