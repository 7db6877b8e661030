"""Where the command line's output goes, and how known errors become exit codes.

stdout carries results only (one JSON object per line, flushed per line, so another program can
read them as they come); stderr carries progress, the status line, warnings and errors. Every
known error is one readable line on stderr and a distinct exit code:

====  =====================================================================================
code  meaning
====  =====================================================================================
0     success (also: ``watch``/``camera`` stopped by SIGINT/SIGTERM after finishing a batch)
1     unexpected internal error (a bug: a traceback is printed)
2     usage or bad input: wrong option, missing file or folder, no images, camera source that
      cannot be opened, no bundle chosen when ``models/`` holds several, another watcher running
3     bad bundle: missing, corrupt, edited, checksum mismatch, or a newer schema version
4     device unavailable: ``--device cuda``/``tensorrt`` cannot load on this machine
5     ``--strict``: at least one input could not be scored (error records were written)
130   interrupted (a second Ctrl-C, or Ctrl-C during ``predict``/``bench``)
====  =====================================================================================
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Iterator

from rich.console import Console

OK = 0
INTERNAL = 1
USAGE = 2
BAD_BUNDLE = 3
DEVICE = 4
INPUT_FAILED = 5
INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 internal error; 2 usage or bad input; 3 bad bundle; "
    "4 device unavailable; 5 --strict and some input failed; 130 interrupted."
)

err = Console(stderr=True, highlight=False, soft_wrap=True)


class UsageError(ValueError):
    """Bad input from the user (exit code 2): a path that does not exist, no images, ..."""


class InputsFailed(RuntimeError):
    """``--strict`` and some inputs could not be scored (exit code 5)."""


class JsonLines:
    """Writes result records to stdout, one compact JSON object per line, flushed each time.

    A closed pipe (``patchcore-rt watch ... | head``) stops the stdout copy without stopping the
    command: the durable copy of ``watch`` results is its ``results.jsonl``.
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.closed = False

    def emit(self, record: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.stream.write(dumps(record) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {_escape(message)}")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {_escape(message)}")


def info(message: str) -> None:
    err.print(_escape(message))


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of a known error, None for anything else (a bug)."""
    from .bundle import BundleError
    from .engines import DeviceUnavailableError

    if isinstance(exc, UsageError):
        return USAGE
    if isinstance(exc, BundleError):
        return BAD_BUNDLE
    if isinstance(exc, DeviceUnavailableError):
        return DEVICE
    if isinstance(exc, InputsFailed):
        return INPUT_FAILED
    return None


@contextlib.contextmanager
def known_errors() -> Iterator[None]:
    """Turn known errors into one line on stderr and their exit code (``typer.Exit``)."""
    import typer

    try:
        yield
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(INTERRUPTED) from None
    except Exception as e:  # noqa: BLE001 - mapped or re-raised below
        code = exit_code_for(e)
        if code is None:
            raise
        error_line(str(e))
        raise typer.Exit(code) from None
