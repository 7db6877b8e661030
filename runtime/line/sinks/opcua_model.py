"""The result model that OPC UA carries, in both roles (the runtime's own server, a PLC's nodes).

Names follow the OPC UA Machine Vision companion specification (OPC 40100) where it has one: a
``VisionSystem`` object whose result carries ``ResultId``, ``PartId`` and ``CreationTime``, and a
``State`` (``Operational`` while results flow, ``Halted`` once the runtime stops). The rest is
this runtime's own: the scores, the verdict, a result counter, the bundle that judged.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from .rows import part_of


@dataclass(frozen=True)
class Field:
    key: str  # the mapping file's name for it
    browse: str  # the runtime's own server's browse name
    vtype: str  # ua.VariantType name on the runtime's server
    what: str


FIELDS: tuple[Field, ...] = (
    Field("result_id", "ResultId", "String", "the record id (also the message id of every sink)"),
    Field("part_id", "PartId", "String", "the part: the file, source#frame, or the part id the PLC gave the trigger"),
    Field("score", "Score", "Double", "anomaly score"),
    Field("normalised", "NormalisedScore", "Double", "score / threshold / 2: 0.5 is the threshold"),
    Field("verdict", "Verdict", "String", "ok, ng, error (empty: no threshold)"),
    Field("ok", "IsOk", "Boolean", "true when the part passed"),
    Field("ng", "IsNg", "Boolean", "true when the part is defective"),
    Field("bundle_id", "BundleId", "String", "the bundle that judged"),
    Field("time", "CreationTime", "DateTime", "when the result was made (UTC)"),
    Field("counter", "ResultCounter", "UInt32", "goes up by one per result; written last"),
)
KEYS = tuple(f.key for f in FIELDS)


def _time(value: Any) -> _dt.datetime:
    if isinstance(value, str):
        try:
            return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return _dt.datetime.now(_dt.timezone.utc)


def values(record: dict[str, Any], record_id: str, counter: int) -> dict[str, Any]:
    """The model's values for one result, by mapping key, in writing order (counter last)."""
    verdict = record.get("verdict")
    return {"result_id": record_id, "part_id": str(record.get("part_id") or part_of(record)),
            "score": float("nan") if record.get("score") is None else float(record["score"]),
            "normalised": float("nan") if record.get("normalised") is None else float(record["normalised"]),
            "verdict": verdict or "", "ok": verdict == "ok", "ng": verdict == "ng",
            "bundle_id": str(record.get("bundle") or ""), "time": _time(record.get("time")),
            "counter": counter & 0xFFFFFFFF}


def convert(value: Any, vtype) -> Any:
    """``value`` as the node's own data type wants it (a PLC's Int16 score, a Float, a String...)."""
    name = vtype.name
    if name == "Boolean":
        return bool(value)
    if name in ("Float", "Double"):
        return float(value)
    if name in ("SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"):
        if isinstance(value, float):
            value = 0 if value != value else round(value * 1000)  # scores as thousandths
        return int(value)
    if name == "DateTime":
        return value if isinstance(value, _dt.datetime) else _time(value)
    if name in ("String", "LocalizedText"):
        return value.isoformat() if isinstance(value, _dt.datetime) else str(value)
    return value
