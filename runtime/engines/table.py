"""The table of engines and the table of engines x precisions (Ultralytics' exporter drives
everything from its formats table; this does the same).

:data:`ENGINES` is one :class:`runtime.plugins.PluginTable`: a row per engine naming the module and
the factory that opens a bundle's graph in it (``open_variant(bundle, variant, device=, threads=,
log=)``), and the precisions of the graphs it runs. :data:`VARIANTS`, derived from it, says which
bundle graph each (engine, precision) runs, with which engine setting, and whether it is a
reduced-precision variant that parity must judge. Export (which graphs to write and which engines
to build), parity (which variants to check), ``info`` (what a bundle can run here), ``bench`` (what
to time) and the predictor (which factory opens a graph) all read them.

``key`` is what ``--graph`` names. ``features_bf16`` is not a file: it is ``features_fp32`` run by
OpenVINO with bf16 inference precision (the CPU converts weights and activations itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..plugins import Plugin, PluginTable

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# precisions an engine makes itself from another precision's graph: OpenVINO runs features_fp32 in bf16
_GRAPH_PRECISION = {"bf16": "fp32"}


@dataclass(frozen=True)
class EngineKind(Plugin):
    features: tuple[str, ...] = ()  # precisions of the features_* graphs it runs
    scores: tuple[str, ...] = ()  # precisions of the scores_* graphs (search in the graph) it runs
    # whether it always reads the graph's metadata (the identity the export stored): a graph without
    # one is then refused; OpenVINO may not expose it, so its graphs are checked where it does
    reads_metadata: bool = True
    device: str = ""  # the --device its graphs open on whatever was asked ("": the one asked for)


ENGINES: PluginTable[EngineKind] = PluginTable("engine", [
    EngineKind("onnxruntime", "runtime.engines.onnxruntime_engine", "open_variant",
               what="onnxruntime: CPU, CUDA and TensorRT providers", features=("fp32", "fp16", "int8"),
               scores=("fp32", "fp16")),
    EngineKind("openvino", "runtime.engines.openvino_engine", "open_variant", needs="the [openvino] extra",
               what="OpenVINO on x86 CPUs", features=("fp32", "bf16", "int8"), reads_metadata=False,
               device="openvino"),
    EngineKind("tensorrt", "runtime.engines.tensorrt_engine", "open_variant", needs="TensorRT and a CUDA GPU",
               what="TensorRT engines built on the target GPU", features=("fp32", "fp16", "int8")),
])


@dataclass(frozen=True)
class Variant:
    key: str  # what --graph names
    engine: str  # a key of ENGINES
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


VARIANTS: tuple[Variant, ...] = tuple(
    Variant(f"{kind}_{p}", engine.key, p, f"{kind}_{_GRAPH_PRECISION.get(p, p)}", kind)
    for engine in ENGINES for kind, precisions in (("features", engine.features), ("scores", engine.scores))
    for p in precisions)

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


def reduced_variants(graphs: set[str], engines: tuple[str, ...] | None = None) -> list[Variant]:
    """Every int8/bf16 (graph x engine) variant a bundle with ``graphs`` offers (on ``engines``, all
    when None): what parity judges."""
    return [v for v in VARIANTS if v.reduced and (engines is None or v.engine in engines) and v.graph in graphs]
