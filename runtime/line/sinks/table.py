"""The one table of result sinks, keyed by URL scheme: ``--publish``, ``info``, the docs and the
tests read it. Adding a kind is one module (with a ``make(url) -> Sink``) and one row here.

A sink module is imported only when a URL of its scheme is given, so the runtime imports without
paho-mqtt, asyncua, pymodbus or psycopg (the ``[line]`` extra).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from .base import Sink, SinkError, redact


@dataclass(frozen=True)
class SinkKind:
    scheme: str  # the URL scheme that selects it
    module: str  # module under runtime.line.sinks with make(url) -> Sink
    needs: str  # the Python package it imports ("" for the standard library)
    what: str  # one line for info and the docs
    example: str  # a copy-paste URL


SINKS: tuple[SinkKind, ...] = (
    SinkKind("sqlite", "sqlite_sink", "", "results table in an SQLite file (WAL; indexed by time and verdict)",
             "sqlite:///var/lib/patchcore/results.db"),
    SinkKind("postgresql", "postgres_sink", "psycopg", "the same results table in a PostgreSQL database",
             "postgresql://inspect@db.plant:5432/quality"),
    SinkKind("mqtt", "mqtt_sink", "paho-mqtt", "QoS 1 on PREFIX/result, retained PREFIX/status with a last will",
             "mqtt://broker.plant:1883/line1"),
    SinkKind("mqtts", "mqtt_sink", "paho-mqtt", "as mqtt, over TLS (ca=, cert=, key=; password_file= or "
             "password_env=)", "mqtts://broker.plant:8883/line1"),
    SinkKind("modbus", "modbus_sink", "pymodbus", "a PLC's coils (OK, NG) and holding registers (score, verdict, "
             "counter)", "modbus://192.168.0.10:502?unit=1"),
    SinkKind("opc.tcp", "opcua_sink", "asyncua", "OPC UA: the runtime's own server (?serve, an OPC 40100 style "
             "result model) or a PLC's nodes (?map=nodes.json); security=sign|encrypt with cert=, key= and a "
             "login", "opc.tcp://0.0.0.0:4840?serve"),
)

SCHEMES = {k.scheme: k for k in SINKS}


def kind_of(url: str) -> SinkKind:
    """The table row for ``url``'s scheme; SinkError with a suggestion for an unknown one."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise SinkError(f"--publish {redact(url)}: not a URL; give SCHEME://... with SCHEME one of "
                        f"{', '.join(SCHEMES)}")
    kind = SCHEMES.get(scheme.lower())
    if kind is None:
        close = difflib.get_close_matches(scheme.lower(), list(SCHEMES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}://?" if close else f"; known: {', '.join(SCHEMES)}"
        raise SinkError(f"--publish {redact(url)}: unknown scheme {scheme!r}{hint}")
    return kind


def make_sink(url: str) -> Sink:
    """The sink for ``url``, parsed and checked (not yet opened)."""
    kind = kind_of(url)
    return importlib.import_module(f"{__package__}.{kind.module}").make(url)


def describe() -> list[dict[str, str]]:
    """The table for ``info`` and the docs."""
    return [{"scheme": k.scheme, "needs": k.needs or "(standard library)", "what": k.what, "example": k.example}
            for k in SINKS]
