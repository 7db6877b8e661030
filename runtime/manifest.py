"""The manifest's schema: parsing ``manifest.json`` safely and checking every field's type and
range before anything else reads it.

A manifest reaches this code from disk, possibly edited or crafted: it is parsed with JSON's
``NaN``/``Infinity`` constants refused (they are not JSON and would make thresholds or scores
non-finite), with a size cap and without recursion errors escaping, and every field the runtime
uses is checked here (finite numbers, positive integers, consistent sizes, files named relative
to the bundle), so that a bad field is one :class:`BundleError` naming it, never a traceback
further down.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import PurePosixPath
from typing import Any, Callable, Mapping

from . import errors
from .fused_parts import check_features
from .geometry import TileLayout
from .preprocess import PreprocessSpec

SCHEMA_VERSION = 1
FORMAT = "patchcore-rt-bundle"
DIGEST_FIELD = "manifest_sha256"
BANK_DTYPES = ("float32", "float16")
GRAPH_DTYPES = ("float32", "float16", "int8")  # int8: a QDQ graph (float32 in and out, int8 inside)
GRAPH_KINDS = ("features", "scores")
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few KiB; anything this large is not one
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BundleError(ValueError):
    """A bundle that cannot be used: missing, corrupt, edited or inconsistent."""

    exit_code = errors.BAD_BUNDLE


class BundleVersionError(BundleError):
    """A bundle written by a newer (or unknown) schema version."""


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """``manifest.json`` bytes -> the manifest object; a BundleError for anything that is not a
    plain JSON object (invalid UTF-8 or JSON, NaN/Infinity constants, absurd nesting or size)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: {len(data)} bytes is too large for a manifest (limit {MAX_MANIFEST_BYTES})")

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    def finite_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"number {text[:40]} is out of range")
        return value

    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=refuse_constant, parse_float=finite_float)
    except RecursionError:
        raise BundleError(f"{where}: not a manifest (JSON nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise BundleError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: expected a JSON object")
    return manifest


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace), without its own
    digest field. JSON floats round-trip exactly, so reading and re-dumping gives the same text."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------- checks
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v > 0 else "a positive integer"


def non_negative_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else "an integer >= 0"


def finite_number(v: Any) -> str | None:
    return None if _is_number(v) else "a finite number"


def finite_or_null(v: Any) -> str | None:
    return None if v is None or _is_number(v) else "a finite number or null"


