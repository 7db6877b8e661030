"""``serve``: the runtime behind HTTP. The command checks its options and hands the server
(:mod:`runtime.serve`, the ``[serve]`` extra) the options and how to open a bundle."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError
from ..line.messages import info
from ..line.run_options import RunOptions
from .bundle_choice import bundle_paths
from .console import known_errors
from .flags import LoadOpt, with_run_options


@with_run_options(publish=True)
def serve(
    bundle: Optional[List[str]] = typer.Option(None, "--bundle", help="Bundle folder or name (default as for watch). "
                                               "A symbolic link is flipped by a switch. NAME=DIR, repeated: a bundle "
                                               "per product (?product=NAME); the first is the one taught and switched."),
    load: str = LoadOpt,
    watch_folder: Optional[Path] = typer.Option(None, "--watch", help="Also watch this folder (as patchcore-rt watch "
                                                "does: same journal, exactly once); its results feed the page."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --watch: its output folder (default: "
                                       "FOLDER/_patchcore). With --publish: where the outbox is kept (OUT/outbox; "
                                       "without --watch or --out, a temporary folder that a restart does not keep)."),
    move: bool = typer.Option(False, "--move", help="With --watch: move inputs to OUT/ok, OUT/ng, OUT/error."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Beyond loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    token: Optional[str] = typer.Option(None, "--token", envvar="PATCHCORE_RT_TOKEN", show_envvar=True,
                                        help="Bearer token for mark, teach, switch and roll back (off without one)."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Requests scored together in one model call."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="How long a batch waits for more requests."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests waiting at most; more are answered 503."),
    max_bytes: Optional[int] = typer.Option(None, "--max-bytes", min=1, help="Largest upload in bytes (default: "
                                            "$PATCHCORE_RT_MAX_BYTES, else 64 MiB)."),
    models: Optional[Path] = typer.Option(None, "--models", help="Where taught bundles are written (default: "
                                          "beside the bundle)."),
    settle: float = typer.Option(1.0, "--settle", help="With --watch: seconds a file must stay unchanged."),
    *, run: RunOptions,
) -> None:
    """Serve a bundle over HTTP: an API, the operator's page and Prometheus metrics.

    POST /v1/predict takes an image (raw bytes or multipart) and answers the record predict prints.
    The page at / shows the latest results, a review queue of defective calls to mark good, teach
    and switch. Listens on 127.0.0.1 unless --host; those actions need --token.
    """
    with known_errors():
        try:
            from ..serve.options import DEFAULT_MAX_BYTES, ServeOptions
            from ..serve.server import serve as run_server
        except ImportError as e:
            raise UsageError(f"serve needs the [serve] extra ({e.name} is missing): pip install "
                             "'patchcore-rt[serve]'") from None
        limits = run.limits
        if max_bytes is not None:
            limits = replace(limits, max_bytes=max_bytes)
        elif not os.environ.get("PATCHCORE_RT_MAX_BYTES"):
            limits = replace(limits, max_bytes=DEFAULT_MAX_BYTES)
        if watch_folder is not None and not watch_folder.is_dir():
            raise UsageError(f"--watch {watch_folder}: not a folder")
        paths = bundle_paths(bundle)
        opts = ServeOptions(next(iter(paths.values())), bundles=paths, load=load, host=host, port=port,
                            token=token or None, limits=limits, max_batch=max_batch, max_wait_ms=max_wait_ms,
                            max_queue=max_queue, models=models, watch=watch_folder, watch_out=out, watch_move=move,
                            watch_settle=settle, publish=run.publish, rule=run.rule)
        # a request that asks for an overlay gets its map settled for it (runtime.serve.service._score_group)
        run_server(opts, run.load_predictor, info)
