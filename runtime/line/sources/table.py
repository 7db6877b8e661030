"""The one table of frame sources (a :class:`~runtime.plugins.PluginTable`, the shape of every
plug-in table of the runtime): ``camera SOURCE`` picks its row from the source's URL scheme,
``info`` and the docs list the rows. Adding a kind of camera is one module beside this one (a :class:`~.base.FrameSource`) and one
row here. A module is imported only when its kind is used, so the runtime imports without the
optional packages a kind needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ...plugins import Plugin, PluginTable
from .base import FrameSource, SourceError


@dataclass(frozen=True)
class SourcePlugin(Plugin):
    """A kind of frame source: ``factory`` is its :class:`~.base.FrameSource` class; ``schemes`` the URL
    schemes it serves ("" = no scheme: a device index or a file path; "*" = any scheme no row names)."""

    schemes: tuple[str, ...] = ()


KINDS: PluginTable[SourcePlugin] = PluginTable("camera source kind", (
    SourcePlugin("opencv", f"{__package__}.opencv", "OpenCVSource",
                 "webcams (device index), video files, rtsp/http streams: whatever OpenCV opens",
                 example="0, line.mp4, rtsp://host/stream", schemes=("", "*")),
    SourcePlugin("genicam", f"{__package__}.genicam", "GenicamSource",
                 "GigE Vision and USB3 Vision cameras (GenICam) through Aravis 0.8; settings file, software and "
                 "hardware triggers",
                 needs="Debian/Ubuntu's gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config gcc, then "
                 "pip install 'patchcore-rt[genicam]' (make install-genicam)",
                 example="genicam://192.168.1.20, genicam://Basler-21234567", schemes=("genicam",)),
), error=SourceError)


def scheme_of(source: str) -> str:
    return source.split("://", 1)[0].lower() if "://" in source else ""


def kind_for(source: str) -> SourcePlugin:
    scheme = scheme_of(source)
    for kind in KINDS:
        if scheme in kind.schemes:
            return kind
    return next(k for k in KINDS if "*" in k.schemes)


def open_source(source: str, settings: dict[str, Any] | None = None,
                log: Callable[[str], None] | None = None) -> FrameSource:
    """The source for ``source``, opened (settings applied and read back)."""
    src = kind_for(source).load()(source, settings, log)
    src.open()
    return src


def describe() -> list[dict[str, Any]]:
    """The table as ``info`` shows it: each kind, its schemes, and whether it runs here."""
    rows = []
    for k in KINDS:
        ok, why = k.available()
        rows.append({"kind": k.key, "schemes": [s for s in k.schemes if s not in ("", "*")], "example": k.example,
                     "what": k.what, "available": ok, **({"missing": why} if not ok else {})})
    return rows


def check_available(source: str) -> None:
    """SourceError (exit 2) naming what to install when ``source``'s kind cannot run here: said
    before a bundle loads, so a camera without its extra costs no start-up."""
    ok, why = kind_for(source).available()
    if not ok:
        raise SourceError(why)
