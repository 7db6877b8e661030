"""Seeded fuzzing of everything the runtime reads from outside: image bytes and bundles.

Images: 1,200 cases made from valid PNG (8/16-bit, gray, RGBA), JPEG, BMP, TIFF and WebP files
by bit flips, byte overwrites, truncations, random bytes and header edits (a PNG's IHDR or a
BMP's size fields rewritten, with the PNG CRC fixed so the lie is believed). Each goes through
``read_image`` (it returns an RGB uint8 image or raises ImageReadError; anything else is a bug)
in a child process whose peak memory is measured (bounded by the pixel cap), and all of them through one
``patchcore-rt predict`` run (one record per file, exit 0, no traceback).

Bundles: 240 re-signed manifests with a field replaced by a hostile value (wrong types, NaN,
infinities, huge numbers, deep nesting, removed keys) and bank files with edited headers; each
through ``read_bundle`` + ``memory_bank()`` + ``Predictor`` + ``patchcore-rt info``'s rendering:
a BundleError or a working bundle, never another exception.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from runtime import bundle as bio
from runtime.bundle import BundleError, read_bundle
from runtime.line.info import bundle_info, render
from runtime.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 1200
N_BUNDLES = 240
SEED = 20261201


def _seed_images(rng: np.random.Generator) -> dict[str, bytes]:
    img = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (48, 36), interpolation=cv2.INTER_CUBIC)
    out = {}
    for ext in (".png", ".jpg", ".bmp", ".tif", ".webp"):
        ok, buf = cv2.imencode(ext, img)
        assert ok
        out[f"rgb{ext}"] = buf.tobytes()
    out["gray16.png"] = cv2.imencode(".png", (img[:, :, 0].astype(np.uint16) * 257))[1].tobytes()
    out["rgba.png"] = cv2.imencode(".png", np.dstack([img, img[:, :, :1]]))[1].tobytes()
    buf = io.BytesIO()
    Image.fromarray(img).convert("P").save(buf, format="PNG")
    out["palette.png"] = buf.getvalue()
    return out


def _png_fix_crc(data: bytearray) -> None:
    """Recompute the CRC of every complete chunk (so edited headers are believed)."""
    pos = 8
    while pos + 12 <= len(data):
        n = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 8 + n
        if end + 4 > len(data):
            return
        data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4 : end])))
        pos = end + 4


def _mutate(name: str, data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(["flip", "overwrite", "truncate", "random", "header", "header", "splice"])
    b = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 64)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "truncate":
        b = b[: rng.randrange(len(b))]
    elif kind == "random":
        b = bytearray(rng.randbytes(rng.randint(0, 4096)))
    elif kind == "splice":
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b = b[:i] + b[j:] + b[i:j]
    elif name.endswith(".png"):
        w, h = rng.choice([(1, 100_000), (100_000, 1), (60_000, 60_000), (0, 10), (2**31 - 1, 2), (10_000, 9_999)])
        b[16:24] = struct.pack(">II", w, h)
        b[24] = rng.choice([1, 2, 4, 8, 16, 7])  # bit depth, some invalid
        _png_fix_crc(b)
    elif name.endswith(".bmp"):
        b[18:26] = struct.pack("<ii", rng.choice([1, 50_000, -50_000, 2**30]), rng.choice([1, 50_000, -50_000]))
    else:  # other formats: scramble the first 64 bytes' sizes
        i = rng.randrange(min(64, len(b)))
        b[i : i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
    return bytes(b)


@pytest.fixture(scope="module")
def fuzz_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-images")
    seeds = _seed_images(np.random.default_rng(SEED))
    rng = random.Random(SEED)
    names = sorted(seeds)
    for i in range(N_IMAGES):
        name = names[i % len(names)]
        (folder / f"{i:04d}-{name}").write_bytes(_mutate(name, seeds[name], rng))
    return folder


_READ_ALL = textwrap.dedent("""
    import json, resource, sys, traceback
    from pathlib import Path
    import numpy as np
    from runtime.images import ImageReadError, read_image
    counts = {"decoded": 0, "refused": 0, "bugs": []}
    for p in sorted(Path(sys.argv[1]).iterdir()):
        try:
            img = read_image(p)
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, img.shape
            counts["decoded"] += 1
        except ImageReadError:
            counts["refused"] += 1
        except BaseException as e:
            counts["bugs"].append(f"{p.name}: {type(e).__name__}: {e}")
    # VmHWM is this process's own peak (ru_maxrss would include the parent's size at fork time)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    counts["peak_rss_mib"] = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(counts))
