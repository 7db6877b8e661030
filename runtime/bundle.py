"""The bundle format: a folder with ``manifest.json``, ``memory_bank.npy`` and ONNX graphs.

The manifest is versioned JSON carrying everything the runtime needs (preprocessing, feature
grid, scoring settings, threshold, versions) and the sha256 of every other file. Reading checks
the schema version and every checksum and names the field or file that is wrong. Arrays are
read with ``allow_pickle=False``: nothing is ever unpickled from a bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .preprocess import PreprocessSpec

SCHEMA_VERSION = 1
FORMAT = "patchcore-rt-bundle"
MANIFEST = "manifest.json"
BANK_FILE = "memory_bank.npy"

# field path -> type(s) every manifest must carry
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "format": str,
    "name": str,
    "backbone.name": str,
    "backbone.layers": list,
    "preprocess": dict,
    "features.target_dim": int,
    "features.grid": list,
    "features.input_size": list,
    "memory_bank.file": str,
    "memory_bank.rows": int,
    "memory_bank.dim": int,
    "memory_bank.dtype": str,
    "scoring.n_reweight": int,
    "scoring.blur_sigma": (int, float),
    "threshold.value": (int, float, type(None)),
    "threshold.scale": (int, float, type(None)),
    "files": dict,
}


class BundleError(ValueError):
    """A bundle that cannot be used: missing, corrupt, edited or inconsistent."""


class BundleVersionError(BundleError):
    """A bundle written by a newer (or unknown) schema version."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


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
        PreprocessSpec.from_dict(manifest["preprocess"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: field 'preprocess' is invalid: {e}") from None


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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_array(root: Path, rel: str, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    _atomic_write_bytes(root / rel, buf.getvalue())


def finalize_manifest(root: str | Path, manifest: dict[str, Any], files: list[str]) -> Bundle:
    """Checksum ``files`` (paths relative to ``root``), record them and write the manifest last,
    atomically, so a crash never leaves a manifest pointing at half-written files."""
    root = Path(root)
    manifest = dict(manifest)
    manifest.setdefault("schema_version", SCHEMA_VERSION)
    manifest.setdefault("format", FORMAT)
    manifest["files"] = {
        rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size} for rel in sorted(files)
    }
    validate_manifest(manifest)
    _atomic_write_bytes(root / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return Bundle(root, manifest)


def find_bundles(models_dir: str | Path) -> list[Path]:
    """Bundle folders directly under ``models_dir`` (those with a manifest)."""
    d = Path(models_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if (p / MANIFEST).is_file())
