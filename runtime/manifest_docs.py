"""What each manifest field is, in words: the generated manifest reference (docs: reference/manifest.md)
reads it beside :data:`runtime.manifest.FIELDS` and :data:`~runtime.manifest.OPTIONAL_FIELDS`, the
checks; kept apart from them because it changes with the docs, not with the schema."""

from __future__ import annotations

from .manifest import DIGEST_FIELD

# a test keeps it in step with FIELDS and OPTIONAL_FIELDS
FIELD_DOCS: dict[str, str] = {
    "format": "what this file is",
    "name": "the bundle's name (the bundle id is `name@` + the manifest digest's first 12 hex digits)",
    "backbone": "the feature extractor",
    "backbone.name": "registry name (`patchcore backbones`), e.g. `effnet-lite0`, `wrn50`, `clip-vit-b16`",
    "backbone.weights_tag": "which weights: a pretrained tag, `random`, or a local file's name",
    "backbone.layers": "the feature layers used, shallow to deep",
    "preprocess": "how a decoded image becomes network inputs (below)",
    "features": "the patch features the graphs output",
    "features.target_dim": "embedding dimensions per patch",
    "features.grid": "patch grid [h, w] of one network input",
    "features.input_size": "network input [h, w] (a tile's size when tiled)",
    "memory_bank": "the coreset of good patches",
    "memory_bank.file": "the bank's `.npy` file (read without pickle, header checked first)",
    "memory_bank.rows": "number of patches in the bank",
    "memory_bank.dim": "dimensions per patch (= `features.target_dim`)",
    "memory_bank.dtype": "storage type of the bank",
    "scoring": "how patch distances become scores",
    "scoring.k": "nearest neighbours per patch",
    "scoring.n_reweight": "neighbours of the eq. 7 image-score reweighting (0: off)",
    "scoring.blur_sigma": "Gaussian blur of the anomaly map, in pixels of the network input",
    "threshold": "the decision threshold",
    "threshold.value": "anomaly score at and above which an image is `ng` (null: no verdicts)",
    "threshold.scale": "the score spread that maps scores to normalised scores (threshold -> 0.5)",
    "versions": "package versions the bundle was written with",
    "files": "every file of the bundle: `{\"sha256\": ..., \"bytes\": ...}`",
    DIGEST_FIELD: "sha256 of this manifest's canonical JSON without this field",
    "features.aggregation": "how layer maps become patch features: the paper's (unfold + adaptive pooling), "
                            "local-mean (3x3 average, concatenated) or fused (both, side by side: `parts`); all are "
                            "inside the feature graph",
    "features.parts": "a fused bundle's parts, in column order of the embeddings and the bank: each part's "
                      "`aggregation`, `dim` and normalisers (`image_center`, `image_scale`, `pixel_center`, "
                      "`pixel_scale`: score -> (score - center) / scale, fitted on its out-of-fold good images); "
                      "the fused score is the mean of the parts' normalised scores (docs/fused.md)",
    "features.search": "`exact`: a fused bundle's parts are searched exactly, every patch (no reduced step)",
    "memory_bank.projection_file": "the coreset's random projection (`.npy`), for `update` without torch",
    "memory_bank.projection_dim": "dimensions of that projection",
    "memory_bank.coverage_radius": "the bank's covering radius in the projection (updates raise it where they stop "
                                   "at `--add` rows short of it)",
    "memory_bank.fit_radius": "the fit's greedy radius: the largest distance of a training patch to the bank (in the "
                              "projection) when the coreset selection stopped; `update` adds new patches until each "
                              "lies this close to the bank (kept through updates)",
    "threshold.calibration_scores": "the good images' scores behind the threshold (out of fold, or held out)",
    "threshold.n_images": "how many good images the threshold rests on (`method` oof-quantile: every training "
                          "image, each scored against a bank of the other folds)",
    "threshold.pixel_value": "the pixel threshold: anomaly-map level above which connected pixels form a defect "
                             "region (a high quantile of good images' out-of-fold map values); bundles without it "
                             "cut regions at `threshold.value`",
    "threshold.pixel_quantile": "the quantile of good map values that gave `pixel_value`",
    "threshold.pixel_base": "the median of good images' map values: a region's `area_px` counts its pixels at or "
                            "above half its peak's height over this level",
    "threshold.spread": "the calibration scores' median, MAD, interquartile range and maximum (`info` shows them)",
    "threshold.trust": "how far the threshold can be trusted given `n_images` (`level` low / moderate / good, "
                       "and why)",
    "threshold.operating_point": "where the bundle calls a part NG and why (docs/calibration.md): the `policy` "
                                 "(false-calls=R, recall=R, f1@D or value=X), the verdict `rule` (`image-score`, or "
                                 "`either` with `min_area_px`: NG when the score reaches the threshold or the largest "
                                 "region is that large), the threshold `value` it picks, who chose it (`chosen_by`), "
                                 "the `expected` false calls and catch rate with 95% intervals, a display `curve` and "
                                 "the `evidence` (good and defect images' scores and largest regions) that `patchcore-rt "
                                 "threshold` moves it on; absent in bundles exported before operating points (the rule "
                                 "is then image-score)",
    "units": "physical units of the images",
    "units.mm_per_px": "millimetres per original image pixel (`export --mm-per-px`): region areas in mm²",
    "lineage": "the bundle's updates, oldest first (`patchcore-rt info` shows them)",
    "selection": "how `--preset auto` chose this bundle's recipe: every candidate's figures on synthetic defects "
                 "of held-out good images, the chosen settings and the tests behind the verdict (docs/selection.md)",
    "selection.verdict": "`switched` (a candidate beat the fixed default), `kept default`, `uncertain` (the "
                         "challenger led but failed a test: the default was kept) or `not run` (too few images)",
    "selection.reason": "the verdict in one line",
    "reduced_precision": "what `export --int8` measured of each reduced-precision variant it ran, against the "
                         "float32 runtime on the same check images (docs/precision.md): per `<engine>:<graph>` the "
                         "feature and image-score errors and the parity verdict, `approved` true/false with its "
                         "`criterion` (`auroc+verdicts` on labelled test images, `image-error+verdicts` on good "
                         "images only), its figures, `verdicts` and the `reasons` of a refusal; `--graph auto` "
                         "chooses only among approved variants. `<kind>_search`: the candidate count `--search "
                         "<kind>` uses",
    "target_dim_choice": "how `export --target-dim auto` chose `features.target_dim`: image and pixel AUROC of "
                         "each size (1024, 512, 256, 128) on synthetic defects of held-out good images, the "
                         "`tolerance`, the `reason` in one line (docs/defaults.md)",
    "target_dim_choice.chosen": "the dimension taken: the smallest size within the tolerance of 1024's figures",
}
