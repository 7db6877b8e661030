"""Camera pixel formats (GenICam names) -> the BGR uint8 images the bundle's preprocessing takes.

Bayer formats are demosaiced by OpenCV. OpenCV names a Bayer pattern by the second row's first two
pixels, GenICam by the first row's, hence the crossed table (checked with a red-only mosaic).
Mono16 keeps the top 8 bits (a 12-bit sensor padded to 16 bits stays full scale only if the camera
left-aligns; see docs/cameras.md).
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import SourceError

BAYER = {"BayerRG8": cv2.COLOR_BayerBG2BGR, "BayerBG8": cv2.COLOR_BayerRG2BGR,
         "BayerGR8": cv2.COLOR_BayerGB2BGR, "BayerGB8": cv2.COLOR_BayerGR2BGR}
BYTES = {"Mono8": 1, "Mono16": 2, "RGB8": 3, "BGR8": 3, "RGB8Packed": 3, "BGR8Packed": 3, **{k: 1 for k in BAYER}}
TAKEN = tuple(BYTES)


def check_format(name: str, where: str) -> None:
    if name not in BYTES:
        raise SourceError(f"{where}: pixel format {name} cannot be taken (the bundle's preprocessing takes 8-bit "
                          f"colour or grey; the runtime converts {', '.join(TAKEN)}); set pixel_format in the settings")


def to_bgr(data: bytes, fmt: str, width: int, height: int) -> np.ndarray:
    """One frame's bytes (tightly packed rows) as an HxWx3 uint8 BGR image."""
    n = BYTES[fmt]
    need = width * height * n
    if len(data) < need:
        raise ValueError(f"{fmt} {width}x{height} needs {need} bytes, the frame has {len(data)}")
    if fmt == "Mono16":
        mono = (np.frombuffer(data, "<u2", width * height).reshape(height, width) >> 8).astype(np.uint8)
        return cv2.cvtColor(mono, cv2.COLOR_GRAY2BGR)
    a = np.frombuffer(data, np.uint8, need)
    if fmt == "Mono8":
        return cv2.cvtColor(a.reshape(height, width), cv2.COLOR_GRAY2BGR)
    if fmt in BAYER:
        return cv2.cvtColor(a.reshape(height, width), BAYER[fmt])
    img = a.reshape(height, width, 3)
    return cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if fmt.startswith("RGB") else img.copy()
