"""``postgresql://user@host:port/database``: the results table in a PostgreSQL server (psycopg 3),
for plants that keep results centrally. The same table as the SQLite sink, created if missing;
the record id is the primary key, so a repeat is dropped. The password comes from
``$PATCHCORE_RT_PG_PASSWORD`` or libpq's own ``$PGPASSWORD`` / ``~/.pgpass`` (or the URL, never
printed); TLS as libpq does it (``?sslmode=verify-full&sslrootcert=...``). ``?table=NAME`` names
the table (default ``results``).
"""

from __future__ import annotations

import os
import re
from typing import Any

from .base import SinkDown, SinkError, need, redact, release, split
from .rows import row

ENV_PASSWORD = "PATCHCORE_RT_PG_PASSWORD"
CONNECT_TIMEOUT_S = 5


class PostgresSink:
    def __init__(self, url: str, raw: str, table: str, conninfo: str):
        self.url, self.raw, self.table, self.conninfo = url, raw, table, conninfo
        self.conn = None

    def _connect(self):
        psycopg = need("psycopg", "line", self.raw)
        kw: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S}
        if os.environ.get(ENV_PASSWORD):
            kw["password"] = os.environ[ENV_PASSWORD]
        return psycopg.connect(self.conninfo, **kw)

    def open(self) -> None:
        psycopg = need("psycopg", "line", self.raw)
        try:
            self.conn = self._connect()
        except psycopg.OperationalError as e:
            msg = " ".join(str(e).split())
            if any(w in msg for w in ("authentication", "password", "does not exist", "SSL", "certificate")):
                raise SinkError(f"--publish {self.url}: {msg}") from None
            self.conn = None  # not reachable now: the sender connects when it can
            return
        self._create()

    def _create(self) -> None:
        t = self.table
        with self.conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, time TIMESTAMPTZ, verdict TEXT, "
                        "score DOUBLE PRECISION, normalised DOUBLE PRECISION, part TEXT, bundle TEXT, "
                        "record JSONB NOT NULL)")
            cur.execute(f"CREATE INDEX IF NOT EXISTS {t}_time ON {t} (time)")
            cur.execute(f"CREATE INDEX IF NOT EXISTS {t}_verdict ON {t} (verdict, time)")

    def send(self, record: dict[str, Any], record_id: str) -> None:
        psycopg = need("psycopg", "line", self.raw)
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self._connect()
                self._create()
            with self.conn.cursor() as cur:
                cur.execute(f"INSERT INTO {self.table} VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (id) DO NOTHING",
                            row(record, record_id))
        except psycopg.OperationalError as e:
            self.conn = release(self.conn)
            raise SinkDown(" ".join(str(e).split())) from None

    def close(self) -> None:
        self.conn = release(self.conn)


def make(url: str) -> PostgresSink:
    parts = split(url, default_port=5432)
    shown = redact(url)
    if not parts.path.strip("/"):
        raise SinkError(f"--publish {shown}: no database (postgresql://user@host:5432/DATABASE)")
    params = dict(p.split("=", 1) if "=" in p else (p, "") for p in parts.query.split("&") if p)
    table = params.pop("table", "results")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", table):
        raise SinkError(f"--publish {shown}: table {table!r} is not a plain SQL name")
    conninfo = parts._replace(query="&".join(f"{k}={v}" for k, v in params.items())).geturl()
    return PostgresSink(shown, url, table, conninfo)
