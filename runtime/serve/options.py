"""What ``serve`` is started with, and the safety rules checked before anything listens."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..images import ImageLimits
from ..line.run_options import LineRule, RunOptions

TOKEN_ENV = "PATCHCORE_RT_TOKEN"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_MAX_BYTES = 64 << 20  # an upload's cap unless $PATCHCORE_RT_MAX_BYTES says otherwise


@dataclass
class ServeOptions:
    bundle: Path
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token for mark/teach/switch; None: those actions are off
    limits: ImageLimits = field(default_factory=lambda: ImageLimits(max_bytes=DEFAULT_MAX_BYTES))
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    models: Path | None = None  # where taught bundles are written (default: beside the bundle)
    keep_results: int = 200  # results the page and the review queue can reach by id
    watch: Path | None = None
    watch_out: Path | None = None
    watch_move: bool = False
    watch_settle: float = 1.0
    watch_poll: float = 0.25
    publish: tuple[str, ...] = ()  # --publish URLs (runtime.line.sinks)
    bundles: dict | None = None  # {product name (None: unnamed): bundle folder}; None: just ``bundle``
    load: str = "lazy"  # several products: open each bundle at its first part (lazy) or at start (eager)
    rule: LineRule = field(default_factory=LineRule)  # --min-area, --mm-per-px: judged per bundle

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise UsageError("--max-batch must be >= 1")
        if self.max_wait_ms < 0:
            raise UsageError("--max-wait-ms must be >= 0")
        if self.max_queue < 1:
            raise UsageError("--max-queue must be >= 1")
        if self.token is not None and len(self.token) < 16:
            raise UsageError(f"--token (or ${TOKEN_ENV}) must be at least 16 characters; e.g. "
                             "python -c 'import secrets; print(secrets.token_urlsafe(24))'")
        if not is_loopback(self.host) and self.token is None:
            raise UsageError(f"--host {self.host} listens beyond this machine: give --token (or ${TOKEN_ENV}) "
                             "so that only holders of the token can mark, teach and switch")

    @property
    def run_options(self) -> RunOptions:
        """What scoring a part needs: the image limits and the rule (the predictors come opened)."""
        return RunOptions(rule=self.rule, limits=self.limits, publish=self.publish)

    @property
    def actions_enabled(self) -> bool:
        return self.token is not None

    @property
    def models_dir(self) -> Path:
        return self.models if self.models is not None else Path(os.path.realpath(self.bundle)).parent


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
