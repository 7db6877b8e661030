"""The one shape of every plug-in table in the runtime (engines, search indexes, camera sources,
result sinks, PLC triggers): a row per kind, keyed by what the user names (``--graph``, ``--search``,
a URL scheme), naming the module and factory that make it, what it needs beyond the base install,
and a line for ``info`` and the docs. Like timm's model registry and Ultralytics' formats table,
the command line's choices, ``info`` and the generated docs pages derive from the table, so adding
a kind is one module and one row.

A row's module is imported only when that kind is used (``load``), so the runtime imports without
the optional packages (OpenVINO, TensorRT, faiss, asyncua, paho-mqtt, Aravis) a kind needs. A table
may subclass :class:`Plugin` to carry its own data columns (an index's capabilities, a variant's
precision), as data a caller reads instead of probing objects with ``hasattr``.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar


@dataclass(frozen=True)
class Plugin:
    key: str  # what the user names: a --graph/--search value, a URL scheme
    module: str  # the absolute module that holds the factory, imported on first use
    factory: str  # the class or function in ``module`` that makes one
    what: str = ""  # one line for info and the docs
    needs: str = ""  # what to install beyond the base runtime ("" = nothing)
    example: str = ""  # a copy-paste value

    def load(self) -> Callable[..., Any]:
        """The factory (imports the module now)."""
        return getattr(importlib.import_module(self.module), self.factory)

    def make(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def available(self) -> tuple[bool, str]:
        """(usable here, why not): the module's own ``available()`` where it has one, else whether it imports."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError as e:
            return False, f"{self.key} needs {self.needs or e.name}: {e}"
        check = getattr(mod, "available", None)
        return check() if callable(check) else (True, "")


P = TypeVar("P", bound=Plugin)


class PluginTable(Generic[P]):
    """An ordered, read-only table of rows with unique keys; ``get`` raises ``error`` (a ValueError by
    default) naming the close key or the known ones."""

    def __init__(self, name: str, rows: Iterable[P], error: Callable[[str], Exception] = ValueError):
        self.name = name  # how an error names the choice: "--search", "--publish scheme"
        self.rows: tuple[P, ...] = tuple(rows)
        self._by_key = {r.key: r for r in self.rows}
        if len(self._by_key) != len(self.rows):
            raise ValueError(f"{name}: duplicate keys in the table")
        self._error = error

    def __iter__(self) -> Iterator[P]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def keys(self) -> tuple[str, ...]:
        return tuple(self._by_key)

    def find(self, key: str) -> P | None:
        return self._by_key.get(key)

    def get(self, key: str) -> P:
        row = self._by_key.get(key)
        if row is None:
            close = difflib.get_close_matches(str(key), list(self._by_key), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise self._error(f"{self.name} {key!r} is not known: choose {', '.join(self._by_key)}{hint}")
        return row

    def describe(self, key_name: str = "key", no_needs: str = "(nothing beyond the runtime)") -> list[dict[str, str]]:
        """The rows for ``info`` and the docs pages, the key under ``key_name`` (a sink's "scheme")."""
        return [{key_name: r.key, "needs": r.needs or no_needs, "what": r.what, "example": r.example}
                for r in self.rows]