def non_empty_str(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def string(v: Any) -> str | None:
    return None if isinstance(v, str) else "a string"


def obj(v: Any) -> str | None:
    return None if isinstance(v, dict) else "an object"


def array(v: Any) -> str | None:
    return None if isinstance(v, list) else "an array"


def size_pair(v: Any) -> str | None:
    ok = isinstance(v, list) and len(v) == 2 and all(_is_int(x) and 0 < x <= 1 << 16 for x in v)
    return None if ok else "two positive integers [height, width]"


def one_of(*choices: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices and type(v) in {type(c) for c in choices} else f"one of {list(choices)}"

    return check


def n_reweight(v: Any) -> str | None:
    return None if _is_int(v) and (v == 0 or v >= 2) else "0 (off) or an integer >= 2"


def blur_sigma(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v <= 1e3 else "a finite number in [0, 1000]"


# field path -> check returning None when fine, else what the value should be
FIELDS: dict[str, Callable[[Any], str | None]] = {
    "format": one_of(FORMAT),
    "name": non_empty_str,
    "backbone": obj,
    "backbone.name": non_empty_str,
    "backbone.weights_tag": string,
    "backbone.layers": array,
    "preprocess": obj,
    "features": obj,
    "features.target_dim": positive_int,
    "features.grid": size_pair,
    "features.input_size": size_pair,
    "memory_bank": obj,
    "memory_bank.file": non_empty_str,
    "memory_bank.rows": positive_int,
    "memory_bank.dim": positive_int,
    "memory_bank.dtype": one_of(*BANK_DTYPES),
    "scoring": obj,
    "scoring.k": one_of(1),
    "scoring.n_reweight": n_reweight,
    "scoring.blur_sigma": blur_sigma,
    "threshold": obj,
    "threshold.value": finite_or_null,
    "threshold.scale": finite_or_null,
    "versions": obj,
    "files": obj,
    DIGEST_FIELD: lambda v: None if isinstance(v, str) and _HEX64.fullmatch(v) else "a sha256 hex digest",
}


def spread_summary(v: Any) -> str | None:
    """``threshold.spread``: the calibration scores' summary that ``info`` prints (numbers)."""
    if not isinstance(v, dict) or not all(_is_number(v[k]) for k in ("median", "mad", "iqr", "max") if k in v):
        return "an object of finite numbers (median, mad, iqr, max)"
    return None


def finite_list(v: Any) -> str | None:
    return None if isinstance(v, list) and all(_is_number(x) for x in v) else "a list of finite numbers"


def non_negative_number(v: Any) -> str | None:
    return None if _is_number(v) and v >= 0 else "a finite number >= 0"


def positive_number(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else "a finite number > 0"


def unit_open(v: Any) -> str | None:
    return None if _is_number(v) and 0 < v < 1 else "a number in (0, 1)"


# How an export judged a reduced-precision variant (``reduced_precision.<engine>:<graph>.criterion``):
# on labelled test images, image AUROC and verdicts; on good images only, image-score error and verdicts
REDUCED_CRITERIA = ("auroc+verdicts", "image-error+verdicts")


def reduced_verdicts(v: Any) -> str | None:
    """The ``reduced_precision`` section: an object; each ``<engine>:<graph>`` entry that carries a
    verdict has ``approved`` true/false and one of :data:`REDUCED_CRITERIA` (what ``--graph auto``
    reads to pick a variant)."""
    if not isinstance(v, dict):
        return "an object"
    for key, facts in v.items():
        if ":" not in key or not isinstance(facts, dict) or "approved" not in facts:
            continue
        if not isinstance(facts["approved"], bool):
            return f"an object whose '{key}.approved' is true or false"
        if facts.get("criterion") not in REDUCED_CRITERIA:
            return f"an object whose '{key}.criterion' is one of {list(REDUCED_CRITERIA)}"
    return None


def _scores_and_regions(v: Any, what: str, need_scores: bool) -> str | None:
    if not isinstance(v, dict):
        return f"an object whose 'evidence.{what}' is an object"
    scores, regions = v.get("scores"), v.get("region_px")
    if finite_list(scores) or (need_scores and not scores):
        return f"an object whose 'evidence.{what}.scores' is a{' non-empty' if need_scores else ''} list of finite numbers"
    if regions is not None and (finite_list(regions) or len(regions) != len(scores)
                                or any(x < 0 for x in regions)):
        return (f"an object whose 'evidence.{what}.region_px' lists one finite area >= 0 per score "
                f"({len(scores)})")
    return None


def operating_point(v: Any) -> str | None:
    """``threshold.operating_point`` (:mod:`runtime.operating_point`): the policy (parsed as the
    command line parses it), the rule (image-score, or either with ``min_area_px`` > 0), the
    threshold, ``expected`` an object, and the evidence: good scores (at least one) and defect
    scores, finite, each with one region size per score when sizes are given."""
    from .operating_point import RULES, parse_policy  # numpy and errors only: no cycle

    if not isinstance(v, dict):
        return "an object"
    try:
        parse_policy(v.get("policy") if isinstance(v.get("policy"), str) else "")
    except ValueError:
        return "an object whose 'policy' is false-calls=R, recall=R, f1@D or value=X"
    rule = v.get("rule", {"kind": "image-score"})
    if not isinstance(rule, dict) or rule.get("kind") not in RULES:
        return f"an object whose 'rule.kind' is one of {list(RULES)}"
    if rule["kind"] == "either" and positive_number(rule.get("min_area_px")):
        return "an object whose 'rule.min_area_px' is a finite number > 0 (the either rule)"
    if finite_number(v.get("value")):
        return "an object whose 'value' is a finite number"
    wrong = _expected(v.get("expected"))
    if wrong:
        return f"an object whose 'expected' {wrong}"
    ev = v.get("evidence")
    if not isinstance(ev, dict):
        return "an object whose 'evidence' is an object"
    if ev.get("facts") is not None and not isinstance(ev["facts"], dict):
        return "an object whose 'evidence.facts' is an object"
    return _scores_and_regions(ev.get("good"), "good", True) or \
        _scores_and_regions(ev.get("defects") or {"scores": []}, "defects", False)


def _rate(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 1


def _interval(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_rate(x) for x in v)


def _expected(e: Any) -> str | None:
    """What is wrong with ``operating_point.expected`` (what ``info`` and ``threshold`` read), or None."""
    if not isinstance(e, dict):
        return "is an object"
    if not (_rate(e.get("false_calls")) and _interval(e.get("false_calls_interval"))):
        return "has 'false_calls' in [0, 1] and a 'false_calls_interval' [lo, hi]"
    if not (_is_int(e.get("n_good")) and e["n_good"] > 0 and _is_int(e.get("n_defects")) and e["n_defects"] >= 0):
        return "counts 'n_good' (> 0) and 'n_defects' (>= 0) images"
    if e.get("catch_rate") is not None and not (_rate(e["catch_rate"]) and _interval(e.get("catch_rate_interval"))):
        return "has 'catch_rate' null, or in [0, 1] with a 'catch_rate_interval' [lo, hi]"
    if "defect_rate" in e and not (_is_number(e["defect_rate"]) and 0 < e["defect_rate"] < 1):
        return "has 'defect_rate' in (0, 1)"
    if e.get("f1") is not None and not _rate(e["f1"]):
        return "has 'f1' null or in [0, 1]"
    return None


# fields a manifest may carry (bank updates, calibration facts): checked when present
OPTIONAL_FIELDS: dict[str, Callable[[Any], str | None]] = {
    "features.aggregation": one_of("paper", "local-mean", "fused"),
    "features.parts": array,
    "features.search": one_of("exact"),
    "memory_bank.projection_file": non_empty_str,
    "memory_bank.projection_dim": positive_int,
    "memory_bank.coverage_radius": non_negative_number,
    "memory_bank.fit_radius": non_negative_number,
    "threshold.calibration_scores": finite_list,
    "threshold.n_images": non_negative_int,
    "threshold.pixel_value": finite_number,
    "threshold.pixel_quantile": unit_open,
    "threshold.pixel_base": finite_number,
    "threshold.trust": obj,
    "threshold.spread": spread_summary,
    "threshold.operating_point": operating_point,
    "units": obj,
    "units.mm_per_px": positive_number,
    "lineage": array,
    "selection": obj,
    "selection.verdict": one_of("switched", "kept default", "uncertain", "not run"),
    "selection.reason": string,
    "reduced_precision": reduced_verdicts,
    "target_dim_choice": obj,
    "target_dim_choice.chosen": positive_int,
}


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def safe_relative(rel: Any) -> bool:
    """A file name relative to the bundle root that cannot point outside it."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and p.parts[0] not in ("", ".")


def _check_files(manifest: Mapping[str, Any], where: str) -> None:
    for rel, meta in manifest["files"].items():
        if not safe_relative(rel):
            raise BundleError(f"{where}: file entry {rel!r} points outside the bundle")
        if not isinstance(meta, Mapping) or not (isinstance(meta.get("sha256"), str)
                                                 and _HEX64.fullmatch(meta["sha256"])):
            raise BundleError(f"{where}: field 'files.{rel}.sha256' must be a sha256 hex digest")
        if not (_is_int(meta.get("bytes")) and meta["bytes"] >= 0):
            raise BundleError(f"{where}: field 'files.{rel}.bytes' must be an integer >= 0")


def _check_entries(manifest: Mapping[str, Any], section: str, where: str) -> None:
    """Every graph / engine entry names files that the manifest lists."""
    entries = manifest.get(section, {})
    if not isinstance(entries, Mapping):
        raise BundleError(f"{where}: field '{section}' must be an object")
    for key, entry in entries.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
            raise BundleError(f"{where}: field '{section}.{key}.file' is missing")
        external = entry.get("external_data", [])
        if not isinstance(external, list) or not all(isinstance(x, str) for x in external):
            raise BundleError(f"{where}: field '{section}.{key}.external_data' must be a list of file names")
        for rel in [entry["file"], *external]:
            if rel not in manifest["files"]:
                raise BundleError(f"{where}: '{section}.{key}' refers to {rel}, which is not listed in 'files'")
        if section == "graphs":
            if entry.get("kind", "features") not in GRAPH_KINDS:
                raise BundleError(f"{where}: field 'graphs.{key}.kind' must be one of {list(GRAPH_KINDS)}")
            if entry.get("dtype", "float32") not in GRAPH_DTYPES:
                raise BundleError(f"{where}: field 'graphs.{key}.dtype' must be one of {list(GRAPH_DTYPES)}")


def _check_geometry(spec: PreprocessSpec, features: Mapping[str, Any], where: str) -> None:
    """The network input the preprocessing makes is the graph's input, and its tiles fall on the
    patch grid (so maps can be stitched)."""
    if spec.input_hw is None:
        raise BundleError(f"{where}: field 'preprocess' has no fixed network input (crop 0 without size)")
    if list(spec.input_hw) != list(features["input_size"]):
        raise BundleError(f"{where}: field 'features.input_size' is {features['input_size']}, but the preprocessing "
                          f"makes {list(spec.input_hw)} inputs")
    try:
        TileLayout.for_spec(spec, features["grid"])
    except ValueError as e:
        raise BundleError(f"{where}: the preprocessing's tiles do not fit the patch grid: {e}") from None


def validate_manifest(manifest: Mapping[str, Any], where: str = "manifest.json", *, digest: bool = True) -> None:
    """Check the schema version first (a newer layout is named as such), then every field.
    ``digest``: the manifest must carry its own digest (a manifest being written has none yet)."""
    version = manifest.get("schema_version")
    if not _is_int(version):
        raise BundleError(f"{where}: field 'schema_version' is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise BundleVersionError(f"{where}: bundle schema version {version} is newer than this runtime supports "
                                 f"({SCHEMA_VERSION}); upgrade patchcore-rt to read it")
    if version < 1:
        raise BundleVersionError(f"{where}: unknown bundle schema version {version}")
    for field, check in FIELDS.items():
        if field == DIGEST_FIELD and not digest:
            continue
        try:
            value = _get(manifest, field)
        except KeyError:
            hint = " (written by an older export or edited: re-export the bundle)" if field == DIGEST_FIELD else ""
            raise BundleError(f"{where}: required field '{field}' is missing{hint}") from None
        wanted = check(value)
        if wanted:
            raise BundleError(f"{where}: field '{field}' must be {wanted}, got {_short(value)}")
    try:
        spec = PreprocessSpec.from_dict(manifest["preprocess"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: field 'preprocess' is invalid: {e}") from None
    _check_geometry(spec, manifest["features"], where)
    bank, threshold = manifest["memory_bank"], manifest["threshold"]
    if bank["dim"] != manifest["features"]["target_dim"]:
        raise BundleError(f"{where}: field 'memory_bank.dim' ({bank['dim']}) differs from 'features.target_dim' "
                          f"({manifest['features']['target_dim']})")
    wanted = check_features(manifest["features"])
    if wanted:
        raise BundleError(f"{where}: field 'features.parts' must be {wanted}")
    if threshold["value"] is not None and not (threshold["scale"] is not None and threshold["scale"] > 0):
        raise BundleError(f"{where}: field 'threshold.scale' must be > 0 when a threshold is set, "
                          f"got {_short(threshold['scale'])}")
    _check_files(manifest, where)
    for field, check in OPTIONAL_FIELDS.items():
        try:
            value = _get(manifest, field)
        except KeyError:
            continue
        wanted = check(value)
        if wanted:
            raise BundleError(f"{where}: field '{field}' must be {wanted}, got {_short(value)}")
    for field in ("file", "projection_file"):  # projection_file: optional (bank updates need it)
        if (field == "file" or field in bank) and bank[field] not in manifest["files"]:
            raise BundleError(f"{where}: 'memory_bank.{field}' {_short(bank[field])} is not listed in 'files'")
    _check_entries(manifest, "graphs", where)
    _check_entries(manifest, "engines", where)


def _short(value: Any) -> str:
    text = json.dumps(value, allow_nan=True)[:60] if not isinstance(value, str) else repr(value[:60])
    return text
