"""The PLC's side of the trigger handshake, per transport, for the tests and
benchmarks/trigger_latency.py: set the part id and product, raise the trigger, wait until
"result ready" is seen with the trigger cleared, and read the result back."""

from __future__ import annotations

import json
import threading
import time


class ModbusSide:
    """A PLC program on Modbus: trigger coil 2, ready coil 3, part id in holding registers 10-11,
    product in 12; the result where ``--publish modbus://`` writes it (coils 0-1, registers 0-3)."""

    url_query = "unit=1&trigger=2&ready=3&part_in=10&product_in=12"

    def __init__(self, port: int):
        from pymodbus.client import ModbusTcpClient

        self.c = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert self.c.connect()

    def part(self, number: int, product: int, timeout: float = 60.0) -> dict:
        c = self.c
        c.write_registers(10, [(number >> 16) & 0xFFFF, number & 0xFFFF, product], device_id=1)
        t0 = time.perf_counter()
        c.write_coil(2, True, device_id=1)
        end = time.monotonic() + timeout
        while True:
            trig, ready = c.read_coils(2, count=2, device_id=1).bits[:2]
            if ready and not trig:
                break
            assert time.monotonic() < end, "no result ready"
            time.sleep(0.001)
        ms = 1000 * (time.perf_counter() - t0)
        hr = c.read_holding_registers(0, count=4, device_id=1).registers
        ok, ng = c.read_coils(0, count=2, device_id=1).bits[:2]
        return {"ms": ms, "score_x1000": hr[0], "verdict_code": hr[1], "counter": (hr[2] << 16) | hr[3],
                "ok": ok, "ng": ng}

    def close(self) -> None:
        self.c.close()


class MqttSide:
    """A PLC (or edge gateway) on MQTT: publishes PREFIX/trigger, waits for PREFIX/ready ``1``."""

    def __init__(self, port: int, prefix: str, tls=None):
        import paho.mqtt.client as mqtt

        self.prefix, self.msgs, self.cond = prefix, [], threading.Condition()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-plc", protocol=mqtt.MQTTv311)
        if tls:
            c.tls_set(ca_certs=str(tls[0]), certfile=tls[1] and str(tls[1]), keyfile=tls[2] and str(tls[2]))
        def on_connect(cl, ud, fl, rc, pr=None):
            import socket

            cl.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the runtime does
            cl.subscribe([(f"{prefix}/ready", 1), (f"{prefix}/result", 1),
                         (f"{prefix}/status", 1)])

        c.on_connect = on_connect
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.c = c
        time.sleep(0.3)

    def _on_message(self, cl, ud, m) -> None:
        with self.cond:
            self.msgs.append((time.perf_counter(), m.topic.rsplit("/", 1)[-1], m.payload, bool(m.retain)))
            self.cond.notify_all()

    def wait_online(self, timeout: float = 60.0) -> None:
        """Until the runtime says ``online`` (its trigger subscription is in place)."""
        end = time.monotonic() + timeout
        with self.cond:
            while not any(topic == "status" and p == b"online" for _, topic, p, _ in self.msgs):
                assert self.cond.wait(max(0.0, end - time.monotonic())), "the runtime never came online"

    def part(self, part_id: str, product: str, timeout: float = 60.0) -> dict:
        with self.cond:
            n = len(self.msgs)
        t0 = time.perf_counter()
        self.c.publish(f"{self.prefix}/trigger", json.dumps({"part_id": part_id, "product": product}), qos=1)
        end = time.monotonic() + timeout
        with self.cond:
            while not any(topic == "ready" and p == b"1" for _, topic, p, _ in self.msgs[n:]):
                assert self.cond.wait(max(0.0, end - time.monotonic())), "no result ready"
            t1 = next(t for t, topic, p, _ in self.msgs[n:] if topic == "ready" and p == b"1")
            results = [json.loads(p) for _, topic, p, _ in self.msgs[n:] if topic == "result"]
        return {"ms": 1000 * (t1 - t0), "results": results}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
