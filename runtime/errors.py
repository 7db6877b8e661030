"""Exit codes and the errors behind them: one table for every patchcore-rt command line.

``patchcore``, ``python -m export`` and ``patchcore-rt`` all exit with these codes, and each
known error class names its code with an ``exit_code`` class attribute, so the mapping from an
error to a code lives with the error and :func:`exit_code_for` is the one place that reads it.
Errors from other floors (``patchcore``'s weights errors, ``export``'s graph and parity errors)
set the attribute to a code from this table; they do not define codes of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

OK = 0
INTERNAL = 1
USAGE = 2
BAD_BUNDLE = 3
DEVICE = 4
WEIGHTS = 5
PARITY = 6
GRAPH = 7
INPUTS_FAILED = 8
OUTPUT = 9
INTERRUPTED = 130


@dataclass(frozen=True)
class ExitCode:
    code: int
    label: str  # a few words, for --help
    meaning: str  # the README's table


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(OK, "ok", "success (watch/camera: also after SIGINT/SIGTERM once the batch is saved)"),
    ExitCode(INTERNAL, "internal error", "internal error (a bug: a traceback is printed)"),
    ExitCode(USAGE, "usage or bad input", "usage or bad input: wrong option, missing file or folder, no images, "
             "no test images to measure (eval on a folder with only train/good), corrupt data set, unknown backbone, failed download, camera source that cannot be opened or yields "
             "no frame, another watcher running"),
    ExitCode(BAD_BUNDLE, "bad bundle", "bad bundle: missing, corrupt, edited, inconsistent or a newer schema version"),
    ExitCode(DEVICE, "device unavailable", "device unavailable: a GPU, provider or TensorRT that was asked for "
             "cannot run here"),
    ExitCode(WEIGHTS, "weights unavailable", "backbone weights unavailable (the message names the file to place)"),
    ExitCode(PARITY, "parity broken", "parity broken: a runtime target is outside its tolerance"),
    ExitCode(GRAPH, "graph check failed", "an exported graph failed the ONNX checker or could not be loaded back"),
    ExitCode(INPUTS_FAILED, "--strict and an input failed", "--strict: at least one input could not be scored "
             "(its error record was written)"),
    ExitCode(OUTPUT, "output not writable", "output not writable: read-only or full disk, no permission, a file "
             "where a folder should be"),
    ExitCode(INTERRUPTED, "interrupted", "interrupted (a second Ctrl-C, or Ctrl-C during a command that has no "
             "batch to finish)"),
)


def exit_codes_help() -> str:
    """The table as one paragraph, for every command's ``--help``."""
    return "Exit codes: " + "; ".join(f"{c.code} {c.label}" for c in EXIT_CODES) + "."


def exit_codes_markdown() -> str:
    """The table in Markdown (the README's copy is checked against it by a test)."""
    rows = ["| code | meaning |", "|---|---|"] + [f"| {c.code} | {c.meaning} |" for c in EXIT_CODES]
    return "\n".join(rows)


class PatchcoreError(Exception):
    """Base of the project's errors that carry an exit code."""

    exit_code = INTERNAL


class UsageError(PatchcoreError, ValueError):
    """Bad input from the user: a path that does not exist, no images, a bad option value."""

    exit_code = USAGE


class InputsFailed(PatchcoreError, RuntimeError):
    """``--strict`` and some inputs could not be scored."""

    exit_code = INPUTS_FAILED


class OutputError(PatchcoreError, OSError):
    """An output (journal, overlay, report, bundle folder) cannot be written."""

    exit_code = OUTPUT


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of a known error, None for anything else (a bug, shown with its traceback).

    An error class's ``exit_code`` wins; any other ``ValueError`` is bad input (exit 2): library
    functions raise it for values they cannot take, and a command line only passes on what the
    user gave it."""
    code = getattr(type(exc), "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError)):
        return USAGE
    return None
