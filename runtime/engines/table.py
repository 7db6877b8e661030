"""The one table of engines x precisions (Ultralytics' exporter drives everything from its formats
table; this does the same): which bundle graph each (engine, precision) runs, with which engine
setting, and whether it is a reduced-precision variant that parity must judge. Export (which graphs
to write and which engines to build), parity (which variants to check), ``info`` (what a bundle can
run here) and ``bench`` (what to time) all read :data:`VARIANTS`.

``key`` is what ``--graph`` names. ``features_bf16`` is not a file: it is ``features_fp32`` run by
OpenVINO with bf16 inference precision (the CPU converts weights and activations itself).
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Variant:
    key: str  # what --graph names
    engine: str  # onnxruntime | openvino | tensorrt
    precision: str  # fp32 | fp16 | bf16 | int8
    graph: str  # the bundle graph (manifest ``graphs`` key) it runs
    kind: str = "features"  # features | scores (search in the graph)

    @property
    def reduced(self) -> bool:
        """A variant whose numbers parity judges against float32 with the reduced-precision criteria."""
        return self.precision in ("bf16", "int8")

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}"


VARIANTS: tuple[Variant, ...] = (
    Variant("features_fp32", "onnxruntime", "fp32", "features_fp32"),
    Variant("features_fp16", "onnxruntime", "fp16", "features_fp16"),
    Variant("features_int8", "onnxruntime", "int8", "features_int8"),
    Variant("scores_fp32", "onnxruntime", "fp32", "scores_fp32", "scores"),
    Variant("scores_fp16", "onnxruntime", "fp16", "scores_fp16", "scores"),
    Variant("features_fp32", "openvino", "fp32", "features_fp32"),
    Variant("features_bf16", "openvino", "bf16", "features_fp32"),
    Variant("features_int8", "openvino", "int8", "features_int8"),
    Variant("features_fp32", "tensorrt", "fp32", "features_fp32"),
    Variant("features_fp16", "tensorrt", "fp16", "features_fp16"),
    Variant("features_int8", "tensorrt", "int8", "features_int8"),
)

# --device value -> engine that serves it (onnxruntime's providers cover cpu, cuda and tensorrt)
DEVICE_ENGINE = {"auto": "onnxruntime", "cpu": "onnxruntime", "cuda": "onnxruntime", "tensorrt": "onnxruntime",
                 "openvino": "openvino"}


def engine_for_device(device: str) -> str:
    try:
        return DEVICE_ENGINE[device]
    except KeyError:
        raise ValueError(f"unknown device {device!r}; choose {', '.join(DEVICE_ENGINE)}") from None


def variants(engine: str | None = None, graphs: set[str] | None = None) -> list[Variant]:
    """The table's rows for ``engine`` (all when None) whose bundle graph is in ``graphs`` (all when None)."""
    return [v for v in VARIANTS if (engine is None or v.engine == engine) and (graphs is None or v.graph in graphs)]


def resolve(engine: str, key: str, graphs: set[str] | None = None) -> Variant:
    """The row for ``--graph key`` on ``engine``; ValueError naming what this engine (and bundle) offers."""
    for v in VARIANTS:
        if v.engine == engine and v.key == key:
            if graphs is not None and v.graph not in graphs:
                have = ", ".join(x.key for x in variants(engine, graphs))
                raise ValueError(f"graph {key!r} needs the bundle's {v.graph}, which it lacks (with {engine}: {have}); "
                                 + ("re-export with --int8" if v.precision == "int8" else "re-export it"))
            return v
    offered = ", ".join(v.key for v in variants(engine, graphs))
    raise ValueError(f"engine {engine} cannot run graph {key!r}; it runs: {offered}")


def reduced_variants(graphs: set[str], engines: tuple[str, ...] = ENGINES) -> list[Variant]:
    """Every int8/bf16 (graph x engine) variant a bundle with ``graphs`` offers: what parity judges."""
    return [v for v in VARIANTS if v.reduced and v.engine in engines and v.graph in graphs]
