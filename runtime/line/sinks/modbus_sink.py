"""``modbus://host:port?unit=N``: a simple PLC over Modbus TCP (pymodbus).

What is written, for each result (addresses are the PLC's, zero-based; ``?coil=A`` and
``?register=R`` move the blocks, default 0):

==========================  =====================================================================
coil ``A``                  OK: the part passed
coil ``A+1``                NG: the part is defective (both off: no verdict, an error record)
holding register ``R``      normalised score x 1000 (500 = the threshold), clipped to 0..65535
holding register ``R+1``    verdict code: 0 none, 1 ok, 2 ng, 3 error
holding registers ``R+2``   result counter, 32 bits, high word first (in ``R+2``): goes up by one
and ``R+3``                 per result, continued from the PLC's value after a restart
==========================  =====================================================================

The registers are written before the coils, so a PLC that reacts to a coil reads the score of the
same result; a PLC that polls watches the counter. Addresses the PLC does not have, or a unit id
it does not answer, are exit 2 at start; a PLC that is not reachable at start is waited for.
"""

from __future__ import annotations

from typing import Any

from .base import SinkDown, SinkError, int_option, need, query, redact, release, split

VERDICT_CODE = {None: 0, "ok": 1, "ng": 2, "error": 3}
TIMEOUT_S = 2.0


def registers(record: dict[str, Any], counter: int) -> list[int]:
    """The four holding registers of one result."""
    n = record.get("normalised")
    score = 0 if n is None else max(0, min(65535, round(float(n) * 1000)))
    return [score, VERDICT_CODE.get(record.get("verdict"), 3), (counter >> 16) & 0xFFFF, counter & 0xFFFF]


class ModbusSink:
    def __init__(self, url: str, raw: str, host: str, port: int, unit: int, coil: int, register: int):
        self.url, self.raw, self.host, self.port = url, raw, host, port
        self.unit, self.coil, self.register = unit, coil, register
        self.client = None
        self.counter: int | None = None  # read from the PLC on the first connection

    def open(self) -> None:
        need("pymodbus", "line", self.raw)
        from pymodbus.client import ModbusTcpClient

        self.client = ModbusTcpClient(self.host, port=self.port, timeout=TIMEOUT_S, retries=0,
                                      reconnect_delay=0, reconnect_delay_max=0)
        if self.client.connect():
            self._check()

    def _check(self) -> None:
        """Read the blocks once: addresses that do not exist, or a unit that does not answer, are SinkError."""
        from pymodbus.exceptions import ModbusException

        try:
            co = self.client.read_coils(self.coil, count=2, device_id=self.unit)
            hr = self.client.read_holding_registers(self.register, count=4, device_id=self.unit)
        except ModbusException as e:
            raise SinkError(f"--publish {self.url}: unit {self.unit} does not answer ({e})") from None
        for what, r in (("coils", co), ("holding registers", hr)):
            if r.isError():
                raise SinkError(f"--publish {self.url}: the PLC refuses {what} at {self.coil if what == 'coils' else self.register}"
                                f" for unit {self.unit} ({r})")
        self.counter = (hr.registers[2] << 16) | hr.registers[3]

    def send(self, record: dict[str, Any], record_id: str) -> None:
        from pymodbus.exceptions import ModbusException

        try:
            if not self.client.connected and not self.client.connect():
                raise SinkDown(f"cannot connect to {self.host}:{self.port}")
            if self.counter is None:
                self._check()
            counter = (self.counter + 1) & 0xFFFFFFFF
            verdict = record.get("verdict")
            r = self.client.write_registers(self.register, registers(record, counter), device_id=self.unit)
            if r.isError():
                raise SinkDown(f"the PLC refused the registers ({r})")
            r = self.client.write_coils(self.coil, [verdict == "ok", verdict == "ng"], device_id=self.unit)
            if r.isError():
                raise SinkDown(f"the PLC refused the coils ({r})")
            self.counter = counter
        except (ModbusException, OSError) as e:
            self.client.close()
            raise SinkDown(str(e)) from None
        except SinkError as e:  # the PLC came back with another layout: keep trying, say why
            raise SinkDown(str(e)) from None

    def close(self) -> None:
        self.client = release(self.client)


def make(url: str) -> ModbusSink:
    parts = split(url, default_port=502)
    q = query(parts, url, {"unit", "coil", "register"})
    if parts.path.strip("/"):
        raise SinkError(f"--publish {redact(url)}: no path here (modbus://host:502?unit=1&coil=0&register=0)")
    return ModbusSink(redact(url), url, parts.hostname, parts.port or 502, int_option(q, "unit", 1, 0, 255, url),
                      int_option(q, "coil", 0, 0, 65533, url), int_option(q, "register", 0, 0, 65531, url))