""")


def test_read_image_on_mutated_files_never_fails_otherwise(fuzz_images):
    r = subprocess.run([sys.executable, "-c", _READ_ALL, str(fuzz_images)], cwd=REPO, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nfuzz read_image: {N_IMAGES} cases, {counts['decoded']} decoded, {counts['refused']} refused "
          f"(ImageReadError), {len(counts['bugs'])} other exceptions, peak RSS {counts['peak_rss_mib']:.0f} MiB")
    assert counts["bugs"] == []
    assert counts["decoded"] + counts["refused"] == N_IMAGES
    assert counts["decoded"] >= 50 and counts["refused"] >= 300  # the mutations reach both outcomes
    # the pixel cap bounds a decode to (bytes per decoded pixel + 3) x 100 MP; the worst case the
    # header edits reach is a 100 MP 16-bit RGB image: 600 MB decoded + 300 MB of RGB
    assert counts["peak_rss_mib"] < 1280


def test_predict_on_mutated_files_gives_one_record_each(fuzz_images, rt_bundle):
    r = subprocess.run([sys.executable, "-m", "runtime", "predict", str(rt_bundle), str(fuzz_images), "--device", "cpu",
                        "--batch-size", "16"], cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": str(REPO), "PATCHCORE_PROGRESS": "0"})
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(recs) == N_IMAGES and len({x["file"] for x in recs}) == N_IMAGES
    errors = sum(x["verdict"] == "error" for x in recs)
    print(f"\nfuzz predict: {N_IMAGES} files, {N_IMAGES - errors} scored, {errors} error records")
    assert all(("error" in x) == (x["verdict"] == "error") for x in recs)
    assert all(np.isfinite(x["score"]) for x in recs if x["verdict"] != "error")


# ============================================================================ bundles
HOSTILE = [None, True, -1, 0, 2**63, 1e308, -1e308, "x", "", [], {}, [1, 2, 3], {"a": 1}, [[[[[[]]]]]],
           "NaN", "__NAN__", "__INF__", "__DEEP__", "__HUGE__"]


def _paths(m, prefix=""):
    """Every dotted path into the manifest's objects (lists are leaves)."""
    for k, v in m.items():
        p = f"{prefix}{k}"
        yield p
        if isinstance(v, dict):
            yield from _paths(v, p + ".")


def _set(m, dotted, value):
    *head, last = dotted.split(".")
    for part in head:
        m = m[part]
    if value == "__DELETE__":
        del m[last]
    else:
        m[last] = value


def _write_resigned(root: Path, m: dict) -> None:
    body = {k: v for k, v in m.items() if k != bio.DIGEST_FIELD}
    m[bio.DIGEST_FIELD] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                    ensure_ascii=True).encode()).hexdigest()
    text = json.dumps(m)
    text = (text.replace('"__NAN__"', "NaN").replace('"__INF__"', "-Infinity").replace('"__HUGE__"', "1e999")
            .replace('"__DEEP__"', "[" * 50_000 + "]" * 50_000))
    (root / bio.MANIFEST).write_text(text)


def _bank_variant(bank_bytes: bytes, rng: random.Random) -> bytes:
    b = bytearray(bank_bytes)
    kind = rng.choice(["shape", "dtype", "order", "truncate", "garbage", "version", "headerlen"])
    header_end = 10 + struct.unpack("<H", b[8:10])[0]
    header = b[10:header_end].decode("latin1")
    if kind == "shape":
        header = header.replace("'shape': (", f"'shape': ({rng.choice([0, 1, 2**40, 2**62, 7])}, ", 1)
    elif kind == "dtype":
        header = header.replace("'<f4'", rng.choice(["'|O'", "'<f8'", "'>f4'", "'<U3'", "'V8'", "'<f2'"]))
    elif kind == "order":
        header = header.replace("False", "True")
    elif kind == "truncate":
        return bytes(b[: rng.randrange(len(b))])
    elif kind == "garbage":
        header = "{" + "".join(rng.choice("()[]{}'\":,0123456789abcx ") for _ in range(len(header) - 2)) + "}"
    elif kind == "version":
        b[6] = rng.choice([0, 4, 255])
    else:
        b[8:10] = struct.pack("<H", rng.choice([0, 1, 65535]))
        return bytes(b)
    enc = header.encode("latin1")
    return bytes(b[:8]) + struct.pack("<H", len(enc)) + enc + bytes(b[header_end:])


def test_hostile_manifests_and_bank_headers_never_escape_as_other_errors(rt_bundle, tmp_path):
    rng = random.Random(SEED)
    base = json.loads((rt_bundle / bio.MANIFEST).read_text())
    bank_bytes = (rt_bundle / bio.BANK_FILE).read_bytes()
    paths = [p for p in _paths(base) if p != bio.DIGEST_FIELD]
    outcome = {"refused": 0, "worked": 0, "bugs": []}
    work = tmp_path / "b"
    for i in range(N_BUNDLES):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(rt_bundle, work)
        m = json.loads(json.dumps(base))
        if i % 3 == 2:  # a bank with an edited header, re-signed
            data = _bank_variant(bank_bytes, rng)
            (work / bio.BANK_FILE).write_bytes(data)
            m["files"][bio.BANK_FILE] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        else:
            for _ in range(rng.randint(1, 3)):
                path = rng.choice(paths)
                try:
                    _set(m, path, rng.choice(HOSTILE + ["__DELETE__"]))
                except (KeyError, TypeError):
                    pass  # an earlier edit removed or replaced the parent
        _write_resigned(work, m)
        try:
            b = read_bundle(work)
            b.memory_bank()
            Predictor(b, device="cpu")
            Console(file=io.StringIO()).print(render(bundle_info(work)))  # `patchcore-rt info` shows every field
            outcome["worked"] += 1
        except BundleError:
            outcome["refused"] += 1
        except BaseException as e:  # noqa: BLE001 - this is what the test looks for
            outcome["bugs"].append(f"case {i}: {type(e).__name__}: {str(e)[:200]}")
    print(f"\nfuzz bundles: {N_BUNDLES} cases, {outcome['refused']} refused (BundleError), {outcome['worked']} "
          f"still valid, {len(outcome['bugs'])} other exceptions")
    assert outcome["bugs"] == [], "\n".join(outcome["bugs"])
    assert outcome["refused"] >= N_BUNDLES // 2
