"""``predict``'s work: score files in batches, in argument order, one record each, with an overlay
per scored file when asked (each under its path relative to the folder argument that holds it)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from ..errors import OutputError
from .image_files import output_relpath
from .outputs import encode_png, outcome_overlay, unique_in_run, write_replace
from .records import Item, image_of, record, score_items
from .run_options import RunOptions


def predict_files(predictor, inputs: list[tuple[Path, str]], args: list[Path], batch: int, run: RunOptions,
                  overlays: Path | None = None,
                  advance: Callable[[int], None] = lambda n: None) -> Iterator[dict]:
    """The record of each input (``(path, name)`` pairs of :func:`~runtime.line.image_files.collect_inputs`),
    in order; ``args`` are the paths as given (where overlays keep their relative paths)."""
    judge = run.judge(predictor)
    used: set[Path] = set()
    for s in range(0, len(inputs), batch):
        chunk = inputs[s : s + batch]
        for o in score_items(predictor, [Item(name, path=path) for path, name in chunk], run.limits, judge):
            extra = {}
            image = image_of(o.item, run.limits) if overlays is not None and o.map is not None else None
            if image is not None:
                dst = unique_in_run(overlays / output_relpath(o.item.path, args).with_suffix(".png"), used)
                img = outcome_overlay(image, o, predictor, judge)
                try:
                    extra["overlay"] = str(write_replace(dst, encode_png(img)))
                except OSError as e:
                    raise OutputError(f"--overlays {overlays}: cannot write {dst.relative_to(overlays)} "
                                      f"({e.strerror or e})") from None
            yield record(o, predictor.bundle.bundle_id, precision=predictor.precision, **extra)
        advance(len(chunk))
