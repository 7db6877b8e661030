"""The bundle format: a folder with ``manifest.json``, ``memory_bank.npy`` and ONNX graphs.

The manifest is versioned JSON carrying everything the runtime needs (preprocessing, feature
grid, scoring settings, threshold, versions) and the sha256 of every other file. Reading checks
the schema version and every checksum and names the field or file that is wrong. Arrays are
read with ``allow_pickle=False``: nothing is ever unpickled from a bundle.

A bundle written by ``update`` (see :mod:`runtime.update`) carries ``lineage``: one entry per
update, oldest first (parent bundle id, the images added and their sha256, rows, calibration).

The manifest also carries ``manifest_sha256`` (required), the digest of its own canonical JSON
without that field, so a hand-edited manifest (a changed threshold, say) is refused like any
other edited file; the bundle id is taken from it. Tools that change a manifest go through
:func:`finalize_manifest`, which recomputes it. The schema and its field checks are
:mod:`runtime.manifest`. Files are read only when they are regular files inside the bundle
(no symlinks, devices or FIFOs), and the bank's .npy header is checked against the manifest
before its data is read.

Layout::

    manifest.json          schema, settings, checksums (written last, atomically)
    memory_bank.npy        (rows, dim) float32 or float16
    coreset_projection.npy (proj_dim, dim) float32: the coreset's random projection (bank updates)
    features_fp32.onnx     graphs listed under "graphs" (ONNX external data beside them when > 2 GB)
    engines/*.plan         optional TensorRT engines listed under "engines" (built for one GPU)
    engines/cache/         engines built on the target by the runtime; not part of the bundle
"""

from __future__ import annotations

import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .fileio import atomic_write, sha256_file
from .manifest import (BANK_DTYPES, DIGEST_FIELD, FORMAT, SCHEMA_VERSION, BundleError, BundleVersionError,
                       manifest_digest, parse_manifest, validate_manifest)
from .preprocess import PreprocessSpec

__all__ = ["BANK_DTYPES", "BANK_FILE", "DIGEST_FIELD", "ENGINE_DIR", "FORMAT", "MANIFEST", "PROJECTION_FILE", "SCHEMA_VERSION", "Bundle",
           "BundleError", "BundleVersionError", "check_graph_metadata", "finalize_manifest", "find_bundles",
           "graph_metadata", "manifest_digest", "read_bundle", "validate_manifest", "write_array", "write_file"]

