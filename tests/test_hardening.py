"""Hostile input, faults and tampering: each case an adversarial pass found (a traceback, a crash
loop on restart, gigabytes of memory from a tiny file, or a tampered bundle that runs under its
old id) and what the runtime does now. Numbers in the test names follow the issue's list."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import bundle as bio
from runtime.bundle import BundleError, read_bundle
from runtime.errors import BAD_BUNDLE, OUTPUT, USAGE, OutputError
from runtime.images import ImageLimits, ImageReadError, read_image
from runtime.line.journal import Journal, Key
from runtime.line.records import Item, score_items
from runtime.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PATCHCORE_PROGRESS": "0"}


def _rt(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _records(r: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def _no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr, r.stderr[-2000:]


@pytest.fixture
def bundle(rt_bundle, tmp_path) -> Path:
    """A private copy of the runtime tests' bundle, free to damage."""
    return Path(shutil.copytree(rt_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="module")
def predictor_factory(rt_bundle):
    p = Predictor(rt_bundle, device="cpu")
    return lambda: p


@pytest.fixture(scope="module")
def good_png(rt_bundle) -> bytes:
    return next((rt_bundle.parent / "data" / "brick" / "test" / "good").iterdir()).read_bytes()


def resign(root: Path, mutate) -> None:
    """Edit the manifest and recompute its digest, as an attacker with write access would
    (JSON's NaN constants allowed in the digest, since an attacker need not follow our rules)."""
    m = json.loads((root / bio.MANIFEST).read_text())
    mutate(m)
    body = {k: v for k, v in m.items() if k != bio.DIGEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    m[bio.DIGEST_FIELD] = hashlib.sha256(text.encode()).hexdigest()
    (root / bio.MANIFEST).write_text(json.dumps(m, indent=1))


def resign_file(root: Path, rel: str, data: bytes) -> None:
    """Replace one file and re-sign the manifest so its checksum matches."""
    (root / rel).write_bytes(data)

    def fix(m):
        m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    resign(root, fix)


# ============================================================================ bundle (1-8)
def test_1_digest_is_required(bundle):
    m = json.loads((bundle / bio.MANIFEST).read_text())
    del m[bio.DIGEST_FIELD]
    m["threshold"]["value"] = 1e9  # every image "ok"
    (bundle / bio.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="'manifest_sha256' is missing"):
        read_bundle(bundle)


@pytest.mark.parametrize("victim", [bio.BANK_FILE, bio.MANIFEST])
def test_2_symlinks_out_of_the_bundle_are_not_followed(bundle, tmp_path, victim):
    outside = tmp_path / "outside"
    outside.write_bytes((bundle / victim).read_bytes())  # same bytes: only the link is wrong
    (bundle / victim).unlink()
    (bundle / victim).symlink_to(outside)
    with pytest.raises(BundleError, match=f"{victim}: (resolves outside|is a symbolic link)"):
        read_bundle(bundle)


def test_2_a_symlink_inside_the_bundle_is_refused_too(bundle):
    (bundle / "copy.npy").write_bytes((bundle / bio.BANK_FILE).read_bytes())
    (bundle / bio.BANK_FILE).unlink()
    (bundle / bio.BANK_FILE).symlink_to("copy.npy")
    with pytest.raises(BundleError, match="symbolic link"):
        read_bundle(bundle)


def test_2_the_bundle_folder_itself_may_be_a_symlink(bundle, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(bundle)
    assert read_bundle(link).bundle_id == read_bundle(bundle).bundle_id


def test_3_a_bank_header_declaring_a_huge_shape_is_refused_before_reading(bundle):
    """A re-signed .npy whose header says (2**40, dim): refused from the header and file size,
    without allocating anything (today: MemoryError)."""
    m = read_bundle(bundle).manifest
    dim = m["memory_bank"]["dim"]
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**40, dim)}
    h = repr(header).encode()
    h += b" " * (64 - (10 + len(h) + 1) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + b"\0" * 4096
    resign_file(bundle, bio.BANK_FILE, data)
    resign(bundle, lambda m: m["memory_bank"].update(rows=2**40))
    with pytest.raises(BundleError, match=r"memory_bank.npy: \d+ bytes, a \(1099511627776, \d+\) float32 array needs"):
        read_bundle(bundle).memory_bank()


def test_3_header_dtype_or_order_other_than_the_manifest_is_refused(bundle):
    bank = read_bundle(bundle).memory_bank()
    for arr, pattern in ((bank.astype(np.float64), "<f8"), (np.asfortranarray(bank), "Fortran")):
        import io

        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        resign_file(bundle, bio.BANK_FILE, buf.getvalue())
        with pytest.raises(BundleError, match=pattern):
            read_bundle(bundle).memory_bank()


MANIFEST_EDITS = {
    "grid [27, 28]": (lambda m: m["features"].update(grid=[27, 28]), "graph gives"),
    "grid []": (lambda m: m["features"].update(grid=[]), "features.grid"),
    "grid strings": (lambda m: m["features"].update(grid=["a", "b"]), "features.grid"),
    "input_size [0, 0]": (lambda m: m["features"].update(input_size=[0, 0]), "features.input_size"),
    "n_reweight 1": (lambda m: m["scoring"].update(n_reweight=1), "scoring.n_reweight"),
    "scale 0": (lambda m: m["threshold"].update(scale=0), "threshold.scale"),
    "scale null": (lambda m: m["threshold"].update(scale=None), "threshold.scale"),
    "blur_sigma NaN": (lambda m: m["scoring"].update(blur_sigma=float("nan")), "NaN is not a JSON number"),
    "threshold Infinity": (lambda m: m["threshold"].update(value=float("inf")), "Infinity is not a JSON number"),
    "threshold 1e999": (lambda m: m["threshold"].update(value="__1e999__"), "1e999 is out of range"),
    "external_data 5": (lambda m: m["graphs"]["features_fp32"].update(external_data=5), "external_data"),
    "bank dim != target_dim": (lambda m: m["features"].update(target_dim=7), "memory_bank.dim"),
    "rows 0": (lambda m: m["memory_bank"].update(rows=0), "memory_bank.rows"),
    "k 2": (lambda m: m["scoring"].update(k=2), "scoring.k"),
    "file outside": (lambda m: m["files"].update({"../x": {"sha256": "0" * 64, "bytes": 1}}), "outside the bundle"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_4_every_field_is_checked(bundle, case):
    mutate, pattern = MANIFEST_EDITS[case]
    resign(bundle, mutate)
    text = (bundle / bio.MANIFEST).read_text().replace('"__1e999__"', "1e999")
    (bundle / bio.MANIFEST).write_text(text)
    with pytest.raises(BundleError, match=pattern):
        Predictor(bundle, device="cpu")


def test_4_absurd_nesting_and_size_are_refused(bundle):
    (bundle / bio.MANIFEST).write_text('{"schema_version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(BundleError, match="nested too deeply"):
        read_bundle(bundle)
    (bundle / bio.MANIFEST).write_bytes(b" " * (17 << 20))
    with pytest.raises(BundleError, match="too large for a manifest"):
        read_bundle(bundle)


def test_4_and_6_bad_bundles_exit_3_with_one_line(bundle, good_png, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(good_png)
    resign(bundle, lambda m: m["features"].update(grid=[27, 28]))
    r = _rt("predict", str(bundle), str(img), "--device", "cpu")
    _no_traceback(r)
    assert r.returncode == BAD_BUNDLE and "graph gives" in r.stderr


def test_5_non_finite_values_in_the_bank_are_refused(bundle):
    import io

    bank = read_bundle(bundle).memory_bank().copy()
    bank[3, 5] = np.inf
    buf = io.BytesIO()
    np.save(buf, bank, allow_pickle=False)
    resign_file(bundle, bio.BANK_FILE, buf.getvalue())
    with pytest.raises(BundleError, match=r"1 non-finite value\(s\).*row\(s\) 3"):
        Predictor(bundle, device="cpu")


class _NanPredictor:
    """A predictor whose model gives NaN for every second image."""

    def prepare(self, image):
        return image

    def predict_prepared(self, images):
        from runtime.postprocess import Prediction

        n = len(images)
        scores = np.array([np.nan if i % 2 else 0.1 for i in range(n)])
        return Prediction(scores, np.zeros((n, 2, 2), np.float32), np.zeros((n, 4, 4), np.float32),
                          np.clip(scores, 0, 1), scores >= 0.5)


def test_5_a_non_finite_score_is_an_error_record_never_a_crash(good_png):
    from runtime.line.records import dumps
    from runtime.line.records import record

    items = [Item(f"{i}.png", data=good_png) for i in range(4)]
    outcomes = score_items(_NanPredictor(), items)
    assert [o.verdict for o in outcomes] == ["ok", "error", "ok", "error"]
    assert "non-finite anomaly score" in outcomes[1].error
    for o in outcomes:
        json.loads(dumps(record(o, "b@1")))  # allow_nan=False: would raise on a NaN score


def test_6_a_corrupt_graph_that_passes_the_checksums_is_a_bad_bundle(bundle, good_png, tmp_path):
    graph = bundle / "features_fp32.onnx"
    resign_file(bundle, "features_fp32.onnx", graph.read_bytes()[: graph.stat().st_size // 3])
    with pytest.raises(BundleError, match="features_fp32.onnx: onnxruntime cannot load this graph"):
        Predictor(bundle, device="cpu")
    img = tmp_path / "a.png"
    img.write_bytes(good_png)
    r = _rt("predict", str(bundle), str(img), "--device", "cpu")
    _no_traceback(r)
    assert r.returncode == BAD_BUNDLE and "features_fp32.onnx" in r.stderr


def test_7_the_bundle_id_changes_with_any_field(bundle):
    before = read_bundle(bundle).bundle_id
    resign(bundle, lambda m: m["threshold"].update(value=m["threshold"]["value"] * 2))
    after = read_bundle(bundle).bundle_id
    assert before != after and before.split("@")[0] == after.split("@")[0]


def test_8_a_bare_name_prefers_the_models_folder_and_says_so(rt_bundle, tmp_path, good_png):
    (tmp_path / "models").mkdir()
    shutil.copytree(rt_bundle, tmp_path / "models" / "demo")
    (tmp_path / "demo").mkdir()  # a look-alike folder here (not even a bundle)
    (tmp_path / "a.png").write_bytes(good_png)
    r = _rt("predict", "demo", "a.png", "--device", "cpu", cwd=tmp_path)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert "using models/demo (a folder ./demo exists too" in r.stderr
    r = _rt("predict", "./demo", "a.png", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == BAD_BUNDLE and "manifest.json is missing" in r.stderr


# ============================================================================ images (9-11)
def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG of zeros (8-bit gray), compressed to a few hundred KB at most."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_9_pixel_cap_is_read_from_the_header():
    bomb = _png_header_only(12_000, 10_000)  # 120 MP of zeros: ~120 KB compressed
    assert len(bomb) < 1 << 20
    with pytest.raises(ImageReadError, match="12000x10000 pixels is over the 100000000-pixel limit"):
        from runtime.images import decode_image

        decode_image(bomb, "bomb.png")
    with pytest.raises(ImageReadError, match="over the 1000-pixel limit"):
        from runtime.images import decode_image

        decode_image(_png_header_only(40, 40), "small.png", ImageLimits(max_pixels=1000))


def _peak_rss_mib(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """Peak RSS of ``python -m runtime *args`` (its own, measured by a parent that runs only it)."""
    code = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(json.dumps({'rc': r.returncode, 'out': r.stdout, 'err': r.stderr, "
            "'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    p = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "runtime", *args], cwd=cwd, env=_env(),
                       capture_output=True, text=True, timeout=600)
    d = json.loads(p.stdout)
    return d["kb"] / 1024, subprocess.CompletedProcess(args, d["rc"], d["out"], d["err"])


@pytest.mark.slow
def test_9_bombs_cost_little_memory_and_give_error_records(rt_bundle, tmp_path, good_png):
    (tmp_path / "zeros-30000.png").write_bytes(_png_header_only(30_000, 30_000))
    (tmp_path / "line-1x20000.png").write_bytes(_png_header_only(20_000, 1))
    (tmp_path / "good.png").write_bytes(good_png)
    rss, r = _peak_rss_mib(["predict", str(rt_bundle), str(tmp_path), "--device", "cpu", "--batch-size", "8"], tmp_path)
    _no_traceback(r)
    recs = {Path(x["file"]).name: x for x in _records(r)}
    assert r.returncode == 0 and len(recs) == 3, r.stderr
    assert recs["zeros-30000.png"]["verdict"] == "error" and "pixel limit" in recs["zeros-30000.png"]["error"]
    assert recs["line-1x20000.png"]["verdict"] in ("error", "ok", "ng")
    assert recs["good.png"]["verdict"] in ("ok", "ng")
    assert rss < 1024, f"peak RSS {rss:.0f} MiB"


def test_10_devices_fifos_and_links_to_them_are_error_records_at_once(rt_bundle, tmp_path, good_png):
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "good.png").write_bytes(good_png)
    r = _rt("predict", str(rt_bundle), str(tmp_path / "zero.png"), str(tmp_path / "fifo.png"),
            str(tmp_path / "good.png"), "--device", "cpu", timeout=120)
    _no_traceback(r)
    recs = _records(r)
    assert r.returncode == 0 and [Path(x["file"]).name for x in recs] == ["zero.png", "fifo.png", "good.png"]
    assert all("not a regular file" in x["error"] for x in recs[:2])
    assert recs[2]["verdict"] in ("ok", "ng")


def test_10_byte_cap(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 5000)
    with pytest.raises(ImageReadError, match="5000 bytes is over the 4000-byte limit"):
        read_image(big, ImageLimits(max_bytes=4000))


def test_11_an_empty_folder_given_as_a_file_gets_a_record_and_a_warning(rt_bundle, tmp_path, good_png):
    (tmp_path / "x.png").mkdir()
    (tmp_path / "good.png").write_bytes(good_png)
    r = _rt("predict", str(rt_bundle), str(tmp_path / "x.png"), str(tmp_path / "good.png"), "--device", "cpu")
    _no_traceback(r)
    recs = _records(r)
    assert [Path(x["file"]).name for x in recs] == ["x.png", "good.png"]
    assert recs[0]["verdict"] == "error" and "is a directory" in recs[0]["error"]
    assert "x.png: folder holds no image files" in r.stderr


# ============================================================================ watch (12-19)
def _watch(folder: Path, bundle: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return _rt("watch", str(folder), "--bundle", str(bundle), "--once", "--settle", "0", "--poll", "0.05",
               "--device", "cpu", *args, timeout=timeout)


def _journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_12_names_that_are_not_utf8_round_trip_through_the_journal(rt_bundle, tmp_path, good_png):
    inc = tmp_path / "in"
    inc.mkdir()
    with open(os.path.join(os.fsencode(inc), b"bad\xffname.png"), "wb") as f:
        f.write(good_png)
    (inc / "good.png").write_bytes(good_png)
    out = tmp_path / "out"
    r = _watch(inc, rt_bundle, "--out", str(out))
    _no_traceback(r)
    assert r.returncode == 0
    recs = _journal(out)
    assert sorted(x["file"] for x in recs) == ["bad\udcffname.png", "good.png"]
    assert all(x["verdict"] in ("ok", "ng") for x in recs)
    assert (out / "results.jsonl").read_bytes().isascii()
    r = _watch(inc, rt_bundle, "--out", str(out))  # restart: nothing scored again
    assert r.returncode == 0 and _records(r) == [] and len(_journal(out)) == 2


def test_13_out_equal_to_the_folder_is_refused(rt_bundle, tmp_path):
    r = _watch(tmp_path, rt_bundle, "--out", str(tmp_path))
    _no_traceback(r)
    assert r.returncode == USAGE and "is the watched folder itself" in r.stderr


def test_13_out_inside_the_folder_is_never_scanned(rt_bundle, tmp_path, good_png):
    (tmp_path / "a.png").write_bytes(good_png)
    via_link = tmp_path / "link-to-here"
    via_link.symlink_to(tmp_path)
    for _ in range(2):
        r = _watch(tmp_path, rt_bundle, "--out", str(via_link / "res"), "--move")
        _no_traceback(r)
        assert r.returncode == 0
    recs = _journal(tmp_path / "res")
    assert [x["file"] for x in recs] == ["a.png"] and (tmp_path / "res" / recs[0]["moved_to"]).is_file()
    assert not (tmp_path / "res" / "error").exists()


def test_14_symlinks_in_the_folder_are_not_followed(rt_bundle, tmp_path, good_png):
    inc, secret = tmp_path / "in", tmp_path / "secret.png"
    inc.mkdir()
    secret.write_bytes(good_png)
    (inc / "inside.png").write_bytes(good_png)
    (inc / "out.png").symlink_to(secret)
    (inc / "in.png").symlink_to("inside.png")
    r = _watch(inc, rt_bundle, "--out", str(tmp_path / "o1"))
    _no_traceback(r)
    by = {x["file"]: x for x in _journal(tmp_path / "o1")}
    assert by["out.png"]["verdict"] == "error" and "symbolic link" in by["out.png"]["error"]
    assert by["in.png"]["verdict"] == "error"
    assert by["inside.png"]["verdict"] in ("ok", "ng")
    r = _watch(inc, rt_bundle, "--out", str(tmp_path / "o2"), "--follow-links")
    by = {x["file"]: x for x in _journal(tmp_path / "o2")}
    assert by["in.png"]["verdict"] in ("ok", "ng")  # resolves inside: followed
    assert by["out.png"]["verdict"] == "error" and "outside the watched folder" in by["out.png"]["error"]


def test_15_a_second_moving_watcher_on_the_same_folder_is_refused(rt_bundle, tmp_path, predictor_factory):
    from runtime.errors import UsageError
    from runtime.line.watch import Watcher, WatchOptions, _Lock

    with _Lock(tmp_path, False, "x"):  # a first watcher holds the folder
        w = Watcher(predictor_factory(), WatchOptions(tmp_path, tmp_path.parent / "o2", move=True, once=True))
        with pytest.raises(UsageError, match="another patchcore-rt watch"):
            w.run()


def _recorded_input(tmp_path: Path, data: bytes, with_inode: bool = True, **record) -> tuple[Path, Path]:
    """An input folder with ``a.png`` and an output folder whose journal already holds its record
    (its key read off the file, inode and ctime too unless ``with_inode`` is False, plus
    ``record``'s fields): (input folder, output folder)."""
    inc, out = tmp_path / "in", tmp_path / "out"
    inc.mkdir()
    out.mkdir()
    (inc / "a.png").write_bytes(data)
    st = (inc / "a.png").stat()
    fields = {"file": "a.png", "size": st.st_size, "mtime_ns": st.st_mtime_ns, "verdict": "ok", **record}
    if with_inode:
        fields.update(inode=st.st_ino, ctime_ns=st.st_ctime_ns)
    (out / "results.jsonl").write_text(json.dumps(fields) + "\n")
    return inc, out


def test_16_once_finishes_an_interrupted_move(rt_bundle, tmp_path, good_png):
    inc, out = _recorded_input(tmp_path, good_png, moved_to="ok/a.png")
    r = _watch(inc, rt_bundle, "--out", str(out), "--move", "--settle", "5")  # recorded files need no settling
    _no_traceback(r)
    assert r.returncode == 0 and not (inc / "a.png").exists() and (out / "ok" / "a.png").read_bytes() == good_png
    assert len(_journal(out)) == 1


def test_17_a_failing_move_warns_once_and_a_redropped_file_is_scored_again(tmp_path, predictor_factory, good_png):
    import threading

    from runtime.line.watch import Watcher, WatchOptions

    inc, out = tmp_path / "in", tmp_path / "out"
    inc.mkdir()
    (inc / "a.png").write_bytes(good_png)
    warnings = []
    import runtime.line.watch as watch_mod

    orig_warn, orig_move = watch_mod.warn, watch_mod.move_new
    watch_mod.warn = warnings.append
    calls = {"n": 0}

    def failing_move(src, dst):
        calls["n"] += 1
        raise PermissionError(13, "Permission denied")

    watch_mod.move_new = failing_move
    stop = threading.Event()
    try:
        w = Watcher(predictor_factory(), WatchOptions(inc, out, settle=0, poll=0.02, move=True), stop=stop)
        t = threading.Thread(target=w.run)
        t.start()
        threading.Timer(1.5, stop.set).start()
        t.join(30)
    finally:
        watch_mod.warn, watch_mod.move_new = orig_warn, orig_move
    assert calls["n"] >= 2 and calls["n"] <= 3  # retried with a growing delay, not every 20 ms poll
    assert len([m for m in warnings if "could not move" in m]) == 1
    # the move now works: the file goes; then an identical copy (same size and mtime) is dropped
    w = Watcher(predictor_factory(), WatchOptions(inc, out, settle=0, poll=0.02, move=True, once=True))
    w.run()
    assert not (inc / "a.png").exists()
    moved = out / _journal(out)[0]["moved_to"]
    shutil.copy2(moved, inc / "a.png")
    w = Watcher(predictor_factory(), WatchOptions(inc, out, settle=0, poll=0.02, move=True, once=True))
    w.run()
    assert w.summary.scored == 1 and len(_journal(out)) == 2  # scored again, with a record; never deleted silently


def test_18_same_name_size_and_mtime_but_other_pixels_is_scored_again(tmp_path, predictor_factory, good_png):
    from runtime.line.watch import Watcher, WatchOptions

    inc, out = tmp_path / "in", tmp_path / "out"
    inc.mkdir()
    (inc / "a.png").write_bytes(good_png)
    st = (inc / "a.png").stat()
    Watcher(predictor_factory(), WatchOptions(inc, out, settle=0, once=True)).run()
    other = bytearray(good_png)
    other[-20] ^= 0xFF  # same size; inside the IEND/IDAT tail, enough to differ
    tmp = inc / ".a.tmp"
    tmp.write_bytes(bytes(other))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, inc / "a.png")  # the usual way to replace a file: a new inode
    w = Watcher(predictor_factory(), WatchOptions(inc, out, settle=0, once=True))
    w.run()
    assert w.summary.scored == 1 and len(_journal(out)) == 2


def test_18_old_journals_without_inode_still_match(tmp_path, predictor_factory, good_png):
    from runtime.line.watch import Watcher, WatchOptions

    inc, out = _recorded_input(tmp_path, good_png, with_inode=False)  # an old journal
    w = Watcher(predictor_factory(), WatchOptions(inc, out, settle=0, once=True))
    w.run()
    assert w.summary.scored == 0


def test_19_unwritable_output_is_exit_9_with_one_line(rt_bundle, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "afile").write_text("x")
    r = _watch(tmp_path / "in", rt_bundle, "--out", str(tmp_path / "afile"))
    _no_traceback(r)
    assert r.returncode == OUTPUT and "afile" in r.stderr
    r = _watch(tmp_path / "in", rt_bundle, "--out", "/proc/patchcore-rt-test")
    _no_traceback(r)
    assert r.returncode == OUTPUT


def test_19_a_failed_journal_write_is_cut_back_to_the_last_batch(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    with Journal(path) as j:
        j.append([{"file": "a.png", "size": 1, "mtime_ns": 1, "verdict": "ok"}])
        before = path.read_bytes()
        real_write = os.write

        def disk_full(fd, data):
            real_write(fd, bytes(data)[: len(data) // 2])  # part of the batch reaches the disk
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", disk_full)
        with pytest.raises(OutputError, match="No space left on device"):
            j.append([{"file": f"{i}.png", "size": 1, "mtime_ns": 1, "verdict": "ok"} for i in "bcd"])
        monkeypatch.undo()
    assert path.read_bytes() == before
    with Journal(path) as j:
        assert len(j) == 1 and j.torn_bytes == 0 and Key("a.png", 1, 1) in j


# ============================================================================ camera (20)
def test_20_a_source_without_frames_is_exit_2(rt_bundle, tmp_path):
    video = tmp_path / "empty.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    w.release()
    r = _rt("camera", str(video), "--bundle", str(rt_bundle), "--device", "cpu", "--out", str(tmp_path / "a"))
    _no_traceback(r)
    assert r.returncode == USAGE and "delivered no frame" in r.stderr
