"""Several bundles in one process: one per product, the product named per part.

``--bundle NAME=DIR`` (repeatable) names a product and its bundle; a plain ``--bundle DIR`` is
the one unnamed product, scored when a part names none (the behaviour of a one-bundle command,
its records without a ``product`` field). Each product's bundle is a
:class:`runtime.line.reload.BundleSource` (hot reload: a replaced folder or SIGHUP), opened at
start (``--load eager``) or when its first part comes (``--load lazy``, the default; the first
product is always opened at start, so a broken bundle stops the command before the line runs).

A part names its product by ``/v1/predict?product=NAME`` (serve), the first sub-folder of the
watched folder (``incoming/NAME/part.png``, watch) or :attr:`runtime.line.camera.CameraRunner.product`
(camera: ``--product``, or the PLC trigger's ``product_in`` per part). An unknown product is never
guessed: it is :class:`UnknownProduct` (an error record, HTTP 404).
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from ..errors import UsageError
from .reload import BundleSource

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOADS = ("lazy", "eager")


class UnknownProduct(LookupError):
    """A part named a product that has no bundle here (or none where one is required)."""


def parse_bundles(values: Iterable[str]) -> dict[str | None, str]:
    """``--bundle`` values -> {product name (None: the unnamed one): bundle folder or name}.
    ``NAME=DIR`` names a product unless the whole value is an existing path. Exit 2 for a bad
    name, a product given twice, or two unnamed bundles."""
    out: dict[str | None, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or os.path.lexists(v):
            name, path = None, v
        elif not NAME.match(name):
            raise UsageError(f"--bundle {v}: product names are letters, digits, '_', '.', '-' (at most 64), "
                             "starting with a letter or digit")
        elif not path:
            raise UsageError(f"--bundle {v}: give NAME=DIR")
        if name in out:
            raise UsageError(f"--bundle: {'product ' + repr(name) if name else 'an unnamed bundle'} is given twice")
        out[name] = path
    return out


class Products:
    """The products of one process and their bundles (opened lazily or eagerly)."""

    def __init__(self, paths: dict[str | None, Path], open_source: Callable[[Path], BundleSource],
                 load: str = "lazy", log: Callable[[str], None] = print):
        if load not in LOADS:
            raise UsageError(f"--load {load}: give lazy or eager")
        if not paths:
            raise UsageError("no bundle given")
        self.paths, self.open_source, self.load, self.log = dict(paths), open_source, load, log
        self.sources: dict[str | None, BundleSource] = {}
        self.load_s: dict[str | None, float] = {}  # seconds each bundle took to open
        self._lock = threading.Lock()
        for i, name in enumerate(self.paths):
            if load == "eager" or i == 0:
                self.source(name)

    @classmethod
    def reloadable(cls, paths: dict[str | None, Path], open_predictor: Callable[[Path], object], load: str = "lazy",
                   log: Callable[[str], None] = print, require_threshold: bool = False) -> "Products":
        """A reloadable bundle (:class:`BundleSource`) per product, each opened by ``open_predictor``:
        how watch, camera and serve all open their bundles."""
        return cls(paths, lambda path: BundleSource(path, open_predictor, require_threshold=require_threshold, log=log),
                   load=load, log=log)

    @property
    def named(self) -> bool:
        """True when any product is named (records then carry ``product``)."""
        return any(n is not None for n in self.paths)

    @property
    def first(self) -> str | None:
        return next(iter(self.paths))

    def names(self) -> list[str | None]:
        return list(self.paths)

    def resolve(self, name: str | None) -> str | None:
        """The product a part belongs to: ``name``, or the unnamed one when it names none. A number
        that names no product is a PLC's product index: 1 is the first named ``--bundle``, 2 the
        second (a product's own name wins when it is a number too)."""
        if name in (None, ""):
            if None in self.paths:
                return None
            raise UnknownProduct(f"no product named: give one of {self.listing()}")
        if name not in self.paths and str(name).strip().isdigit():  # a PLC's product number (Modbus register)
            named = [n for n in self.paths if n is not None]
            number = int(str(name).strip())
            if number == 0 and None in self.paths:
                return None  # 0: the register's rest value, no product named
            if 1 <= number <= len(named):
                return named[number - 1]
        if name not in self.paths:
            raise UnknownProduct(f"unknown product {str(name)[:64]!r}: this process has {self.listing()}")
        return name

    def check(self, name: str | None, what: str) -> None:
        """Exit 2 (UsageError) for a product given on the command line that is not here."""
        if name is not None:
            try:
                self.resolve(name)
            except UnknownProduct as e:
                raise UsageError(f"{what}: {e}") from None

    def listing(self) -> str:
        return ", ".join("(unnamed)" if n is None else n for n in self.paths)

    def source(self, name: str | None) -> BundleSource:
        """The product's bundle source, opened now if it was not yet (a lazy product's first part)."""
        name = self.resolve(name)
        with self._lock:
            src = self.sources.get(name)
            if src is None:
                t0 = time.perf_counter()
                src = self.open_source(Path(self.paths[name]))
                self.load_s[name] = time.perf_counter() - t0
                self.sources[name] = src
                if name is not None:
                    self.log(f"product {name}: bundle {src.predictor.bundle.bundle_id} opened in "
                             f"{self.load_s[name]:.2f} s")
            return src

    def current(self, name: str | None):
        """The predictor for the product's next batch (hot reload: :meth:`BundleSource.current`)."""
        return self.source(name).current()

    def request_reload(self) -> None:
        """SIGHUP: every opened bundle is reopened before its next batch."""
        for src in list(self.sources.values()):
            src.request_reload()

    @property
    def reloads(self) -> int:
        return sum(s.reloads for s in self.sources.values())

    @property
    def refused(self) -> int:
        return sum(s.refused for s in self.sources.values())


def product_of_path(rel: str, products: Products) -> str | None:
    """The product a watched file belongs to: its first sub-folder when products are named
    (``NAME/part.png``), else (a file at the top, or no named products) the unnamed one."""
    parts = Path(rel).parts
    if products.named and len(parts) > 1 and parts[0] in products.paths:
        return parts[0]
    if products.named and len(parts) > 1 and None not in products.paths:
        return parts[0]  # an unknown sub-folder: resolve() says so
    return None


def score_by_product(products: Products, items: list, product_of: Callable[[object], str | None], run,
                     overlays: bool | None = None):
    """Score ``items`` (each with its product from ``product_of(item)``) under ``run`` (a
    :class:`~runtime.line.run_options.RunOptions`: limits, and the rule judged per product's bundle):
    one model call per product. Returns ``(outcomes, predictors, products)`` in the items' order; an item of an
    unknown product gets an error outcome and ``None`` as its predictor, never a score. ``overlays``:
    as :func:`~runtime.line.records.score_items`'s, for every item."""
    from .records import Outcome, score_items

    groups: dict[str | None, list[int]] = {}
    outcomes: list = [None] * len(items)
    preds: list = [None] * len(items)
    names: list = [None] * len(items)
    for i, it in enumerate(items):
        asked = product_of(it)
        names[i] = asked
        try:
            groups.setdefault(products.resolve(asked), []).append(i)
        except UnknownProduct as e:
            it.error = f"{it.name}: {e}"
            outcomes[i] = Outcome(it, verdict="error", error=it.error)
    for name, idx in groups.items():
        try:
            p = products.current(name)
        except Exception as e:  # noqa: BLE001 - a lazy bundle that cannot open: error records, the line goes on
            for i in idx:
                items[i].error = f"{items[i].name}: product {name!r}: bundle not usable ({e or type(e).__name__})"
                outcomes[i] = Outcome(items[i], verdict="error", error=items[i].error)
            continue
        for i, o in zip(idx, score_items(p, [items[i] for i in idx], run.limits, run.judge(p), overlays)):
            outcomes[i], preds[i] = o, p
    return outcomes, preds, names
