"""Frame sources for ``patchcore-rt camera``: one module per kind behind one interface
(:class:`~.base.FrameSource`), one table keyed by URL scheme (:mod:`.table`)."""

from .base import Frame, FrameSource, SourceError
from .table import KINDS, check_available, describe, kind_for, open_source

__all__ = ["Frame", "FrameSource", "SourceError", "KINDS", "check_available", "describe", "kind_for", "open_source"]
