"""PatchCore: fit a memory bank on good images, score new ones, save/load as a bundle.

Pixels go through ``runtime.preprocess`` and scores through ``runtime.search`` and
``runtime.postprocess``: the PyTorch path and the deployed runtime share those functions, and
only the feature graph (``PatchFeatureModel``) runs in torch here and in ONNX there.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

import runtime
from runtime import bundle as bundle_io
from runtime.coreset_update import project, selection_radius
from runtime.fileio import sha256_file
from runtime.fused import FusedPart, FusedScorer
from runtime.geometry import TileLayout
from runtime.images import read_image
from runtime.postprocess import Prediction, finish
from runtime.preprocess import PreprocessSpec, prepare, stack_inputs
from runtime.search.build import build_index
from runtime.search.scorer import PatchScorer

from . import fit_calibration, input_geometry
from .backbones import create_trunk
from .config import PatchCoreConfig
from .coreset import coreset_size, greedy_selection, merge_selection, projection_matrix, shard_budget, shard_members
from .device import torch_device
from .features import PatchFeatureModel, make_aggregator
from .fused import fit_fused, manifest_parts, read_parts, scorer_for
from .out_of_fold import MIN_IMAGES, image_batches
from .progress import progress_bar
from .streaming import EmbeddingStore, StreamingProjection


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class ShardSelection:
    """What one shard of the training set gives the bank: its chosen rows (selection order) and
    their projections (for the final round over the union), plus its counts and timings."""

    rows: np.ndarray  # (k, D) float32
    projected: np.ndarray  # (k, projection_dim) float32
    n_patches: int
    spilled_bytes: int
    feature_seconds: float
    coreset_seconds: float
    radius: float  # the shard's greedy radius (patchcore.coreset.Selection)


class FitExecutor(Protocol):
    """Runs fitting's embedding and shards elsewhere (:class:`patchcore.ray_fit.RayFit`)."""

    def embedded_batches(self, paths: Sequence[Path]) -> Iterator[np.ndarray]: ...

    def select_shards(self, groups: Sequence[Sequence[Path]], total_images: int) -> list[ShardSelection]: ...


