"""The PLC trigger transports for ``camera --trigger URL``, keyed by URL scheme: a
:class:`~runtime.plugins.PluginTable` like the sinks' table, so adding one is a module with
``make(url)`` and a row here. The handshake loop itself is one, in :mod:`runtime.line.trigger`; a transport only says whether the trigger is up and moves
values:

* ``raised() -> bool``: the PLC asks for a part;
* ``begin() -> TriggerEvent``: lower "result ready"; the part id and product the PLC gave (or None);
* ``finish(record)``: write the result, raise "result ready", clear the trigger;
* ``open()`` / ``close()``: connect (SinkError, exit 2, for what will never work) and let go.

A transport module is imported only for its scheme (asyncua, pymodbus, paho-mqtt are optional).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...plugins import Plugin, PluginTable
from ..sinks.base import SinkError, redact


@dataclass(frozen=True)
class TriggerEvent:
    """What the PLC handed over with one trigger."""
    part_id: str | None = None  # the part id (OPC UA part_in, Modbus part_in registers, MQTT payload)
    product: str | None = None  # the product (OPC UA product_in, Modbus product_in register, MQTT payload)


def _row(scheme: str, module: str, needs: str, what: str, example: str) -> Plugin:
    """A transport: ``module`` (of this package) makes it with ``make(url)``."""
    return Plugin(scheme, f"{__package__}.{module}", "make", what, needs, example)


TRIGGERS: PluginTable[Plugin] = PluginTable("--trigger scheme", (
    _row("opc.tcp", "opcua", "asyncua", "a boolean node of the PLC; result nodes from a mapping file",
         "opc.tcp://plc:4840?map=nodes.json#ns=3;s=Cell.Trigger"),
    _row("modbus", "modbus", "pymodbus", "a coil; the result in coils and holding registers as --publish "
         "modbus:// writes them", "modbus://plc:502?unit=1&trigger=2&ready=3"),
    _row("mqtt", "mqtt", "paho-mqtt", "a message on PREFIX/trigger; PREFIX/result and PREFIX/ready back",
         "mqtt://broker:1883/cell1"),
    _row("mqtts", "mqtt", "paho-mqtt", "as mqtt, over TLS", "mqtts://broker:8883/cell1?ca=ca.pem"),
), error=SinkError)


def make_trigger(url: str):
    """The trigger for ``url`` (parsed and checked, not yet connected); SinkError (exit 2) otherwise,
    naming a copy-paste URL of each kind."""
    kind = TRIGGERS.find(url.partition("://")[0].lower())
    if kind is None or "://" not in url:
        raise SinkError(f"--trigger {redact(url)}: give opc.tcp://...?map=nodes.json#<trigger node>, "
                        f"modbus://plc:502?trigger=COIL or mqtt(s)://broker/PREFIX (kinds: {', '.join(TRIGGERS.keys())})")
    return kind.make(url)


class TriggerBase:
    """Context manager support for a transport (``open`` on enter, ``close`` on exit)."""

    url: str

    def open(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
