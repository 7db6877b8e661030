"""The line's messages on stderr: progress, warnings, the status line (stdout carries results only).

One rich console for the whole runtime, so the status line and the messages of the watcher,
``info`` and the command line share one stream and never tear each other's lines."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(str(message))}")


def info(message: str) -> None:
    err.print(escape(str(message)))