class PatchCore:
    """``preprocess``: the spec to use (a loaded bundle's); by default it is resolved from the
    config's geometry options, at fit time when it depends on the training images (``auto``)."""

    def __init__(self, config: PatchCoreConfig, preprocess: PreprocessSpec | None = None):
        self.config = config
        trunk, spec, layers = create_trunk(config.backbone, config.layers, config.weights, config.seed)
        self.spec = spec
        self.layers = layers
        aggregator = make_aggregator(config.aggregation, [l.channels for l in layers], config.pretrain_dim,
                                     config.target_dim)
        self.embed_dim = int(aggregator.target_dim)
        self.device = torch_device(config.device)
        self.feature_model = PatchFeatureModel(trunk, aggregator).eval().to(self.device)
        self.preprocess: PreprocessSpec | None = None
        self.grid: tuple[int, int] | None = None
        self.layout: TileLayout | None = None
        if preprocess is None and not input_geometry.needs_images(config.geometry, config.tile, config.resize,
                                                                  config.crop, config.input_size):
            preprocess = self.resolve_geometry()
        if preprocess is not None:
            self.set_preprocess(preprocess)
        self.bank: np.ndarray | None = None
        self.scorer: PatchScorer | None = None
        self.threshold: float | None = None
        self.scale: float | None = None
        self.fit_info: dict = {}
        # What a loaded bundle recorded about its bank (``update`` appends to both); a fit starts afresh.
        self.lineage: list[dict] = []
        self.coverage_radius: float | None = None
        # The fit's greedy radius (patchcore.coreset.Selection): where an update stops by default.
        self.fit_radius: float | None = None
        self.selection: dict | None = None  # how recipe selection chose this config (the manifest's record)
        self.fused_parts: list[FusedPart] | None = None  # --aggregation fused: its parts' dims and normalisers

    # ------------------------------------------------------------------ geometry
    @property
    def strides(self) -> tuple[int, int]:
        """Strides of the shallowest and the deepest chosen layer."""
        return self.layers[0].stride, max(l.stride for l in self.layers)

    def resolve_geometry(self, sizes: Sequence[tuple[int, int]] | None = None) -> PreprocessSpec:
        """The spec of the config's geometry options; ``sizes`` (h, w) of the training images."""
        return input_geometry.resolve(self.spec.preprocess, self.strides, sizes=sizes,
                                      **self.config.geometry_options())

    def set_preprocess(self, pre: PreprocessSpec) -> None:
        """Use ``pre``: probe the patch grid of its network input and lay its tiles on it."""
        if pre.input_hw is None:
            raise ValueError("the preprocessing must crop to a fixed size (crop > 0): the bank and graphs need one grid")
        self.preprocess = pre
        self.grid = self._probe_grid()
        try:
            self.layout = TileLayout.for_spec(pre, self.grid)
        except ValueError as e:
            raise ValueError(f"{input_geometry.describe(pre)}: {e}") from None

    # ------------------------------------------------------------------ features
    @property
    def input_size(self) -> tuple[int, int]:
        """The network input (h, w): the canvas, or one tile."""
        return self.preprocess.input_hw

    @torch.no_grad()
    def _probe_grid(self) -> tuple[int, int]:
        """The patch grid, read off one forward pass of the trunk (padding rules differ by
        backbone, so H / stride is not always right)."""
        h, w = self.input_size

        def too_small(why: str) -> ValueError:
            return ValueError(f"a {h}x{w} network input is too small for {self.config.backbone} (deepest layer "
                              f"stride {self.strides[1]}; {why}): use a larger --tile, --crop or --size")

        try:
            first = self.feature_model.trunk(torch.zeros(1, 3, h, w, device=self.device))[0]
        except RuntimeError as e:  # a kernel larger than a deep layer's map
            raise too_small(str(e).strip().splitlines()[0]) from None
        if min(first.shape[-2:]) < 1:
            raise too_small("an empty patch grid")
        return int(first.shape[-2]), int(first.shape[-1])

    @torch.no_grad()
    def embed_tensor(self, batch: np.ndarray) -> np.ndarray:
        """Network inputs (N, 3, H, W) float32 -> (N, P, D) float32 patch embeddings, at most
        ``batch_size`` inputs per forward pass."""
        bs = self.config.batch_size
        out = []
        for s in range(0, len(batch), bs):
            x = torch.from_numpy(np.ascontiguousarray(batch[s : s + bs])).to(self.device)
            out.append(self.feature_model(x).float().cpu().numpy())
        return out[0] if len(out) == 1 else np.concatenate(out)

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        """The embedding step: one RGB image -> its patch embeddings (n_tiles * P, D), tile after tile."""
        return self.embed_images([image])[0]

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB images -> (B, n_tiles * P, D) patch embeddings."""
        emb = self.embed_tensor(stack_inputs([prepare(im, self.preprocess) for im in images]))
        return emb.reshape(len(images), -1, emb.shape[-1])

    def embed_rows(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded training images -> (rows, D) patch embeddings: fitting's one embedding step."""
        emb = self.embed_images(images)
        return emb.reshape(-1, emb.shape[-1])

    def embedded_batches(self, paths: Sequence[Path], desc: str = "features") -> Iterator[np.ndarray]:
        """The (rows, D) embeddings of ``paths``, ``batch_size`` images at a time."""
        bs = self.config.batch_size
        with progress_bar(desc, total=len(paths)) as advance:
            for s in range(0, len(paths), bs):
                chunk = paths[s : s + bs]
                yield self.embed_rows([read_image(p) for p in chunk])
                advance(len(chunk))

    # ------------------------------------------------------------------ fit
    def fit(self, train_paths: Sequence[Path], executor: FitExecutor | None = None) -> "PatchCore":
        """Fit the memory bank on ``train_paths`` (a held-out part calibrates the threshold).

        Embeddings are spilled to disk as they come (:mod:`patchcore.streaming`); with
        ``shards > 1`` each shard is selected on its own, then merged (:func:`merge_shards`).
        An ``executor`` runs the embedding (one shard) or the shards (several) elsewhere."""
        cfg = self.config
        paths = sorted(Path(p) for p in train_paths)
        if not paths:
            raise ValueError("no training images")
        self._geometry_facts = {}
        if self.preprocess is None:  # picked from the training images (auto, or tiles at their resolution)
            sizes = input_geometry.image_sizes(paths)
            self.set_preprocess(self.resolve_geometry(sizes))
            self._geometry_facts = {"from_images": len(paths), "median_hw": list(input_geometry.median_size(sizes))}
        if cfg.aggregation == "fused":
            if executor is not None:
                raise ValueError("--aggregation fused fits here: it cannot run its parts on an executor (Ray)")
            fit_fused(self, paths)
            return self
        holdout: list[Path] = []
        if cfg.calibration == "holdout" and cfg.holdout > 0 and len(paths) >= 10:
            # at least 5 held-out images, or the quantile is one image's score and scale collapses
            n_hold = max(5, int(round(len(paths) * cfg.holdout)))
            perm = np.random.default_rng(cfg.seed).permutation(len(paths))
            holdout = [paths[i] for i in sorted(perm[:n_hold])]
            paths = [paths[i] for i in sorted(perm[n_hold:])]
        oof = cfg.calibration == "oof" and cfg.holdout > 0 and len(paths) >= MIN_IMAGES
        if oof and cfg.shards == 1 and executor is None:  # features once: the bank and the folds share them
            with EmbeddingStore(cfg.work_dir) as store:
                t0 = time.perf_counter()
                for rows in self.embedded_batches(paths):
                    store.append(rows)
                embed_s = time.perf_counter() - t0
                shard = self.select_shard(image_batches(store, store.rows // len(paths), range(len(paths))),
                                          len(paths), len(paths))
                shard.feature_seconds += embed_s
                self._fit_bank(paths, [shard])
                self.calibrate_out_of_fold(store, paths)
            return self
        self._fit_bank(paths, self._select(paths, executor))
        if holdout:
            self.calibrate_holdout(holdout)
        elif oof:  # sharded or elsewhere: the folds embed the images once more
            with EmbeddingStore(cfg.work_dir) as store:
                for rows in self.embedded_batches(paths, "features (folds)"):
                    store.append(rows)
                self.calibrate_out_of_fold(store, paths)
        return self

    def _select(self, paths: list[Path], executor: FitExecutor | None) -> list[ShardSelection]:
        """Each shard's selection (one shard: the whole bank), here or by ``executor``."""
        cfg = self.config
        groups = [[paths[i] for i in m] for m in shard_members(len(paths), cfg.shards)]
        if len(groups) == 1:
            batches = executor.embedded_batches(paths) if executor else self.embedded_batches(paths)
            return [self.select_shard(batches, len(paths), len(paths))]
        if executor is not None:
            return executor.select_shards(groups, len(paths))
        return [self.select_shard(self.embedded_batches(g, f"shard {j + 1}/{len(groups)}"), len(g), len(paths))
                for j, g in enumerate(groups)]

    def _fit_bank(self, paths: list[Path], shards: list[ShardSelection]) -> None:
        """The bank from the shards' selections (merged when several), and the fit's facts."""
        cfg = self.config
        t1 = time.perf_counter()
        n_patches = sum(r.n_patches for r in shards)
        if len(shards) == 1:
            bank, radius = shards[0].rows, shards[0].radius
        else:  # the final round's radius, over the shards' selections
            n_select = coreset_size(n_patches, cfg.coreset_ratio, cfg.bank_size)
            with self._coreset_progress("merge", n_select) as progress:
                idx, radius = merge_selection([torch.tensor(r.projected) for r in shards], n_select, cfg.n_starts,
                                              cfg.seed, cfg.device, progress)
            bank = np.concatenate([r.rows for r in shards])[idx]
        t2 = time.perf_counter()
        self.set_bank(bank)
        self.lineage, self.coverage_radius, self.fit_radius = [], None, radius
        feature_s = sum(r.feature_seconds for r in shards)
        coreset_s = sum(r.coreset_seconds for r in shards) + (t2 - t1)
        self.fit_info = {
            "n_train": len(paths),
            "n_patches": int(n_patches),
            "feature_seconds": round(feature_s, 3),
            "coreset_seconds": round(coreset_s, 3),
            "shards": len(shards),
            "fit_wall_seconds": round(feature_s + coreset_s, 3),
            "spilled_bytes": int(max(r.spilled_bytes for r in shards)),
            "geometry": {"options": _jsonable(cfg.geometry_options()), "picked": input_geometry.describe(self.preprocess),
                         "tiles": self.layout.n_tiles, **self._geometry_facts},
        }

    def select_shard(self, batches: Iterable[np.ndarray], shard_images: int, total_images: int,
                     shards: int | None = None) -> ShardSelection:
        """Spill ``batches`` of embedding rows to disk while projecting them, select the shard's
        rows (the whole bank when there is one shard) and read them back. ``shards``: of how
        many shards this is one (default: the config's)."""
        cfg = self.config
        t0 = time.perf_counter()
        with EmbeddingStore(cfg.work_dir) as store:
            projection = StreamingProjection(store, cfg.projection_dim, cfg.seed, self.device)
            for rows in batches:
                store.append(rows)
                projection.update()
            if store.rows == 0:
                raise ValueError("no patch embeddings: the training images gave no rows")
            x = projection.result()
            t1 = time.perf_counter()
            n_select = shard_budget(store.rows, shard_images, total_images, cfg.coreset_ratio, cfg.bank_size,
                                    shards or cfg.shards)
            with self._coreset_progress("coreset", n_select) as progress:
                idx, radius = greedy_selection(x, n_select, cfg.n_starts, cfg.seed, cfg.device, progress)
            rows = store.gather(idx)
            projected = x[torch.from_numpy(idx).to(x.device)].float().cpu().numpy()
            n, spilled = store.rows, store.nbytes
        return ShardSelection(rows, projected, n, spilled, t1 - t0, time.perf_counter() - t1, radius)

    @staticmethod
    @contextlib.contextmanager
    def _coreset_progress(desc: str, total: int):
        with progress_bar(desc, total=max(1, total)) as advance:
            state = {"done": 0}

            def on_progress(done: int, total: int) -> None:
                advance(done - state["done"])
                state["done"] = done

            yield on_progress

    def set_bank(self, bank: np.ndarray) -> None:
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.scorer = self.exact_scorer(self.bank)

    def exact_scorer(self, bank: np.ndarray) -> PatchScorer | FusedScorer:
        """A scorer of ``bank`` searching exactly (a fused model's: its parts', :func:`patchcore.fused.scorer_for`)."""
        return scorer_for(self, bank)

    # ------------------------------------------------------------------ calibration
    def calibrate_holdout(self, paths: Sequence[Path]) -> None:
        fit_calibration.holdout(self, paths)

    def calibrate_out_of_fold(self, store: EmbeddingStore, paths: Sequence[Path]) -> None:
        fit_calibration.out_of_fold_calibration(self, store, paths)

    def calibrate_f1(self, labels: np.ndarray, scores: np.ndarray) -> None:
        fit_calibration.f1(self, labels, scores)

    # ------------------------------------------------------------------ predict
    def predict_embeddings(self, emb: np.ndarray, plans=None) -> Prediction:
        """Patch embeddings of whole images, (B, n_tiles * P, D) or (B * n_tiles, P, D) -> Prediction."""
        if self.scorer is None:
            raise RuntimeError("model is not fitted")
        emb = emb.reshape(-1, self.layout.n_tiles * self.layout.patches_per_tile, emb.shape[-1])
        return finish(self.scorer.score(emb), self.layout, self.config.blur_sigma, self.threshold, self.scale,
                      plans)

    def predict(self, images: Sequence[np.ndarray]) -> Prediction:
        prepared = [prepare(im, self.preprocess) for im in images]
        return self.predict_embeddings(self.embed_tensor(stack_inputs(prepared)), [p.plan for p in prepared])

    def predict_paths(self, paths: Sequence[Path], desc: str | None = None) -> Prediction:
        preds = []
        bs = self.config.batch_size
        with progress_bar(desc or "scoring", total=len(paths)) as advance:
            for s in range(0, len(paths), bs):
                chunk = list(paths[s : s + bs])
                preds.append(self.predict([read_image(p) for p in chunk]))
                advance(len(chunk))
        return Prediction.concat(preds)

    # ------------------------------------------------------------------ save / load
    def coreset_projection(self) -> np.ndarray:
        """The (projection_dim, D) float32 map the coreset was selected in, as numpy (stored in
        the bundle so that the runtime can extend the bank without torch)."""
        cfg = self.config
        return projection_matrix(self.bank.shape[1], cfg.projection_dim, cfg.seed).numpy()

    def manifest(self, name: str) -> dict:
        cfg = self.config
        weights = cfg.weights
        backbone = {
            "name": self.spec.name,
            "family": self.spec.family,
            "weights": weights if weights in ("default", "random") else str(Path(weights).resolve()),
            "weights_tag": self.spec.weights_tag if weights == "default" else weights,
            "seed": cfg.seed,
            "layers": [asdict(l) for l in self.layers],
        }
        if weights not in ("default", "random"):
            backbone["weights_sha256"] = sha256_file(Path(weights))
        return {
            "schema_version": bundle_io.SCHEMA_VERSION,
            "format": bundle_io.FORMAT,
            "name": name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "backbone": backbone,
            "preprocess": self.preprocess.to_dict(),
            "features": {
                "aggregation": cfg.aggregation,
                "pretrain_dim": cfg.pretrain_dim,
                "target_dim": self.embed_dim,
                "patch": 3,
                "grid": list(self.grid),
                "input_size": list(self.input_size),
                **manifest_parts(self),
            },
            "memory_bank": {
                "file": bundle_io.BANK_FILE,
                "rows": int(self.bank.shape[0]),
                "dim": int(self.bank.shape[1]),
                "dtype": str(self.bank.dtype),
                "coreset_ratio": cfg.coreset_ratio,
                "bank_size": cfg.bank_size,
                "shards": cfg.shards,
                "projection_dim": cfg.projection_dim,
                "n_starts": cfg.n_starts,
                "seed": cfg.seed,
                "projection_file": bundle_io.PROJECTION_FILE,
                "coverage_radius": (self.coverage_radius if self.coverage_radius is not None
                                    else selection_radius(project(self.bank, self.coreset_projection()))),
                **({"fit_radius": self.fit_radius} if self.fit_radius is not None else {}),
            },
            "scoring": {"k": 1, "distance": "l2", "n_reweight": cfg.n_reweight, "blur_sigma": cfg.blur_sigma},
            "threshold": {"value": self.threshold, "scale": self.scale, **self.fit_info.get("calibration", {})},
            "fit": {k: v for k, v in self.fit_info.items() if k != "calibration"},
            **({"lineage": list(self.lineage)} if self.lineage else {}),
            **({"selection": self.selection} if self.selection else {}),
            "graphs": {},
            "versions": {
                "patchcore_rt": runtime.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
        }

    def save(self, root: str | Path, name: str | None = None, *, bank_dtype: str = "float32",
             graphs: dict | None = None, files: Sequence[str] = (), extra: dict | None = None) -> Path:
        """Write the fitted model as a bundle: the memory bank, then the manifest, last and
        atomically. The one bundle writer: ``export`` passes the ``graphs`` entries and ``files``
        it wrote into ``root`` first, and ``extra`` top-level sections (its ``versions`` are
        merged into the manifest's). ``bank_dtype`` float16 stores the bank rounded to half
        precision (the caller rounds the model's own bank first, so both score alike)."""
        if self.bank is None:
            raise RuntimeError("model is not fitted")
        if bank_dtype not in bundle_io.BANK_DTYPES:
            raise ValueError(f"bank_dtype must be one of {bundle_io.BANK_DTYPES}, got {bank_dtype!r}")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        bundle_io.write_array(root, bundle_io.BANK_FILE, self.bank.astype(bank_dtype))
        bundle_io.write_array(root, bundle_io.PROJECTION_FILE, self.coreset_projection())
        manifest = self.manifest(name or root.name)
        manifest["memory_bank"]["dtype"] = bank_dtype
        manifest["graphs"] = dict(graphs or {})
        extra = dict(extra or {})
        manifest["versions"].update(extra.pop("versions", {}))
        manifest.update(extra)
        bundle_io.finalize_manifest(root, manifest, [bundle_io.BANK_FILE, bundle_io.PROJECTION_FILE, *files])
        return root

    @classmethod
    def load(cls, root: str | Path, device: str = "auto") -> "PatchCore":
        """Rebuild a fitted model from a bundle: backbone from its registry entry and weights
        source, the memory bank from ``memory_bank.npy``."""
        b = bundle_io.read_bundle(root)
        m = b.manifest
        bb = m["backbone"]
        if "weights_sha256" in bb:
            wpath = Path(bb["weights"])
            if not wpath.is_file():
                raise bundle_io.BundleError(f"{root}: backbone weights file {wpath} is gone")
            if sha256_file(wpath) != bb["weights_sha256"]:
                raise bundle_io.BundleError(f"{root}: backbone weights file {wpath} changed since fitting")
        parts = read_parts(m)  # a fused bundle's target_dim is its parts' sum; its config's, the paper part's
        cfg = PatchCoreConfig(
            backbone=bb["name"], layers=tuple(l["name"] for l in bb["layers"]), weights=bb["weights"], seed=bb["seed"],
            pretrain_dim=m["features"]["pretrain_dim"], target_dim=parts[0].dim if parts else m["features"]["target_dim"],
            aggregation=m["features"].get("aggregation", "paper"),
            coreset_ratio=m["memory_bank"]["coreset_ratio"], bank_size=m["memory_bank"].get("bank_size"),
            shards=m["memory_bank"].get("shards", 1), n_reweight=m["scoring"]["n_reweight"],
            blur_sigma=m["scoring"]["blur_sigma"], device=device,
            **{k: m["memory_bank"][k] for k in ("projection_dim", "n_starts") if k in m["memory_bank"]},
        )
        model = cls(cfg, preprocess=b.preprocess)
        model.fused_parts = parts
        if list(model.grid) != list(m["features"]["grid"]):
            raise bundle_io.BundleError(f"{root}: the backbone gives a {model.grid} patch grid, the manifest says "
                                        f"{m['features']['grid']}")
        model.set_bank(b.memory_bank().astype(np.float32))
        model.threshold = m["threshold"]["value"]
        model.scale = m["threshold"]["scale"]
        model.lineage = b.lineage
        model.coverage_radius = m["memory_bank"].get("coverage_radius")
        model.fit_radius = m["memory_bank"].get("fit_radius")
        return model
