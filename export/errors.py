"""The export floor's own error: one module below the graph writers (:mod:`export.onnx_export`)
and the int8 quantizer (:mod:`export.quantize`), so that both raise it without importing each other."""

from __future__ import annotations

from runtime import errors


class ExportError(RuntimeError):
    """A graph that could not be written, or that failed its checks; the message names the file."""

    exit_code = errors.GRAPH
