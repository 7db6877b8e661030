"""The "Decoding" section of BENCHMARKS.md: what turning a file's bytes into RGB pixels costs, with
the decoders at hand, and whether each gives the runtime's pixels exactly (issue 42).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/decoding.py [--repeats 15]

For the PNG test images of bottle (colour) and screw (grey) from ../shared/datasets/mvtec_ad, and
the same bottle images re-encoded in memory as JPEG (quality 95, as a camera or a drop folder
often delivers them), every decoder decodes every image ``--repeats`` times, interleaved (one image
through every decoder, then the next), so a noisy machine slows all alike; the table gives the
median per image and the ratio to the runtime as it decoded before (``decode_image`` with its libspng
path switched off: the header's size check, OpenCV's ``IMREAD_UNCHANGED``, then to RGB). *identical*
compares with those pixels. The decoders alone skip the header check the runtime makes first. Reduced
decoding (OpenCV's ``IMREAD_REDUCED_COLOR_2``: libjpeg's DCT scaling for JPEG, a resize after a full
decode for PNG) cannot give the same pixels; its figures say what giving that up would buy.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_name, replace_section  # noqa: E402

SECTION = "decoding"
MVTEC = ROOT.parent / "shared" / "datasets" / "mvtec_ad"


def decoders() -> dict[str, Callable[[bytes], np.ndarray]]:
    """Name -> bytes to HxWx3 uint8 RGB; the optional ones only where installed."""
    import cv2
    from PIL import Image

    from runtime.images import decode_image

    def gray_to_rgb(a: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2RGB) if a.ndim == 2 or a.shape[2] == 1 else a

    from runtime import images

    def opencv(d: bytes) -> np.ndarray:
        a = cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED)
        return cv2.cvtColor(a, cv2.COLOR_GRAY2RGB if a.ndim == 2 else cv2.COLOR_BGR2RGB)

    def runtime_before(d: bytes) -> np.ndarray:
        """decode_image with its libspng path switched off: the runtime as it decoded before."""
        saved, images._spng = images._spng, None
        try:
            return decode_image(d, "x")
        finally:
            images._spng = saved

    out: dict[str, Callable[[bytes], np.ndarray]] = {
        "the runtime before (decode_image, OpenCV only)": runtime_before,
        "the runtime now (decode_image)": lambda d: decode_image(d, "x"),
        "OpenCV alone (unchanged + to RGB, no header check)": opencv,
        "OpenCV IMREAD_COLOR_RGB": lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR_RGB),
        "Pillow": lambda d: np.asarray(Image.open(io.BytesIO(d)).convert("RGB")),
    }
    try:
        import pyspng

        out["pyspng (libspng), PNG only"] = lambda d: gray_to_rgb(pyspng.load(d))
    except ImportError:
        pass
    try:
        import simplejpeg

        out["simplejpeg (libjpeg-turbo), JPEG only"] = lambda d: simplejpeg.decode_jpeg(d, colorspace="RGB")
    except ImportError:
        pass
    out["OpenCV IMREAD_REDUCED_COLOR_2 (half size)"] = lambda d: cv2.cvtColor(
        cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_REDUCED_COLOR_2), cv2.COLOR_BGR2RGB)
    return out


def image_sets() -> dict[str, list[bytes]]:
    import cv2

    sets = {}
    for name in ("bottle", "screw"):
        files = sorted((MVTEC / name / "test").glob("*/*.png"))
        if files:
            sets[f"{name} PNG"] = [f.read_bytes() for f in files]
    if "bottle PNG" in sets:
        jpegs = []
        for data in sets["bottle PNG"]:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            jpegs.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
        sets["bottle JPEG q95"] = jpegs
    return sets


def applies(decoder: str, image_set: str) -> bool:
    return not (("PNG only" in decoder and "PNG" not in image_set) or
                ("JPEG only" in decoder and "JPEG" not in image_set))


def measure(repeats: int) -> dict:
    decs = decoders()
    rows = []
    for set_name, blobs in image_sets().items():
        names = [d for d in decs if applies(d, set_name)]
        times = {d: [] for d in names}
        identical = {d: True for d in names}
        for blob in blobs:
            ref = decs[names[0]](blob)
            per = {d: [] for d in names}
            for _ in range(repeats):
                for d in names:
                    t = time.perf_counter()
                    px = decs[d](blob)
                    per[d].append(time.perf_counter() - t)
            for d in names:
                px = decs[d](blob)
                identical[d] &= px.shape == ref.shape and bool(np.array_equal(px, ref))
                times[d].append(statistics.median(per[d]))
        base = statistics.median(times[names[0]])
        h, w = decs[names[0]](blobs[0]).shape[:2]
        for d in names:
            med = statistics.median(times[d])
            rows.append({"set": set_name, "images": len(blobs), "size": f"{w}x{h}", "decoder": d,
                         "ms": med * 1e3, "ratio": med / base, "identical": identical[d]})
    return {"rows": rows}


def render(res: dict, command: str) -> str:
    import cv2

    versions = [f"OpenCV {cv2.__version__}"]
    for mod in ("PIL", "pyspng", "simplejpeg"):
        try:
            m = __import__(mod)
            versions.append(f"{'Pillow' if mod == 'PIL' else mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            versions.append(f"{mod}: not installed")
    lines = ["## Decoding: file bytes to RGB pixels (issue 42)", "",
             f"Written by `{command}` on {_dt.date.today().isoformat()} ({cpu_name()}, one thread; "
             f"{', '.join(versions)}). Median per image of the per-image medians; ratio to the "
             "runtime as it decoded before (OpenCV only, after its header check), in the same run. *identical*: every "
             "image's pixels equal that decoder's. The "
             "runtime now decodes 8-bit RGB PNGs with libspng and everything else with OpenCV (runtime/images.py).", "",
             "| images | decoder | ms per image | ratio | identical |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['set']} ({r['images']}, {r['size']}) | {r['decoder']} | {r['ms']:.2f} | "
                     f"{r['ratio']:.2f}x | {'yes' if r['identical'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    res = measure(args.repeats)
    text = render(res, "python benchmarks/decoding.py " + " ".join(sys.argv[1:]))
    print(text)
    replace_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
