"""The bundle format: a folder with ``manifest.json``, ``memory_bank.npy`` and ONNX graphs.

The manifest is versioned JSON carrying everything the runtime needs (preprocessing, feature
grid, scoring settings, threshold, versions) and the sha256 of every other file. Reading checks
the schema version and every checksum and names the field or file that is wrong. Arrays are
read with ``allow_pickle=False``: nothing is ever unpickled from a bundle.

The manifest also carries ``manifest_sha256``, the digest of its own canonical JSON without that
field, so a hand-edited manifest (a changed threshold, say) is refused like any other edited
file. Tools that change a manifest go through :func:`finalize_manifest`, which recomputes it.

Layout::

    manifest.json          schema, settings, checksums (written last, atomically)
    memory_bank.npy        (rows, dim) float32 or float16
    features_fp32.onnx     graphs listed under "graphs" (ONNX external data beside them when > 2 GB)
    engines/*.plan         optional TensorRT engines listed under "engines" (built for one GPU)
    engines/cache/         engines built on the target by the runtime; not part of the bundle
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import errors
from .fileio import atomic_write, sha256_file
from .geometry import TileLayout
from .preprocess import PreprocessSpec

SCHEMA_VERSION = 1
FORMAT = "patchcore-rt-bundle"
MANIFEST = "manifest.json"
BANK_FILE = "memory_bank.npy"
ENGINE_DIR = "engines"
DIGEST_FIELD = "manifest_sha256"
BANK_DTYPES = ("float32", "float16")

# field path -> type(s) every manifest must carry
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "format": str,
    "name": str,
    "backbone.name": str,
    "backbone.weights_tag": str,
    "backbone.layers": list,
    "preprocess": dict,
    "features.target_dim": int,
    "features.grid": list,
    "features.input_size": list,
    "memory_bank.file": str,
    "memory_bank.rows": int,
    "memory_bank.dim": int,
    "memory_bank.dtype": str,
    "scoring.k": int,
    "scoring.n_reweight": int,
    "scoring.blur_sigma": (int, float),
    "threshold.value": (int, float, type(None)),
    "threshold.scale": (int, float, type(None)),
    "versions": dict,
    "files": dict,
}


class BundleError(ValueError):
    """A bundle that cannot be used: missing, corrupt, edited or inconsistent."""

    exit_code = errors.BAD_BUNDLE


class BundleVersionError(BundleError):
    """A bundle written by a newer (or unknown) schema version."""


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace), without its own
    digest field. JSON floats round-trip exactly, so reading and re-dumping gives the same text."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_entries(manifest: Mapping[str, Any], section: str, where: str) -> None:
    """Every graph / engine entry names a file that the manifest lists."""
    entries = manifest.get(section, {})
    if not isinstance(entries, Mapping):
        raise BundleError(f"{where}: field '{section}' must be an object")
    for key, entry in entries.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
            raise BundleError(f"{where}: field '{section}.{key}.file' is missing")
        for rel in [entry["file"], *entry.get("external_data", [])]:
            if rel not in manifest["files"]:
                raise BundleError(f"{where}: '{section}.{key}' refers to {rel}, which is not listed in 'files'")


def validate_manifest(manifest: Mapping[str, Any], where: str = MANIFEST) -> None:
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise BundleError(f"{where}: field 'schema_version' is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise BundleVersionError(
            f"{where}: bundle schema version {version} is newer than this runtime supports "
            f"({SCHEMA_VERSION}); upgrade patchcore-rt to read it"
        )
    if version < 1:
        raise BundleVersionError(f"{where}: unknown bundle schema version {version}")
    for field, types in _REQUIRED.items():
        try:
            value = _get(manifest, field)
        except KeyError:
            raise BundleError(f"{where}: required field '{field}' is missing") from None
        if not isinstance(value, types) or isinstance(value, bool) and types is int:
            raise BundleError(f"{where}: field '{field}' has the wrong type ({type(value).__name__})")
    if manifest["format"] != FORMAT:
        raise BundleError(f"{where}: field 'format' is {manifest['format']!r}, expected {FORMAT!r}")
    try:
        spec = PreprocessSpec.from_dict(manifest["preprocess"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: field 'preprocess' is invalid: {e}") from None
    _check_geometry(spec, manifest["features"], where)
    if manifest["memory_bank"]["dtype"] not in BANK_DTYPES:
        raise BundleError(
            f"{where}: field 'memory_bank.dtype' is {manifest['memory_bank']['dtype']!r}; expected one of {BANK_DTYPES}"
        )
    for rel, meta in manifest["files"].items():
        if not isinstance(meta, Mapping) or not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("bytes"), int):
            raise BundleError(f"{where}: field 'files.{rel}' needs 'sha256' and 'bytes'")
    if manifest["memory_bank"]["file"] not in manifest["files"]:
        raise BundleError(f"{where}: 'memory_bank.file' {manifest['memory_bank']['file']} is not listed in 'files'")
    _check_entries(manifest, "graphs", where)
    _check_entries(manifest, "engines", where)


def _check_geometry(spec: PreprocessSpec, features: Mapping[str, Any], where: str) -> None:
    """The network input the preprocessing makes is the graph's input, and its tiles fall on the
    patch grid (so maps can be stitched)."""
    if spec.input_hw is None:
        raise BundleError(f"{where}: field 'preprocess' has no fixed network input (crop 0 without size)")
    if list(spec.input_hw) != list(features["input_size"]):
        raise BundleError(f"{where}: field 'features.input_size' is {features['input_size']}, but the preprocessing "
                          f"makes {list(spec.input_hw)} inputs")
    grid = features["grid"]
    if len(grid) != 2 or not all(isinstance(g, int) and g > 0 for g in grid):
        raise BundleError(f"{where}: field 'features.grid' must be two positive integers, got {grid}")
    try:
        TileLayout.for_spec(spec, grid)
    except ValueError as e:
        raise BundleError(f"{where}: the preprocessing's tiles do not fit the patch grid: {e}") from None


# Keys of the identity every exported graph carries in its ONNX metadata_props (JSON values):
# written by export, checked against the manifest by the runtime when it opens the graph.
GRAPH_META = {"bundle": "patchcore_rt.bundle", "schema_version": "patchcore_rt.schema_version",
              "backbone": "patchcore_rt.backbone", "preprocess": "patchcore_rt.preprocess",
              "graph": "patchcore_rt.graph"}


def graph_metadata(manifest: Mapping[str, Any], graph: str) -> dict[str, Any]:
    """The identity written into graph ``graph`` of the bundle described by ``manifest``."""
    return {GRAPH_META["bundle"]: manifest["name"], GRAPH_META["schema_version"]: manifest["schema_version"],
            GRAPH_META["backbone"]: manifest["backbone"]["name"], GRAPH_META["preprocess"]: manifest["preprocess"],
            GRAPH_META["graph"]: graph}


def check_graph_metadata(stored: Mapping[str, str], manifest: Mapping[str, Any], graph: str, where: str) -> None:
    """Refuse a graph whose stored identity (``metadata_props``, JSON strings) disagrees with the
    manifest: a graph of another bundle, another preprocessing or another graph key."""
    want = graph_metadata(manifest, graph)
    for key, value in want.items():
        if key not in stored:
            raise BundleError(f"{where}: graph metadata lacks '{key}' (not written by patchcore-rt export)")
        try:
            have = json.loads(stored[key])
        except (TypeError, ValueError):
            raise BundleError(f"{where}: graph metadata '{key}' is not JSON") from None
        if have != value:
            raise BundleError(f"{where}: graph metadata '{key}' is {have!r}, the manifest says {value!r}")


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def bundle_id(self) -> str:
        """Short id that changes whenever any file of the bundle changes."""
        digest = hashlib.sha256(
            json.dumps(self.manifest["files"], sort_keys=True).encode()
        ).hexdigest()
        return f"{self.name}@{digest[:12]}"

    def path(self, rel: str) -> Path:
        if rel not in self.manifest["files"]:
            raise BundleError(f"{self.root}: {rel} is not listed in {MANIFEST}")
        return self.root / rel

    def memory_bank(self) -> np.ndarray:
        mb = self.manifest["memory_bank"]
        path = self.path(mb["file"])
        try:
            bank = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise BundleError(f"{path}: not a plain numpy array ({e})") from None
        if bank.shape != (mb["rows"], mb["dim"]) or str(bank.dtype) != mb["dtype"]:
            raise BundleError(
                f"{path}: array is {bank.shape} {bank.dtype}, manifest says "
                f"({mb['rows']}, {mb['dim']}) {mb['dtype']}"
            )
        return bank

    def graph(self, key: str) -> Path | None:
        g = self.manifest.get("graphs", {}).get(key)
        return self.path(g["file"]) if g else None

    def graph_info(self, key: str) -> dict[str, Any]:
        """The manifest entry of graph ``key``; a BundleError naming the graphs present if absent."""
        graphs = self.manifest.get("graphs", {})
        if key not in graphs:
            have = ", ".join(sorted(graphs)) or "none"
            raise BundleError(f"{self.root}: bundle has no graph {key!r} (graphs: {have}); run export first")
        return graphs[key]

    @property
    def files(self) -> list[str]:
        return sorted(self.manifest["files"])


def read_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Open and check a bundle folder. ``verify`` recomputes every file's sha256."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle folder not found: {root}")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: expected a JSON object")
    validate_manifest(manifest, str(mpath))
    recorded = manifest.get(DIGEST_FIELD)
    if recorded is not None and recorded != manifest_digest(manifest):
        raise BundleError(
            f"{mpath}: edited after it was written (its content no longer matches '{DIGEST_FIELD}'); "
            "re-export the bundle instead of editing the manifest by hand"
        )
    for rel, meta in manifest["files"].items():
        p = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BundleError(f"{mpath}: file entry {rel!r} points outside the bundle")
        if not p.is_file():
            raise BundleError(f"{p}: listed in {MANIFEST} but missing")
        if p.stat().st_size != meta.get("bytes"):
            raise BundleError(f"{p}: size {p.stat().st_size} bytes, manifest says {meta.get('bytes')} (truncated or edited)")
        if verify and sha256_file(p) != meta.get("sha256"):
            raise BundleError(f"{p}: sha256 does not match the manifest (file edited or corrupt)")
    return Bundle(root, manifest)


def write_array(root: Path, rel: str, array: np.ndarray) -> None:
    if array.dtype == object:
        raise BundleError(f"{rel}: object arrays cannot be stored (they would need pickle)")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write(Path(root) / rel, buf.getvalue())


def write_file(root: str | Path, rel: str, data: bytes) -> Path:
    """Write ``data`` to ``root/rel`` atomically (parent folders created). Returns the path."""
    path = Path(root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    return path


def finalize_manifest(root: str | Path, manifest: dict[str, Any], files: list[str]) -> Bundle:
    """Checksum ``files`` (paths relative to ``root``), record them and write the manifest last,
    atomically, so a crash never leaves a manifest pointing at half-written files."""
    root = Path(root)
    manifest = dict(manifest)
    manifest.setdefault("schema_version", SCHEMA_VERSION)
    manifest.setdefault("format", FORMAT)
    manifest["files"] = {
        rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size} for rel in sorted(set(files))
    }
    validate_manifest(manifest)
    manifest[DIGEST_FIELD] = manifest_digest(manifest)
    atomic_write(root / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return Bundle(root, manifest)


def find_bundles(models_dir: str | Path) -> list[Path]:
    """Bundle folders directly under ``models_dir`` (those with a manifest)."""
    d = Path(models_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if (p / MANIFEST).is_file())
