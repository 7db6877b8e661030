"""The fit options' input geometry -> the bundle's :class:`~runtime.preprocess.PreprocessSpec`.

Presets and modes (``--geometry``):

- ``paper``: the backbone's own recipe (resize 256, center crop 224 for ImageNet CNNs), with the
  ``--resize``/``--crop`` overrides; what every bundle used before geometry became an option.
- ``auto``: the network input H x W is picked at fit time from the training images: their median
  aspect ratio, under a pixel budget (``--max-pixels-in``; here the backbone's square input, 224 x
  224, when unset: the commands' preset sets 320 x 320) and never more pixels than the images have
  (unless ``--upsample``), each side rounded to the backbone's deepest stride; the whole image is
  resized to it (no crop).

A fixed region of interest (``--roi x0,y0,x1,y1``) is cut from every image first; every mode then
treats the region as the image (``runtime.geometry.plan``).
- ``crop``: resize (aspect kept) to cover ``--input-size`` enlarged by the backbone's resize/crop
  margin (256/224), then a center crop of ``--input-size``.
- ``resize``: the whole image resized to ``--input-size`` (aspect not kept).
- ``pad``: the whole image fitted into ``--input-size``, aspect kept, centred (letterbox).

Tiling (``--tile``): the canvas (``--input-size``, or the training images' median size times
``--tile-scale``, 1 = native resolution) is cut into tiles of ``--tile`` pixels overlapping by
``--tile-overlap``; the canvas is reached with ``resize`` unless ``--geometry`` says otherwise.

Torch-free, so command lines can check option combinations before loading a model.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.preprocess import PreprocessSpec

GEOMETRIES = ("paper", "auto", "crop", "resize", "pad")
DEFAULT_GEOMETRY = "auto"


def parse_size(text: str | int | Sequence[int] | None, name: str = "--input-size") -> tuple[int, int] | None:
    """``"224x560"`` (height x width) or ``"224"`` (a square) -> (h, w); ValueError naming ``name``."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        parts = [text, text]
    elif isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        raw = str(text).lower().replace(" ", "").split("x")
        try:
            parts = [int(v) for v in raw] * (2 if len(raw) == 1 else 1)
        except ValueError:
            parts = []
    if len(parts) != 2 or not all(isinstance(v, int) and v > 0 for v in parts):
        raise ValueError(f"{name} must be HEIGHTxWIDTH or one size in pixels (e.g. 224x560 or 256), got {text!r}")
    return int(parts[0]), int(parts[1])


def effective_geometry(geometry: str | None, tile: object, resize: int | None, crop: int | None) -> str:
    """The geometry an unset ``--geometry`` means: ``resize`` when tiling, ``paper`` when the
    paper recipe's ``--resize``/``--crop`` are given, else :data:`DEFAULT_GEOMETRY`."""
    if geometry is not None:
        return geometry
    if tile is not None:
        return "resize"
    if resize is not None or crop is not None:
        return "paper"
    return DEFAULT_GEOMETRY


def parse_roi(text: str | Sequence[int] | None) -> tuple[int, int, int, int] | None:
    """``"x0,y0,x1,y1"`` in original pixels (end exclusive) -> a tuple; ValueError naming --roi."""
    if text is None:
        return None
    raw = list(text) if isinstance(text, (tuple, list)) else str(text).replace(" ", "").split(",")
    try:
        v = [int(x) for x in raw]
    except (TypeError, ValueError):
        v = []
    if len(v) != 4 or v[0] < 0 or v[1] < 0 or v[2] <= v[0] or v[3] <= v[1]:
        raise ValueError(f"--roi must be x0,y0,x1,y1 in original pixels with x0 < x1 and y0 < y1 (e.g. "
                         f"100,0,900,1024), got {text!r}")
    return v[0], v[1], v[2], v[3]


