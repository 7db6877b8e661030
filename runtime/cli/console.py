"""Where a command line's output goes, and how known errors become exit codes.

stdout carries results only (one JSON object per line, flushed per line, so another program can
read them as they come); stderr carries progress, the status line, warnings and errors. Every
known error is one readable line on stderr and its exit code from :mod:`runtime.errors` (the
one table all three command lines share).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import INTERRUPTED, exit_code_for
from ..line.messages import err
from ..line.records import dumps


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


def error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(str(message))}")


@contextlib.contextmanager
def stage_progress() -> Iterator[Callable[[str, int, int], None]]:
    """Progress bars on stderr (a terminal only), one per stage: yields ``update(stage, done, total)``."""
    if not err.is_terminal:
        yield lambda stage, done, total: None
        return
    with Progress(TextColumn("{task.description:>11}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as prog:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=total)
            prog.update(tasks[stage], completed=done, total=total)

        yield update


@contextlib.contextmanager
def known_errors() -> Iterator[None]:
    """Turn known errors into one line on stderr and their exit code (``typer.Exit``); anything
    else is a bug and keeps its traceback (exit 1)."""
    try:
        yield
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:  # noqa: BLE001 - mapped or re-raised below
        code = exit_code_for(e)
        if code is None:
            raise
        error_line(str(e))
        raise typer.Exit(code) from None
