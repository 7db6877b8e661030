"""What every result sink is, and the URL handling they share.

A sink is opened once at start (``open``: connect and check what can be checked, so a bad URL,
wrong credentials or a mapping naming a node that does not exist stop the command with exit 2
before any image is taken), then ``send`` is called with one record at a time from its sender
thread, and ``close`` at the end. A sink that cannot deliver at run time raises
:class:`SinkDown`: the delivery keeps the record and tries again later.
"""

from __future__ import annotations

import os
from typing import Any, Protocol
from urllib.parse import SplitResult, parse_qs, urlsplit

from ...errors import UsageError


class SinkError(UsageError):
    """A ``--publish`` URL, its credentials or its mapping that cannot work (exit 2, at start)."""


class SinkDown(Exception):
    """The sink cannot take a record now (broker, PLC or database away); it is tried again."""


class Sink(Protocol):
    url: str  # the URL as logs show it (password redacted)

    def open(self) -> None:
        """Connect and validate; SinkError for what will never work. A server that is merely
        away may be left to the sender (``send`` raises SinkDown until it is back)."""

    def send(self, record: dict[str, Any], record_id: str) -> None:
        """Deliver one record with ``record_id`` as its message id; SinkDown when it could not."""

    def close(self) -> None: ...


def redact(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``: what logs and errors print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("@")[-1] if "@" in url else url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return parts._replace(netloc=netloc).geturl()


def split(url: str, *, need_host: bool = True, default_port: int | None = None,
          fragment: bool = False, role: str = "--publish") -> SplitResult:
    """Parse ``url``; SinkError with one line for what is malformed (no host, a bad port, a
    ``#fragment`` where none is taken)."""
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise SinkError(f"{role} {shown}: malformed URL ({e})") from None
    if "#" in url and not fragment:
        raise SinkError(f"{role} {shown}: unexpected '#{parts.fragment}' (no fragment here; MQTT wildcards "
                        "are not allowed in a prefix either)")
    if need_host and not parts.hostname:
        raise SinkError(f"{role} {shown}: no host (e.g. {parts.scheme}://127.0.0.1"
                        f"{f':{default_port}' if default_port else ''}/...)")
    if port is None and need_host and default_port is None:
        raise SinkError(f"{role} {shown}: no port")
    return parts


def query(parts: SplitResult, url: str, allowed: set[str], role: str = "--publish") -> dict[str, str]:
    """The URL's query as a dict; SinkError naming an unknown or repeated key."""
    q = parse_qs(parts.query, keep_blank_values=True)
    for k, v in q.items():
        if k not in allowed:
            raise SinkError(f"{role} {redact(url)}: unknown parameter {k!r}"
                            + (f" (known: {', '.join(sorted(allowed))})" if allowed else ""))
        if len(v) > 1:
            raise SinkError(f"{role} {redact(url)}: parameter {k!r} given twice")
    return {k: v[0] for k, v in q.items()}


def credentials(parts: SplitResult, env_prefix: str) -> tuple[str | None, str | None]:
    """User and password: ``$<prefix>_USERNAME`` / ``$<prefix>_PASSWORD`` first, then the URL's."""
    user = os.environ.get(f"{env_prefix}_USERNAME") or parts.username
    password = os.environ.get(f"{env_prefix}_PASSWORD") or parts.password
    return user, password


def need(module: str, extra: str, url: str):
    """Import ``module`` for a sink, or SinkError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SinkError(f"--publish {redact(url)}: needs {module.split('.')[0]} "
                        f"(pip install 'patchcore-rt[{extra}]')") from None


def int_option(q: dict[str, str], key: str, default: int, lo: int, hi: int, url: str) -> int:
    """``q[key]`` as an integer in ``lo..hi`` (``default`` when absent); SinkError (exit 2) otherwise."""
    raw = q.get(key)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        v = lo - 1
    if not lo <= v <= hi:
        raise SinkError(f"--publish {redact(url)}: {key} must be an integer {lo}..{hi}, got {raw!r}")
    return v


def release(handle: Any) -> None:
    """Close ``handle`` (a sink's client, connection or database) when it holds one. Returns None, so
    a sink lets go with ``self.conn = release(self.conn)`` and reconnects on its next send."""
    if handle is not None:
        handle.close()
    return None
