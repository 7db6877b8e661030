"""Files the runtime writes: durable appends, overlays, and moves that never overwrite.

"Never overwrite" is enforced by the file system, not by an exists-check that could race:
a new name is claimed with ``os.link`` (fails when the name exists), for moves and for overlay
files alike. Where hard links are not supported (some network and FAT file systems, or a move
across file systems) the fall-back creates the target with ``O_EXCL`` and copies.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..fileio import atomic_write, synced_temp
from ..geometry import map_to_original
from ..postprocess import SCALE_FLOOR, normalise_scores
from ..preprocess import PreprocessSpec
from .records import bundle_judge, location


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform / file system
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def numbered(path: Path, n: int) -> Path:
    """``x.png`` -> ``x-1.png``, ``x-2.png`` ... (``n`` = 0 gives ``path`` itself)."""
    if n == 0:
        return path
    suffix = "".join(path.suffixes[-1:])
    return path.with_name(f"{path.name[: len(path.name) - len(suffix)]}-{n}{suffix}")


def unique_in_run(path: Path, used: set[Path]) -> Path:
    """``path``, numbered (``name-1.png`` ...) when this run wrote that name already."""
    n = 0
    while numbered(path, n) in used:
        n += 1
    used.add(numbered(path, n))
    return numbered(path, n)


def free_name(path: Path, reserved: Iterable[Path] = ()) -> Path:
    """The first of ``path``, ``x-1``, ``x-2`` ... that does not exist and is not reserved."""
    taken = set(reserved)
    n = 0
    while True:
        cand = numbered(path, n)
        if cand not in taken and not os.path.lexists(cand):
            return cand
        n += 1


def _link_or_copy_new(src: Path, dst: Path) -> None:
    """Create ``dst`` with ``src``'s content; FileExistsError if ``dst`` exists. A symlink is
    moved as the link itself, never as what it points to."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EACCES):
            raise
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        shutil.copystat(src, dst)
    except BaseException:
        Path(dst).unlink(missing_ok=True)
        raise


def move_new(src: Path, dst: Path) -> Path:
    """Move ``src`` to ``dst``, or to ``dst-1``, ``dst-2`` ... when that name exists; never
    overwrites. Keeps the modification time. Returns where the file went."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        cand = numbered(dst, n)
        try:
            _link_or_copy_new(src, cand)
            break
        except FileExistsError:
            n += 1
    os.unlink(src)
    fsync_dir(cand.parent)
    return cand


def write_new(dst: Path, data: bytes) -> Path:
    """Write ``data`` as a new file at ``dst`` (or ``dst-1`` ...), complete or not at all."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = synced_temp(dst, data)
    try:
        return move_new(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def write_replace(dst: Path, data: bytes) -> Path:
    """Write ``data`` to ``dst`` atomically, replacing an older version of our own output."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(dst, data)


def overlay_image(image: np.ndarray, amap: np.ndarray, spec: PreprocessSpec, threshold: float | None,
                  scale: float | None, label: str | None = None, peak: tuple[float, float] | None = None) -> np.ndarray:
    """The anomaly map as a heat map over the original image: the map (on the bundle's canvas) is
    taken back through the image's geometry (crop, resize, letterbox, tiles undone), so the heat
    lies where the defect is on the part. Colours are fixed per bundle: ``threshold`` (the pixel
    threshold; older bundles: the image threshold) at the middle of the scale, ``scale`` (floored
    at a share of the threshold, so it never collapses) the spread; the regions at the threshold
    are outlined in white, ``peak`` (x, y on the original) is marked with a magenta ring and cross
    (the evidence when no region reaches the threshold), and when the network saw only part of
    the image (a center crop) that part is framed. Returns BGR."""
    plan = spec.plan(*image.shape[:2])
    if amap.shape != tuple(plan.canvas_hw):
        amap = cv2.resize(amap.astype(np.float32), plan.canvas_hw[::-1], interpolation=cv2.INTER_LINEAR)
    if threshold is not None:
        level = normalise_scores(amap, threshold, max(scale or 0.0, SCALE_FLOOR * abs(threshold), 1e-12))
    else:
        lo, hi = float(amap.min()), float(amap.max())
        level = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
    level = map_to_original(np.asarray(level, np.float32), plan, fill=0.0)
    heat = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.15 + 0.5 * level)[..., None]
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    out = np.clip(bgr * (1 - alpha) + heat * alpha, 0, 255).astype(np.uint8)
    thick = max(1, out.shape[1] // 400)
    if threshold is not None:
        contours, _ = cv2.findContours((level >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), thick, cv2.LINE_AA)
    if peak is not None:
        x, y = int(round(peak[0])), int(round(peak[1]))
        r = max(6, out.shape[1] // 40)
        cv2.circle(out, (x, y), r, (255, 0, 255), thick + 1, cv2.LINE_AA)
        cv2.drawMarker(out, (x, y), (255, 0, 255), cv2.MARKER_CROSS, r, thick)
    if not plan.covers_whole_image():
        x0, y0, x1, y1 = (int(round(v)) for v in plan.roi())
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), thick)
    if label:
        size = max(0.35, out.shape[1] / 640)
        org = (4, max(12, int(22 * size)))
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, size, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def outcome_overlay(image: np.ndarray, outcome, predictor, judge=None) -> np.ndarray:
    """The overlay that explains one scored outcome: heat on the bundle's fixed scale around the
    pixel threshold (``judge``'s, default the bundle's), the regions outlined, the peak marked when
    an NG has no region, and a label that says the verdict and which rule decided."""
    judge = judge if judge is not None else bundle_judge(predictor)
    level = judge.level.value if judge is not None and judge.level.value is not None else predictor.threshold
    where = location(outcome)
    peak = where["peak"] if where is not None and outcome.verdict == "ng" and not outcome.regions else None
    return overlay_image(image, outcome.map, predictor.spec, level, predictor.scale,
                         overlay_label(outcome.verdict, outcome.score, outcome.normalised, outcome.decided_by), peak)


def encode_png(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def overlay_label(verdict: str | None, score: float | None, normalised: float | None,
                  decided_by: str | None = None) -> str:
    head = (verdict or "score").upper()
    value = normalised if normalised is not None else score
    text = f"{head} {value:.3f}" if value is not None else head
    return f"{text} ({decided_by})" if decided_by else text