MANIFEST = "manifest.json"
BANK_FILE = "memory_bank.npy"
PROJECTION_FILE = "coreset_projection.npy"
ENGINE_DIR = "engines"
MAX_HEADER_BYTES = 1 << 16  # an .npy header of a plain 2-D array is ~128 bytes
MAX_MANIFEST_READ = (16 << 20) + 1  # one byte over the manifest limit, so parse_manifest can name it


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
        """``name@`` + the start of the manifest's digest: it changes with any field of the
        manifest and, through the checksums the manifest holds, with any byte of any file."""
        return f"{self.name}@{self.manifest[DIGEST_FIELD][:12]}"

    def path(self, rel: str) -> Path:
        if rel not in self.manifest["files"]:
            raise BundleError(f"{self.root}: {rel} is not listed in {MANIFEST}")
        return self.root / rel

    def _array(self, rel: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A 2-D array file of the bundle, read header first: dtype, shape and file size must
        match the manifest before any data is read, and every value must be finite."""
        path = self.path(rel)
        want = np.dtype(dtype).newbyteorder("<")
        n = int(np.prod(shape))
        with open_regular(path, self.root) as f:
            got, offset = _npy_header(f, path, want)
            if got != shape:
                raise BundleError(f"{path}: array is {got}, manifest says {shape}")
            size = os.fstat(f.fileno()).st_size
            if size != offset + n * want.itemsize:
                raise BundleError(f"{path}: {size} bytes, a {shape} {want.name} array needs {offset + n * want.itemsize}")
            arr = np.fromfile(f, dtype=want, count=n).reshape(shape)
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise BundleError(f"{path}: {int(bad.sum())} non-finite value(s) (NaN or infinity) in row(s) "
                              f"{', '.join(map(str, rows[:5]))}{' ...' if len(rows) > 5 else ''}")
        return arr.astype(want.newbyteorder("="), copy=False)

    def memory_bank(self) -> np.ndarray:
        mb = self.manifest["memory_bank"]
        return self._array(mb["file"], (mb["rows"], mb["dim"]), mb["dtype"])

    def coreset_projection(self) -> np.ndarray | None:
        """The (proj_dim, dim) float32 map the coreset was selected in (``projected = x @ W.T``);
        None for bundles written before it was stored."""
        mb = self.manifest["memory_bank"]
        rel = mb.get("projection_file")
        if rel is None:
            return None
        dim = mb["dim"]
        return self._array(rel, (min(mb.get("projection_dim", dim), dim), dim), "float32")

    @property
    def lineage(self) -> list[dict[str, Any]]:
        """The updates that led to this bundle, oldest first (empty for a fitted bundle)."""
        return list(self.manifest.get("lineage", []))

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


def open_regular(path: Path, root: Path):
    """Open ``path`` for reading when it is a regular file inside ``root`` and not a symlink;
    a BundleError otherwise (nothing of a bundle is read through a link or from a device)."""
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
        raise BundleError(f"{path}: resolves outside the bundle folder {root}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise BundleError(f"{path}: listed in {MANIFEST} but missing") from None
    except OSError as e:
        if os.path.islink(path):
            raise BundleError(f"{path}: is a symbolic link; a bundle's files must be regular files") from None
        raise BundleError(f"{path}: cannot read ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BundleError(f"{path}: not a regular file; a bundle's files must be regular files")
    return os.fdopen(fd, "rb")


def _npy_header(f, path: Path, want: np.dtype) -> tuple[tuple[int, ...], int]:
    """(shape, data offset) of an open .npy file whose header must declare ``want`` in C order."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f, max_header_size=MAX_HEADER_BYTES)
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, TokenError ...
        raise BundleError(f"{path}: not a plain numpy array ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise BundleError(f"{path}: not a plain numpy array (object dtype: it would need pickle)")
    if dtype != want or fortran:
        raise BundleError(f"{path}: array is {dtype.str}{' Fortran-ordered' if fortran else ''}, "
                          f"manifest says {want.str} in C order")
    return tuple(int(n) for n in shape), f.tell()


def read_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Open and check a bundle folder. ``verify`` recomputes every file's sha256.

    ``root`` may be a symlink (a deployment may flip one between versions), but no file inside
    the bundle may be one, nor resolve outside it."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle folder not found: {root}")
    mpath = root / MANIFEST
    if not os.path.lexists(mpath):
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing")
    with open_regular(mpath, root) as f:
        data = f.read(MAX_MANIFEST_READ)
    manifest = parse_manifest(data, str(mpath))
    validate_manifest(manifest, str(mpath))
    if manifest[DIGEST_FIELD] != manifest_digest(manifest):
        raise BundleError(
            f"{mpath}: edited after it was written (its content no longer matches '{DIGEST_FIELD}'); "
            "re-export the bundle instead of editing the manifest by hand"
        )
    for rel, meta in manifest["files"].items():
        p = root / rel
        with open_regular(p, root) as f:
            size = os.fstat(f.fileno()).st_size
            if size != meta["bytes"]:
                raise BundleError(f"{p}: size {size} bytes, manifest says {meta['bytes']} (truncated or edited)")
        if verify and sha256_file(p) != meta["sha256"]:
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
    validate_manifest(manifest, digest=False)
    manifest[DIGEST_FIELD] = manifest_digest(manifest)
    atomic_write(root / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return Bundle(root, manifest)


def find_bundles(models_dir: str | Path) -> list[Path]:
    """Bundle folders directly under ``models_dir`` (those with a manifest)."""
    d = Path(models_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if (p / MANIFEST).is_file())