def check_options(geometry: str | None, input_size, tile, tile_overlap: int, tile_scale: float | None,
                  resize: int | None, crop: int | None, max_pixels_in: int | None = None,
                  upsample: bool = False) -> None:
    """Refuse impossible combinations with one ValueError naming the options."""
    if geometry is not None and geometry not in GEOMETRIES:
        raise ValueError(f"--geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    g = effective_geometry(geometry, tile, resize, crop)
    if max_pixels_in is not None:
        if g != "auto":
            raise ValueError(f"--max-pixels-in is auto's pixel budget; --geometry {g} takes its size elsewhere")
        if not 1024 <= max_pixels_in <= 1 << 26:
            raise ValueError(f"--max-pixels-in must be in [1024, {1 << 26}] pixels, got {max_pixels_in}")
    if upsample and g != "auto":
        raise ValueError(f"--upsample belongs to --geometry auto, not {g}")
    if tile is None:
        if tile_scale is not None:
            raise ValueError("--tile-scale needs --tile")
        if tile_overlap:
            raise ValueError("--tile-overlap needs --tile")
    else:
        if g in ("paper", "auto"):
            raise ValueError(f"--geometry {g} cannot tile; use --geometry resize, pad or crop with --tile")
        if input_size is not None and tile_scale is not None:
            raise ValueError("give either --input-size (the canvas that is tiled) or --tile-scale, not both")
        if tile_scale is not None and not 0 < tile_scale <= 8:
            raise ValueError(f"--tile-scale must be in (0, 8], got {tile_scale}")
        th, tw = tile
        if tile_overlap < 0 or tile_overlap >= min(th, tw):
            raise ValueError(f"--tile-overlap must be >= 0 and smaller than the tile {th}x{tw}, got {tile_overlap}")
    if g in ("paper", "auto") and input_size is not None:
        raise ValueError(f"--geometry {g} picks its own input size; --input-size needs crop, resize or pad")
    if g in ("resize", "pad") and input_size is None and tile is None:
        raise ValueError(f"--geometry {g} needs --input-size HEIGHTxWIDTH (or use --geometry auto)")
    if g not in ("paper", "crop") and (resize is not None or crop is not None):
        raise ValueError(f"--resize/--crop belong to the paper recipe (--geometry paper or crop), not {g}")
    if g == "crop" and input_size is not None and crop is not None:
        raise ValueError("give either --input-size or --crop, not both")


def needs_images(geometry: str | None, tile, resize: int | None, crop: int | None, input_size) -> bool:
    """True when the spec depends on the training images' sizes (auto, or tiling without a canvas)."""
    g = effective_geometry(geometry, tile, resize, crop)
    return g == "auto" or (tile is not None and input_size is None)


def _round_to(v: float, step: int) -> int:
    return max(step, int(round(v / step)) * step)


def auto_size(sizes: Sequence[tuple[int, int]], budget: int, stride: int, upsample: bool = True) -> tuple[int, int]:
    """(h, w) with the training images' median aspect ratio and about ``budget`` pixels, each
    side a multiple of ``stride``; without ``upsample`` the budget is at most the training
    images' median pixel count (a small image is not enlarged)."""
    aspect = float(np.median([w / h for h, w in sizes]))  # width / height
    if not upsample:
        budget = min(budget, int(np.median([h * w for h, w in sizes])))
    return _round_to(math.sqrt(budget / aspect), stride), _round_to(math.sqrt(budget * aspect), stride)


def median_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    return int(np.median([h for h, _ in sizes])), int(np.median([w for _, w in sizes]))


def resolve(base: PreprocessSpec, strides: tuple[int, int], geometry: str | None = None, input_size=None,
            tile=None, tile_overlap: int = 0, tile_scale: float | None = None, resize: int | None = None,
            crop: int | None = None, sizes: Sequence[tuple[int, int]] | None = None,
            max_pixels_in: int | None = None, upsample: bool = False,
            roi: tuple[int, int, int, int] | None = None) -> PreprocessSpec:
    """The spec for these options on a backbone whose own recipe is ``base`` and whose chosen
    layers have strides ``(shallowest, deepest)``; ``sizes`` are the training images' (h, w),
    needed when :func:`needs_images` says so. ``max_pixels_in``: auto's budget (default the
    backbone's square input, 224 x 224), never beyond the training images' size unless
    ``upsample``. ``roi`` (x0, y0, x1, y1): the region of every image that is used; sizes are
    then the region's."""
    check_options(geometry, input_size, tile, tile_overlap, tile_scale, resize, crop, max_pixels_in, upsample)
    g = effective_geometry(geometry, tile, resize, crop)
    if needs_images(geometry, tile, resize, crop, input_size) and not sizes:
        raise ValueError(f"--geometry {g}{' with --tile' if tile else ''} picks its size from the training images; "
                         "none were given")
    if roi is not None:
        base = replace(base, roi=tuple(roi))
        if sizes:
            too_small = [hw for hw in sizes if hw[0] < roi[3] or hw[1] < roi[2]]
            if too_small:
                raise ValueError(f"--roi {','.join(map(str, roi))} reaches outside a {too_small[0][1]}x"
                                 f"{too_small[0][0]} (width x height) training image")
            sizes = [(roi[3] - roi[1], roi[2] - roi[0])] * len(sizes)
    if g == "paper":
        return replace(base, resize=base.resize if resize is None else resize, crop=base.crop if crop is None else crop)
    if g == "auto":
        side = base.canvas_hw or (224, 224)
        budget = side[0] * side[1] if max_pixels_in is None else max_pixels_in
        return replace(base, mode="resize", size=auto_size(sizes, budget, strides[1], upsample))
    canvas = input_size
    if canvas is None and tile is not None:
        mh, mw = median_size(sizes)
        scale = 1.0 if tile_scale is None else tile_scale
        canvas = (max(tile[0], _round_to(mh * scale, strides[0])), max(tile[1], _round_to(mw * scale, strides[0])))
    tiling = {}
    if tile is not None:
        tiling = {"tile": tuple(tile), "tile_stride": (tile[0] - tile_overlap, tile[1] - tile_overlap)}
    if g == "crop":
        canvas = canvas or (base.crop if crop is None else crop,) * 2
        margin = (base.resize_hw[0] / base.canvas_hw[0]) if base.resize_hw and base.canvas_hw else 1.0
        if resize is not None:
            margin = resize / min(canvas)
        box = (int(round(canvas[0] * margin)), int(round(canvas[1] * margin)))
        return replace(base, mode="crop", resize=box, crop=0, size=canvas, **tiling)
    return replace(base, mode=g, resize=0, crop=0, size=canvas, **tiling)


def image_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """(h, w) of each image, read from the file header (the pixels are not decoded)."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: cannot read the image size ({e})") from None
        out.append((h, w))
    return out


def describe(spec: PreprocessSpec) -> str:
    """One line: mode, canvas and tiles (for logs and reports)."""
    canvas = spec.canvas_hw
    text = f"{spec.mode} {canvas[0]}x{canvas[1]}" if canvas else spec.mode
    if spec.mode == "crop" and spec.resize_hw:
        text += f" (cover {spec.resize_hw[0]}x{spec.resize_hw[1]})"
    if spec.tile:
        s = spec.tile_stride or spec.tile
        text += f", tiles {spec.tile[0]}x{spec.tile[1]} stride {s[0]}x{s[1]}"
    if spec.roi:
        text += f", roi {','.join(map(str, spec.roi))}"
    return text
