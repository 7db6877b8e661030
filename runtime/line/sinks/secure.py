"""Credentials and encryption options the line protocols share (MQTT and OPC UA; sinks and triggers).

* The user name is the URL's (``mqtts://line@broker:8883/cell``) or ``$<PREFIX>_USERNAME``.
* The password, first found: ``?password_file=PATH`` (the file's first line), ``?password_env=NAME``
  (that environment variable), ``$<PREFIX>_PASSWORD``, the URL's ``user:password@`` (discouraged:
  it shows in the process list; it is never printed, see :func:`.base.redact`).
* A password is refused over an unencrypted connection (``mqtt://``, OPC UA without ``security=``):
  one line, exit 2, unless ``?allow_plaintext=1`` says the network is trusted (an isolated cell).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import SplitResult

from .base import SinkError

CREDENTIAL_KEYS = {"password_file", "password_env", "allow_plaintext"}


def flag(q: dict[str, str], key: str, shown: str) -> bool:
    """A 0/1 option (absent: False)."""
    raw = q.get(key)
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes", ""):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise SinkError(f"{shown}: {key} takes 1 or 0, got {raw!r}")


def file_option(q: dict[str, str], key: str, shown: str) -> Path | None:
    """A ``?key=PATH`` that must name a readable file (SinkError naming it otherwise)."""
    raw = q.get(key)
    if raw is None:
        return None
    p = Path(raw).expanduser()
    if not raw or not p.exists():
        raise SinkError(f"{shown}: {key}={raw}: no such file")
    if not os.access(p, os.R_OK):
        raise SinkError(f"{shown}: {key}={raw}: not readable")
    return p


def login(parts: SplitResult, q: dict[str, str], env_prefix: str, shown: str) -> tuple[str | None, str | None]:
    """(user, password) from the URL, its options and the environment (see the module's doc)."""
    user = os.environ.get(f"{env_prefix}_USERNAME") or parts.username
    pw_file = file_option(q, "password_file", shown)
    if pw_file is not None:
        try:
            lines = pw_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise SinkError(f"{shown}: password_file={pw_file}: cannot read it ({type(e).__name__})") from None
        if not lines or not lines[0]:
            raise SinkError(f"{shown}: password_file={pw_file} is empty (the password is its first line)")
        password = lines[0]
    elif "password_env" in q:
        name = q["password_env"]
        if not name or name not in os.environ:
            raise SinkError(f"{shown}: password_env={name}: that environment variable is not set")
        password = os.environ[name]
    else:
        password = os.environ.get(f"{env_prefix}_PASSWORD") or parts.password
    if password is not None and not user:
        raise SinkError(f"{shown}: a password without a user name (give it as SCHEME://USER@host... "
                        f"or ${env_prefix}_USERNAME)")
    return user, password


def refuse_plaintext(q: dict[str, str], shown: str, password: str | None, encrypted: bool, fix: str) -> None:
    """SinkError when ``password`` would cross the network in clear, unless ``?allow_plaintext=1``."""
    allowed = flag(q, "allow_plaintext", shown)
    if password is not None and not encrypted and not allowed:
        raise SinkError(f"{shown}: refusing to send a password unencrypted; {fix}, or add allow_plaintext=1 "
                        "on a trusted, isolated network")
