"""Run the app under uvicorn; a watcher that fails stops the server with the watcher's error
(and so its exit code). SIGINT/SIGTERM stop it gracefully (requests in flight answered, the
watcher's current batch finished) and the command exits 0, as ``watch`` does. SIGHUP, or the
bundle folder replaced, reloads the bundle before the next batch, as for ``watch``."""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Callable, Iterator

import uvicorn

from ..line.reload import reload_on_sighup
from .app import build_app
from .options import ServeOptions
from .service import Service

IN_PROGRESS_SLACK = 16  # connections beyond --max-queue (page, metrics, health checks)


def serve(options: ServeOptions, open_predictor: Callable[[Any], Any], log: Callable[[str], None]) -> None:
    service = Service(options, open_predictor, log)
    service.open_sinks()  # a sink that cannot work: exit 2 before anything listens
    app = build_app(service)
    # requests in progress at once (uploads being read, waiting, scored; the page's polls): more get 503,
    # so memory stays bounded by about this many uploads of --max-bytes
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=10, limit_concurrency=options.max_queue + IN_PROGRESS_SLACK)
    server = uvicorn.Server(config)
    service.request_exit = lambda: setattr(server, "should_exit", True)
    log(f"serving {service.predictor.bundle.bundle_id} on http://{options.host}:{options.port}/ "
        f"(actions {'need the bearer token' if options.actions_enabled else 'off: no --token'})"
        + (f"; watching {options.watch}" if options.watch else ""))
    with _signals_end_quietly(), reload_on_sighup(service.products):  # every opened bundle
        server.run()
    if service.watch_error is not None:
        raise service.watch_error


@contextlib.contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """uvicorn handles SIGINT/SIGTERM itself, then raises the signal again once it has shut down
    (for the handler that was there before it). That handler is this no-op: the shutdown was
    asked for and is done, so the command ends with exit 0 rather than killed by the signal."""
    sigs = [signal.SIGINT, signal.SIGTERM]
    old = {s: signal.signal(s, lambda signum, frame: None) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
