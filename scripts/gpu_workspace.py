"""Data and bundles for the GPU checks, made where they run (the shared datasets do not travel).

- data: the synthetic brick class (``patchcore.synthetic``) at MVTec AD bottle's training size,
  209 good images (188 fitted, 21 held out for the threshold), and 20 test images with masks;
- bundles, fitted on the GPU, each with every graph (features and in-graph search, fp32 and
  fp16): ``effnet-lite0`` (ImageNet weights, 1% bank of 128-dim patches: the deployment setting)
  and ``wrn50`` (wide_resnet50_2 with random weights, 10% bank of 1024 dims: the paper's setting);
- line images: decoded RGB uint8 frames at bottle's 900 x 900, the throughput runs' input.

Everything lives under one work folder, so a later call on the same (still warm) box reuses it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class BundleRecipe:
    name: str
    backbone: str
    weights: str  # "default" (the registry's pretrained weights) or "random"
    coreset: float
    target_dim: int


RECIPES = {r.name: r for r in (
    BundleRecipe("effnet-lite0", "effnet-lite0", "default", 0.01, 128),
    BundleRecipe("wrn50", "wrn50", "random", 0.1, 1024),
)}

# seconds to fit and export each bundle on the H200 box, for the time budget
BUNDLE_SECONDS = {"effnet-lite0": 40.0, "wrn50": 90.0}


@dataclass(frozen=True)
class Sizes:
    n_train: int = 209  # MVTec AD bottle's good training images
    n_test_good: int = 8
    n_test_defect: int = 4  # per defect type (3 types)
    texture_px: int = 256  # the data set's images (the backbones resize to 256 and crop 224)
    line_px: int = 900  # bottle's image size: what a line camera would deliver
    line_images: int = 64
    input_px: int | None = None  # None: each backbone's own input size


# tiny sizes for --rehearse: every check's code runs on the CPU in about a minute
REHEARSAL = Sizes(n_train=12, n_test_good=3, n_test_defect=1, texture_px=96, line_px=160, line_images=8, input_px=64)


class Workspace:
    def __init__(self, root: Path, device: str = "cuda", sizes: Sizes = Sizes(), log: Callable[[str], None] = print):
        self.root = Path(root)
        self.device = device
        self.sizes = sizes
        self.log = log
        self._line: list[np.ndarray] | None = None

    # ------------------------------------------------------------------------------ data
    def data(self) -> Path:
        from patchcore.synthetic import make_synthetic_class

        s = self.sizes
        return make_synthetic_class(self.root / "data", "brick", n_train=s.n_train, n_test_good=s.n_test_good,
                                    n_test_defect=s.n_test_defect, size=s.texture_px)

    def test_images(self, n: int) -> list[np.ndarray]:
        from patchcore.data import load_class
        from runtime.images import read_image

        return [read_image(t.path) for t in load_class(self.data()).test[:n]]

    def train_paths(self) -> list[Path]:
        from patchcore.data import load_class

        return load_class(self.data()).train

    def line_images(self) -> list[np.ndarray]:
        """``line_images`` decoded frames at ``line_px`` square, made from the data set's images."""
        if self._line is None:
            import cv2

            from patchcore.data import load_class
            from runtime.images import read_image

            ds = load_class(self.data())
            paths = [t.path for t in ds.test] + list(ds.train)
            side = self.sizes.line_px
            self._line = [cv2.resize(read_image(paths[i % len(paths)]), (side, side), interpolation=cv2.INTER_CUBIC)
                          for i in range(self.sizes.line_images)]
        return self._line

    # --------------------------------------------------------------------------- bundles
    def config(self, name: str, device: str | None = None):
        """The PatchCoreConfig of recipe ``name`` (weights as recorded by its fit, if any)."""
        from patchcore.config import PatchCoreConfig

        r = RECIPES[name]
        side = self.sizes.input_px
        record = self.fit_record(name)
        return PatchCoreConfig(backbone=r.backbone, weights=record.get("weights", r.weights) if record else r.weights,
                               coreset_ratio=r.coreset, target_dim=r.target_dim, device=device or self.device,
                               resize=side, crop=side)

    def model(self, name: str, device: str | None = None):
        """An unfitted PatchCore of recipe ``name``; random weights (recorded) when the pretrained
        ones cannot be had here."""
        from patchcore.model import PatchCore
        from patchcore.registry import WeightsUnavailableError

        cfg = self.config(name, device)
        try:
            return PatchCore(cfg)
        except WeightsUnavailableError as e:
            self.log(f"{name}: pretrained weights unavailable ({e}); using random weights")
            return PatchCore(replace(cfg, weights="random"))

    def bundle_dir(self, name: str) -> Path:
        return self.root / "bundles" / name

    def fit_record(self, name: str) -> dict | None:
        path = self.root / "bundles" / f"{name}.fit.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return record if record.get("recipe") == asdict(RECIPES[name]) and record.get("sizes") == asdict(self.sizes) else None

    def has_bundle(self, name: str) -> bool:
        return self.fit_record(name) is not None and (self.bundle_dir(name) / "manifest.json").is_file()

    def bundle(self, name: str) -> Path:
        """Recipe ``name`` fitted on ``device`` and exported with every graph (reused when present)."""
        from export.onnx_export import export_bundle

        root = self.bundle_dir(name)
        if self.has_bundle(name):
            return root
        model = self.model(name)
        self.log(f"fitting {name} on {model.device} ({len(self.train_paths())} images)")
        t0 = time.perf_counter()
        model.fit(self.train_paths())
        t1 = time.perf_counter()
        export_bundle(model, root, name=f"gpu-check-{name}", fp16=True, scoring=True)
        t2 = time.perf_counter()
        record = {"recipe": asdict(RECIPES[name]), "sizes": asdict(self.sizes), "weights": model.config.weights,
                  "device": str(model.device), "bank": list(model.bank.shape), "fit": model.fit_info,
                  "fit_seconds": round(t1 - t0, 2), "export_seconds": round(t2 - t1, 2)}
        (self.root / "bundles" / f"{name}.fit.json").write_text(json.dumps(record, indent=1) + "\n")
        return root
