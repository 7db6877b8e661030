"""``mqtt://host:port/prefix`` (``mqtts://`` for TLS): results to an MQTT broker (paho-mqtt).

* Each result is published with QoS 1 on ``prefix/result`` as the JSON record, whose ``id`` is
  the record id (a consumer drops a repeat by it; MQTT 3.1.1, so no user properties).
  ``send`` returns once the broker has acknowledged it (PUBACK).
* ``prefix/status`` is retained: ``online`` once connected, and the broker publishes the last
  will ``offline`` when the runtime dies without saying goodbye (``offline`` too on a clean stop).
* paho reconnects by itself with a growing delay (1 s to 30 s); while the broker is away
  ``send`` raises SinkDown and the results wait in the outbox.
* Credentials as in :mod:`.secure`: the URL's user (``mqtts://line@broker:8883/cell``) and
  ``?password_file=PATH`` or ``?password_env=NAME`` (or ``$PATCHCORE_RT_MQTT_USERNAME`` /
  ``$PATCHCORE_RT_MQTT_PASSWORD``, or the URL's ``user:password@``, never printed). A password over
  ``mqtt://`` (no TLS) is refused at start unless ``?allow_plaintext=1``.
* TLS (``mqtts://``): the broker's certificate is checked against the system's CAs, or
  ``?ca=PATH`` (``$PATCHCORE_RT_MQTT_CA``); ``?cert=PATH&key=PATH`` (``$PATCHCORE_RT_MQTT_CERT`` /
  ``_KEY``) is a client certificate for brokers that require one. Wrong credentials, a missing
  file or a TLS failure at start: exit 2. A broker that is not reachable at start is waited for
  (results buffer), as it would be later.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from typing import Any

from dataclasses import dataclass
from pathlib import Path

from .base import SinkDown, SinkError, need, query, redact, split
from .secure import CREDENTIAL_KEYS, file_option, login, refuse_plaintext

ENV = "PATCHCORE_RT_MQTT"
CONNECT_WAIT_S = 5.0
ACK_WAIT_S = 5.0


TLS_KEYS = {"ca", "cert", "key"}


@dataclass(frozen=True)
class MqttConfig:
    """Where and how to connect, from an ``mqtt(s)://`` URL (shared with the MQTT trigger)."""
    url: str  # redacted
    raw: str
    host: str
    port: int
    prefix: str
    tls: bool
    user: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


def config(url: str, q: dict[str, str], shown: str) -> MqttConfig:
    """Parse and check the connection part of an MQTT URL whose query ``q`` was read already."""
    tls = url.lower().startswith("mqtts://")
    parts = split(url, default_port=8883 if tls else 1883)
    prefix = parts.path.strip("/")
    if any(ch in prefix for ch in "+#"):
        raise SinkError(f"{shown}: the topic prefix may not contain MQTT wildcards (+ #)")
    user, password = login(parts, q, ENV, shown)
    refuse_plaintext(q, shown, password, tls, "use mqtts:// (TLS)")
    files = {}
    for k in ("ca", "cert", "key"):
        env = os.environ.get(f"{ENV}_{k.upper()}")
        files[k] = file_option(q if k in q else {k: env} if env else {}, k, shown)
        if files[k] is not None and not tls:
            raise SinkError(f"{shown}: {k}= is for TLS: use mqtts://")
    if (files["cert"] is None) != (files["key"] is None):
        raise SinkError(f"{shown}: a client certificate needs both cert=PATH and key=PATH")
    return MqttConfig(redact(url), url, parts.hostname, parts.port or (8883 if tls else 1883), prefix, tls, user,
                      password, files["ca"], files["cert"], files["key"])


def new_client(cfg: MqttConfig, client_id: str, shown: str):
    """A paho client (MQTT 3.1.1) with the credentials and TLS of ``cfg``; not yet connected."""
    mqtt = need("paho.mqtt.client", "line", cfg.raw)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    if cfg.user:
        c.username_pw_set(cfg.user, cfg.password)
    if cfg.tls:
        try:
            c.tls_set(ca_certs=str(cfg.ca) if cfg.ca else None, certfile=str(cfg.cert) if cfg.cert else None,
                      keyfile=str(cfg.key) if cfg.key else None, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise SinkError(f"{shown}: TLS setup failed ({e})") from None
    return c


def check_tls(cfg: MqttConfig, shown: str) -> None:
    """One TLS handshake with the broker now, so a certificate it does not trust (or one we do not)
    is exit 2 at start rather than endless reconnects; a broker that is not there is waited for."""
    import socket

    ctx = ssl.create_default_context(cafile=str(cfg.ca) if cfg.ca else None)
    try:
        if cfg.cert:
            ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    except (OSError, ssl.SSLError) as e:
        raise SinkError(f"{shown}: cert=/key= cannot be loaded ({e})") from None
    try:
        with socket.create_connection((cfg.host, cfg.port), timeout=CONNECT_WAIT_S) as raw:
            with ctx.wrap_socket(raw, server_hostname=cfg.host) as tls:
                if cfg.cert is None:  # TLS 1.3: a broker that wants a client certificate says so after the handshake
                    tls.settimeout(0.3)
                    try:
                        tls.recv(1)
                    except (socket.timeout, TimeoutError):
                        pass
    except ssl.SSLCertVerificationError as e:
        raise SinkError(f"{shown}: the broker's certificate is not trusted ({e.verify_message}); give its CA "
                        "as ca=PATH") from None
    except ssl.SSLError as e:
        raise SinkError(f"{shown}: TLS handshake with the broker failed ({e.reason or e})") from None
    except OSError:
        pass  # not reachable now: waited for like any broker that is away


def no_delay(client) -> None:
    """TCP_NODELAY on the broker connection: without it a QoS 1 publish right after another one waits
    for the TCP acknowledgement of the first (Nagle's algorithm against the broker's delayed ACKs: a stall per message)."""
    import socket

    sock = client.socket()
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def refused(reason) -> bool:
    """A CONNACK that will not change by retrying (bad credentials, not authorised)."""
    return str(reason).lower().replace(" ", "") in ("notauthorized", "badusernameorpassword")


class MqttSink:
    def __init__(self, cfg: MqttConfig, client_id: str | None):
        self.cfg, self.url, self.raw, self.host, self.port = cfg, cfg.url, cfg.raw, cfg.host, cfg.port
        self.prefix, self.tls = cfg.prefix, cfg.tls
        self.client_id = client_id or f"patchcore-rt-{os.getpid()}"
        self.client = None
        self._connected = threading.Event()
        self._refused: str | None = None

    def open(self) -> None:
        if self.tls:
            check_tls(self.cfg, f"--publish {self.url}")
        c = new_client(self.cfg, self.client_id, f"--publish {self.url}")
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
            if refused(reason):
                self._refused = str(reason)
                self._connected.set()  # wake open(), which fails
                client.disconnect()
            return
        no_delay(client)
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
    parts = split(url, default_port=1883)
    q = query(parts, url, {"client_id"} | CREDENTIAL_KEYS | TLS_KEYS)
    return MqttSink(config(url, q, f"--publish {redact(url)}"), q.get("client_id"))
