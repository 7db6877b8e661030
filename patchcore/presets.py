"""The presets (what a fit uses for the options left unset) and the operating point's defaults.

Plain data and checks, free of torch and typer: the command line (:mod:`patchcore.fit_options`),
the model's config (:mod:`patchcore.config`) and the operating point's evidence
(:mod:`patchcore.operating_evidence`) all read them from here.
"""

from __future__ import annotations

# The operating point's default policy and the decision rules (patchcore.operating_evidence): chosen
# by the study in BENCHMARKS.md ("Operating point"), docs/defaults.md.
DEFAULT_POLICY = "false-calls=4%"
DEFAULT_RULE = "image-score"
RULE_CHOICES = ("auto", "image-score", "either")

# The settings each preset gives options left unset (geometry None: the effective default of
# patchcore.input_geometry; max_pixels_in applies to --geometry auto only).
# "default" is what the study in BENCHMARKS.md ("Patch features and resolution") measured best
# across classes (README, "Defaults, presets, patch features and a region of interest").
# target_dim stays 1024: no smaller size kept every class within issue 42's 0.005 AUROC (BENCHMARKS.md
# "bank-dims", docs/defaults.md "The bank's dimension"); `export --target-dim auto` chooses per product.
PRESETS = {
    "default": {"aggregation": "paper", "target_dim": 1024, "n_reweight": 9, "geometry": None,
                "max_pixels_in": 320 * 320, "coreset": 0.01},
    "paper": {"aggregation": "paper", "target_dim": 1024, "n_reweight": 3, "geometry": "paper", "max_pixels_in": None,
              "coreset": 0.1},
}
# How each preset calibrates its threshold when --calibration is not given: --preset paper keeps the
# held-out share out of the bank, as it always did, so its figures stay bit for bit.
PRESET_CALIBRATION = {"default": "oof", "paper": "holdout", "auto": "oof"}
# "auto" chooses these itself among candidate recipes (patchcore.recipe); it fits "default"'s bank
AUTO = "auto"
CHOSEN_BY_AUTO = {"aggregation": "--aggregation", "target_dim": "--target-dim", "n_reweight": "--n-reweight",
                  "geometry": "--geometry", "max_pixels_in": "--max-pixels-in", "resize": "--resize", "crop": "--crop",
                  "input_size": "--input-size", "tile": "--tile"}


def preset_values(preset: str, **given):
    """The options ``given`` (None = unset) completed from ``preset``; ValueError for an unknown preset."""
    if preset not in PRESETS and preset != AUTO:
        raise ValueError(f"--preset must be one of {', '.join([*PRESETS, AUTO])}, got {preset!r}")
    values = PRESETS["default" if preset == AUTO else preset]
    out = {k: (values.get(k) if v is None else v) for k, v in given.items()}
    return out


def check_auto(preset: str, **given) -> None:
    """``--preset auto`` chooses the recipe itself: an explicit option it chooses is a ValueError (exit 2)."""
    if preset != AUTO:
        return
    clash = [CHOSEN_BY_AUTO[k] for k, v in given.items() if k in CHOSEN_BY_AUTO and v is not None]
    if clash:
        raise ValueError(f"--preset auto chooses {', '.join(clash)} itself; give either --preset auto or "
                         f"{' '.join(clash)} (with --preset default or paper)")


def resolve_preset(preset: str, given: dict, tile, input_size, resize, crop) -> dict:
    """``given`` (aggregation, target_dim, n_reweight, geometry, max_pixels_in, coreset; None = unset)
    completed from ``preset``, where the explicit geometry options (``tile`` ... ``crop``) leave room."""
    from . import input_geometry

    check_auto(preset, tile=tile, input_size=input_size, resize=resize, crop=crop, **given)
    v = preset_values(preset, **given)
    if given["aggregation"] is not None and given["target_dim"] is None:
        v["target_dim"] = None  # an aggregation chosen by hand keeps its own dims (local-mean: native)
    if v["geometry"] == "paper" and given["geometry"] is None and (tile is not None or input_size is not None):
        v["geometry"] = None  # the preset's crop gives way to explicit tiling or canvas options
    if given["max_pixels_in"] is None and input_geometry.effective_geometry(v["geometry"], tile, resize, crop) != "auto":
        v["max_pixels_in"] = None  # the preset's budget is auto's only
    return v
