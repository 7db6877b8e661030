"""The model's settings (:class:`PatchCoreConfig`), checked when built, and the config a preset gives
(:func:`preset_config`). The commands build it from :class:`patchcore.fit_options.FitOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.calibration import DEFAULT_PIXEL_QUANTILE

from . import fit_calibration, input_geometry
from .features import AGGREGATIONS
from .out_of_fold import DEFAULT_FOLDS
from .presets import AUTO, DEFAULT_RULE, PRESET_CALIBRATION, resolve_preset

CALIBRATIONS = ("oof", "holdout")


@dataclass
class PatchCoreConfig:
    backbone: str = "wrn50"
    layers: tuple[str, ...] | None = None  # None: the backbone's defaults
    weights: str = "default"  # "default", "random" or a checkpoint path
    seed: int = 0
    pretrain_dim: int = 1024
    target_dim: int | None = 1024  # None: the aggregation's own (paper 1024, local-mean the layers' channels)
    target_dim_auto: bool = False  # export chooses target_dim per product first (patchcore.dims_choice)
    aggregation: str = "paper"  # patch features: paper | local-mean (patchcore.features)
    coreset_ratio: float = 0.1
    bank_size: int | None = None  # rows of the memory bank instead of coreset_ratio
    shards: int = 1  # >1: sharded (composable) coreset, see patchcore.coreset
    projection_dim: int = 128
    n_starts: int = 10
    n_reweight: int = 3
    blur_sigma: float = 4.0
    batch_size: int = 8  # network inputs per forward pass (an image, or one tile)
    holdout: float = 0.1  # holdout calibration: fraction of good images held out; 0: no threshold at all
    threshold_quantile: float = 0.99
    calibration: str = "oof"  # oof: every training image scored out of fold | holdout (see patchcore.out_of_fold)
    folds: int = DEFAULT_FOLDS  # oof: folds of the training images
    pixel_quantile: float = DEFAULT_PIXEL_QUANTILE  # oof: quantile of good maps' values = the pixel threshold
    operating_point: str | None = None  # oof (None: patchcore.presets.DEFAULT_POLICY): the policy that picks the threshold (runtime.operating_point)
    rule: str = DEFAULT_RULE  # oof: image-score | either | auto (chosen on the evidence)
    ng: str | None = None  # oof: a folder of real NG images (half set the operating point, half check it)
    resize: int | None = None  # override the paper recipe's sizes (implies geometry "paper")
    crop: int | None = None
    geometry: str | None = None  # paper | auto | crop | resize | pad (patchcore.input_geometry); None: default
    input_size: tuple[int, int] | None = None  # crop, resize, pad: the canvas (h, w)
    tile: tuple[int, int] | None = None  # tiling: tile (h, w), the network input
    tile_overlap: int = 0  # pixels shared by neighbouring tiles
    tile_scale: float | None = None  # tiling without input_size: canvas = median training size x this (1)
    max_pixels_in: int | None = None  # auto's pixel budget (None: the backbone's square input, 224 x 224)
    upsample: bool = False  # auto may enlarge images smaller than its budget
    roi: tuple[int, int, int, int] | None = None  # fixed region of interest (x0, y0, x1, y1), original pixels
    device: str = "auto"
    search_backend: str = "auto"
    work_dir: str | None = None  # where embeddings are spilled while fitting (None: the system temp folder)
    select: bool = False  # choose aggregation, input and eq. 7 neighbours first (patchcore.recipe)
    select_latency_ms: float | None = None  # selection drops candidates slower than this (ms per image)

    def __post_init__(self) -> None:
        """Refuse impossible settings before any image is read (ValueError names the setting)."""
        checks = [
            (0 < self.coreset_ratio <= 1, f"coreset ratio must be in (0, 1], got {self.coreset_ratio}"),
            (self.bank_size is None or self.bank_size >= 1, f"bank size must be >= 1, got {self.bank_size}"),
            (self.shards >= 1, f"shards must be >= 1, got {self.shards}"),
            (0 <= self.holdout < 1, f"holdout must be in [0, 1), got {self.holdout}"),
            (0 < self.threshold_quantile <= 1, f"threshold quantile must be in (0, 1], got {self.threshold_quantile}"),
            (self.calibration in CALIBRATIONS,
             f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}"),
            (self.folds >= 2, f"--folds must be >= 2, got {self.folds}"),
            (0 < self.pixel_quantile < 1, f"pixel quantile must be in (0, 1), got {self.pixel_quantile}"),
            (self.n_reweight == 0 or self.n_reweight >= 2, "n_reweight must be 0 (off) or >= 2"),
            (self.aggregation in AGGREGATIONS,
             f"--aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}"),
            (self.target_dim is None or self.target_dim >= 1, f"--target-dim must be >= 1, got {self.target_dim}"),
            (not self.target_dim_auto or self.aggregation == "paper",
             f"--target-dim auto chooses the paper aggregation's dimension; --aggregation {self.aggregation} keeps "
             "its own (give a number or leave --target-dim unset)"),
            (min(self.pretrain_dim, self.projection_dim, self.batch_size, self.n_starts) >= 1,
             "pretrain_dim, projection_dim, batch_size and n_starts must be >= 1"),
            (self.blur_sigma >= 0, f"blur sigma must be >= 0, got {self.blur_sigma}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device must be auto, cpu or cuda, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        fit_calibration.check_options(self)
        check_fused(self)
        self.input_size = input_geometry.parse_size(self.input_size)
        self.tile = input_geometry.parse_size(self.tile, "--tile")
        self.roi = input_geometry.parse_roi(self.roi)
        input_geometry.check_options(self.geometry, self.input_size, self.tile, self.tile_overlap, self.tile_scale,
                                     self.resize, self.crop, self.max_pixels_in, self.upsample)

    def geometry_options(self) -> dict:
        return {"geometry": self.geometry, "input_size": self.input_size, "tile": self.tile,
                "tile_overlap": self.tile_overlap, "tile_scale": self.tile_scale, "resize": self.resize,
                "crop": self.crop, "max_pixels_in": self.max_pixels_in, "upsample": self.upsample, "roi": self.roi}


def check_fused(cfg) -> None:
    """What a fused fit (:mod:`patchcore.fused`) needs, as one-line ValueErrors (exit 2) before any image is read."""
    if cfg.aggregation != "fused":
        return
    if cfg.calibration != "oof" or cfg.holdout <= 0:
        raise ValueError("--aggregation fused normalises each part by its out-of-fold good scores: it needs "
                         "--calibration oof (--preset paper calibrates on a holdout: add --calibration oof)")
    if cfg.shards != 1:
        raise ValueError("--aggregation fused fits one shard: leave --shards at 1")


def preset_config(preset: str = "default", **options) -> PatchCoreConfig:
    """A :class:`PatchCoreConfig` with ``preset``'s settings for what ``options`` (PatchCoreConfig's
    fields) leave unset: what the commands fit with."""
    given = {k: options.pop(k, None) for k in ("aggregation", "target_dim", "n_reweight", "geometry", "max_pixels_in")}
    given["coreset"] = options.pop("coreset_ratio", None)
    v = resolve_preset(preset, given, options.get("tile"), options.get("input_size"), options.get("resize"),
                       options.get("crop"))
    v["coreset_ratio"] = v.pop("coreset")
    if options.get("calibration") is None:
        options["calibration"] = PRESET_CALIBRATION.get(preset, "oof")
    return PatchCoreConfig(**v, **options, select=preset == AUTO)
