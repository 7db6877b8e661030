"""Run the app under uvicorn; a watcher that fails stops the server with the watcher's error
(and so its exit code)."""

from __future__ import annotations

from typing import Any, Callable

import uvicorn

from .app import build_app
from .options import ServeOptions
from .service import Service


def serve(options: ServeOptions, open_predictor: Callable[[Any], Any], log: Callable[[str], None]) -> None:
    service = Service(options, open_predictor, log)
    app = build_app(service)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    service.request_exit = lambda: setattr(server, "should_exit", True)
    log(f"serving {service.predictor.bundle.bundle_id} on http://{options.host}:{options.port}/ "
        f"(actions {'need the bearer token' if options.actions_enabled else 'off: no --token'})"
        + (f"; watching {options.watch}" if options.watch else ""))
    server.run()
    if service.watch_error is not None:
        raise service.watch_error
