"""``modbus://plc:502?unit=1&trigger=C&ready=D``: the trigger on a PLC's coil (Modbus TCP, pymodbus).

Addresses are zero-based, as for ``--publish modbus://``, whose layout the result keeps:

==========================  =====================================================================
coil ``trigger``            the PLC sets it to ask for a part (default ``coil + 2``); the runtime
                            clears it once the result is written
coil ``ready``              result ready (default ``coil + 3``): lowered when the trigger is
                            seen, raised after the result
coils ``coil``, ``coil+1``  OK, NG (default ``coil=0``)
registers ``register`` ..   score x 1000, verdict code, result counter (32 bits, high word first)
``register+3``              (default ``register=0``)
holding registers           optional ``part_in=R``: the part id as a 32-bit number (high word in
``part_in``, ``+1``         ``R``), set by the PLC before the trigger
holding register            optional ``product_in=R``: the product number
``product_in``
==========================  =====================================================================

Modbus has no security: run it on an isolated cell network only (docs/line-systems.md).
"""

from __future__ import annotations

from typing import Any

from ..sinks.base import SinkError, int_option, need, query, redact, split
from ..sinks.modbus_sink import TIMEOUT_S, registers
from . import TriggerBase, TriggerEvent


class ModbusTrigger(TriggerBase):
    def __init__(self, url: str):
        self.raw, self.url = url, redact(url)
        parts = split(url, default_port=502, role="--trigger")
        q = query(parts, url, {"unit", "coil", "register", "trigger", "ready", "part_in", "product_in"},
                  role="--trigger")
        if parts.path.strip("/") or parts.fragment:
            raise SinkError(f"--trigger {self.url}: no path here (modbus://plc:502?unit=1&trigger=2&ready=3)")
        self.host, self.port = parts.hostname, parts.port or 502
        self.unit = int_option(q, "unit", 1, 0, 255, url)
        self.coil = int_option(q, "coil", 0, 0, 65533, url)
        self.register = int_option(q, "register", 0, 0, 65531, url)
        self.trigger_coil = int_option(q, "trigger", self.coil + 2, 0, 65535, url)
        self.ready_coil = int_option(q, "ready", self.coil + 3, 0, 65535, url)
        self.part_in = int_option(q, "part_in", -1, 0, 65534, url) if "part_in" in q else None
        self.product_in = int_option(q, "product_in", -1, 0, 65535, url) if "product_in" in q else None
        used = [self.coil, self.coil + 1, self.trigger_coil, self.ready_coil]
        if len(set(used)) < 4:
            raise SinkError(f"--trigger {self.url}: the OK/NG coils ({self.coil}, {self.coil + 1}), trigger "
                            f"({self.trigger_coil}) and ready ({self.ready_coil}) must be four different coils")
        self.client = None
        self.counter = 0

    def _ok(self, r, what: str):
        if r.isError():
            raise SinkError(f"--trigger {self.url}: the PLC refuses {what} for unit {self.unit} ({r})")
        return r

    def open(self) -> None:
        need("pymodbus", "line", self.raw)
        from pymodbus.client import ModbusTcpClient
        from pymodbus.exceptions import ModbusException

        self.client = ModbusTcpClient(self.host, port=self.port, timeout=TIMEOUT_S, retries=0,
                                      reconnect_delay=0, reconnect_delay_max=0)
        if not self.client.connect():
            self.close()
            raise SinkError(f"--trigger {self.url}: cannot connect to the PLC at {self.host}:{self.port}")
        try:
            for c in (self.coil, self.trigger_coil, self.ready_coil):
                self._ok(self.client.read_coils(c, count=2 if c == self.coil else 1, device_id=self.unit), f"coil {c}")
            hr = self._ok(self.client.read_holding_registers(self.register, count=4, device_id=self.unit),
                          f"holding registers at {self.register}")
            for r, n in ((self.part_in, 2), (self.product_in, 1)):
                if r is not None:
                    self._ok(self.client.read_holding_registers(r, count=n, device_id=self.unit),
                             f"holding register {r}")
        except ModbusException as e:
            self.close()
            raise SinkError(f"--trigger {self.url}: unit {self.unit} does not answer ({e})") from None
        except SinkError:
            self.close()
            raise
        self.counter = (hr.registers[2] << 16) | hr.registers[3]

    def _check(self, r):
        if r.isError():
            raise ConnectionError(str(r))
        return r

    def raised(self) -> bool:
        if self.client is None:
            raise ConnectionError("not connected")
        return bool(self._check(self.client.read_coils(self.trigger_coil, count=1, device_id=self.unit)).bits[0])

    def begin(self) -> TriggerEvent:
        c = self.client
        self._check(c.write_coil(self.ready_coil, False, device_id=self.unit))
        part = product = None
        if self.part_in is not None:
            hi, lo = self._check(c.read_holding_registers(self.part_in, count=2, device_id=self.unit)).registers
            part = str((hi << 16) | lo)
        if self.product_in is not None:
            r = self._check(c.read_holding_registers(self.product_in, count=1, device_id=self.unit))
            product = str(r.registers[0])
        return TriggerEvent(part, product)

    def finish(self, record: dict[str, Any]) -> None:
        c, counter = self.client, (self.counter + 1) & 0xFFFFFFFF
        verdict = record.get("verdict")
        self._check(c.write_registers(self.register, registers(record, counter), device_id=self.unit))
        self._check(c.write_coils(self.coil, [verdict == "ok", verdict == "ng"], device_id=self.unit))
        self.counter = counter
        self._check(c.write_coil(self.ready_coil, True, device_id=self.unit))
        self._check(c.write_coil(self.trigger_coil, False, device_id=self.unit))

    def close(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            c.close()


def make(url: str) -> ModbusTrigger:
    return ModbusTrigger(url)
