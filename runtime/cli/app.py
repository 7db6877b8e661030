"""``patchcore-rt``: the torch-free runtime command line (predict, score, watch, camera, bench, info,
threshold, update, serve).

stdout carries results as JSON lines; stderr carries progress, the status line and errors. Exit
codes are the table of :mod:`runtime.errors`, shared with ``patchcore`` and ``python -m export``.

The commands live in one module per group (:mod:`.files`: predict, score; :mod:`.live`: watch,
camera; :mod:`.bundle_tools`: bench, info, update; :mod:`.threshold`; :mod:`.serve`); they parse
options and call the line layer (:mod:`runtime.line`) or the server (:mod:`runtime.serve`). This
module makes the app and registers them, in the order ``--help`` lists them.
"""

from __future__ import annotations

import cv2
import typer

from .. import __version__
from .bundle_tools import bench, info_cmd, update
from .files import predict, score
from .live import camera, watch
from .options import EXIT_CODES_HELP, app as make_app, run, version_callback
from .serve import serve
from .threshold import threshold

PROG = "patchcore-rt"
app = make_app(PROG, "Run PatchCore bundles without torch: score files, watch a folder, read a camera, benchmark, "
               "move the operating point, teach new good images.")

# Old spellings that still work for one release (runtime.cli.options.rewrite_deprecated).
DEPRECATED = {
    "*": {"-d": "--device", "-b": "--batch-size", "--batch": "--batch-size"},
    "bench": {"--json": "--report"},
}


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback(PROG, __version__),
                                       is_eager=True, help="Print the version and exit.")) -> None:
    """Run PatchCore bundles without torch: score files, watch a folder, read a camera, benchmark, move the operating
    point, teach new good images."""


for name, command in (("predict", predict), ("score", score), ("watch", watch), ("camera", camera),
                      ("bench", bench), ("info", info_cmd), ("threshold", threshold), ("update", update),
                      ("serve", serve)):
    app.command(name, epilog=EXIT_CODES_HELP)(command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``patchcore-rt``; also ``python -m runtime``)."""
    _quiet_opencv()
    run(app, PROG, DEPRECATED, argv)


def _quiet_opencv() -> None:
    """OpenCV logs its own warning for every corrupt image; our error record already says it."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # builds without the logging utilities
        pass


if __name__ == "__main__":
    main()
