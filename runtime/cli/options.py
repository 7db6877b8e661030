"""Conventions shared by the three command lines (``patchcore``, ``python -m export``,
``patchcore-rt``): one spelling per concept, ``-h``/``--version`` everywhere, the exit-code table
in every ``--help``, and the old spellings that still work for one release.

=========================  =====================================================================
concept                    spelling
=========================  =====================================================================
data set (class folder)    ``--data``
backbone                   ``--backbone`` / ``-b``
images per model call      ``--batch-size``
device                     ``--device``
CPU threads                ``--threads``
output folder or bundle    ``--out`` / ``-o``
result as JSON on stdout   ``--json`` (a flag)
report file                ``--report PATH``
run on Ray                 ``--ray``, ``--ray-address ADDRESS`` (implies ``--ray``)
=========================  =====================================================================

Deprecated spellings are rewritten before parsing, with a warning on stderr naming the new one
(see :data:`DEPRECATED` in each command line); they go in the release after next.
"""

from __future__ import annotations

import sys
from typing import Callable, Mapping, Sequence

import typer

from ..errors import exit_codes_help
from ..line.messages import warn

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
EXIT_CODES_HELP = exit_codes_help()

# command -> {old spelling: new spelling}; "*" applies to every command of that command line, and
# COMMANDS maps an old command name to its new one
Deprecations = Mapping[str, Mapping[str, str]]
COMMANDS = "commands"


# The options of ``update``, shared by ``patchcore-rt update`` (ONNX) and ``patchcore update`` (PyTorch).
UPDATE_GOOD = typer.Option(..., "--good", help="Folder (or file) of new good images; repeatable.")
UPDATE_OUT = typer.Option(..., "--out", "-o", help="The new bundle's folder (must not exist; the original is never "
                          "modified).")
UPDATE_ADD = typer.Option(None, "--add", min=0, help="Add at most this many bank rows. Default: no cap; rows are added "
                          "until every new patch lies within the fit's greedy radius of the bank (bundles that do not "
                          "record it: the coreset ratio of the new patches, and a warning).")
UPDATE_RECURSIVE = typer.Option(False, "--recursive", "-r", help="Also take images in sub-folders of --good folders.")
UPDATE_JSON = typer.Option(False, "--json", help="Print the update's summary as one JSON object (default: the new "
                           "bundle's folder).")


def app(name: str, help: str) -> typer.Typer:
    """A root Typer app with the shared conventions (``-h``, exit codes in the epilog)."""
    return typer.Typer(name=name, help=help, epilog=EXIT_CODES_HELP, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_show_locals=False, context_settings=CONTEXT_SETTINGS, rich_markup_mode=None)


def version_callback(prog: str, version: str) -> Callable[[bool], None]:
    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {version}")
            raise typer.Exit()

    return show


def rewrite_deprecated(argv: Sequence[str], table: Deprecations, warn: Callable[[str], None]) -> list[str]:
    """``argv`` (without the program name) with deprecated option spellings replaced.

    The command is the first argument that is not an option; ``--old=value`` keeps its value.
    Only arguments before a ``--`` are looked at."""
    args = list(argv)
    at = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    command = None if at is None else args[at]
    renamed = table.get(COMMANDS, {}).get(command or "")
    if renamed:
        warn(f"command {command} is deprecated: use {renamed} (the old name goes in the release after next)")
        args[at] = renamed
    mapping = {**table.get("*", {}), **table.get(command or "", {}), **table.get(renamed or "", {})}
    out: list[str] = []
    for i, a in enumerate(args):
        if a == "--":
            out += args[i:]
            break
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        new = mapping.get(name)
        if new is None:
            out.append(a)
            continue
        warn(f"{name} is deprecated{f' in {command}' if command else ''}: use {new} (the old spelling goes in the "
             "release after next)")
        out.append(f"{new}={value}" if eq else new)
    return out


def run(app_: typer.Typer, prog: str, table: Deprecations, argv: Sequence[str] | None = None) -> None:
    """Run ``app_`` as the command line ``prog`` with the deprecated spellings rewritten."""
    args = sys.argv[1:] if argv is None else list(argv)
    app_(args=rewrite_deprecated(args, table, warn), prog_name=prog)
