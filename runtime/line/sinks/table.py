"""The one table of result sinks, keyed by URL scheme (a :class:`~runtime.plugins.PluginTable`, the
shape every plug-in table of the runtime has): ``--publish``, ``info``, the docs and the tests read
it. Adding a kind is one module (with a ``make(url) -> Sink``) and one row here.

A sink module is imported only when a URL of its scheme is given, so the runtime imports without
paho-mqtt, asyncua, pymodbus or psycopg (the ``[line]`` extra).
"""

from __future__ import annotations

import difflib

from ...plugins import Plugin, PluginTable
from .base import Sink, SinkError, redact


def _row(scheme: str, module: str, needs: str, what: str, example: str) -> Plugin:
    """A sink: ``module`` (of this package) makes it with ``make(url)``; ``needs`` is the Python package
    it imports ("" for the standard library)."""
    return Plugin(scheme, f"{__package__}.{module}", "make", what, needs, example)


SINKS: PluginTable[Plugin] = PluginTable("--publish scheme", (
    _row("sqlite", "sqlite_sink", "", "results table in an SQLite file (WAL; indexed by time and verdict)",
         "sqlite:///var/lib/patchcore/results.db"),
    _row("postgresql", "postgres_sink", "psycopg", "the same results table in a PostgreSQL database",
         "postgresql://inspect@db.plant:5432/quality"),
    _row("mqtt", "mqtt_sink", "paho-mqtt", "QoS 1 on PREFIX/result, retained PREFIX/status with a last will",
         "mqtt://broker.plant:1883/line1"),
    _row("mqtts", "mqtt_sink", "paho-mqtt", "as mqtt, over TLS (ca=, cert=, key=; password_file= or "
         "password_env=)", "mqtts://broker.plant:8883/line1"),
    _row("modbus", "modbus_sink", "pymodbus", "a PLC's coils (OK, NG) and holding registers (score, verdict, "
         "counter)", "modbus://192.168.0.10:502?unit=1"),
    _row("opc.tcp", "opcua_sink", "asyncua", "OPC UA: the runtime's own server (?serve, an OPC 40100 style "
         "result model) or a PLC's nodes (?map=nodes.json); security=sign|encrypt with cert=, key= and a "
         "login", "opc.tcp://0.0.0.0:4840?serve"),
), error=SinkError)


def kind_of(url: str) -> Plugin:
    """The table row for ``url``'s scheme; SinkError with a suggestion for an unknown one (in the
    words of ``--publish``: the URL redacted, the scheme suggested with its ``://``)."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise SinkError(f"--publish {redact(url)}: not a URL; give SCHEME://... with SCHEME one of "
                        f"{', '.join(SINKS.keys())}")
    kind = SINKS.find(scheme.lower())
    if kind is None:
        close = difflib.get_close_matches(scheme.lower(), list(SINKS.keys()), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}://?" if close else f"; known: {', '.join(SINKS.keys())}"
        raise SinkError(f"--publish {redact(url)}: unknown scheme {scheme!r}{hint}")
    return kind


def make_sink(url: str) -> Sink:
    """The sink for ``url``, parsed and checked (not yet opened)."""
    return kind_of(url).make(url)


def describe() -> list[dict[str, str]]:
    """The table for ``info`` and the docs."""
    return SINKS.describe(key_name="scheme", no_needs="(standard library)")
