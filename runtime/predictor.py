"""Bundle -> scores: preprocess, feature engine, nearest-neighbour scoring, anomaly maps.

With a ``features_*`` graph the engine returns patch embeddings and :class:`PatchScorer` searches
the memory bank. With a ``scores_*`` graph the engine also returns each patch's nearest bank
index (found in-graph, in float32 with the |q|^2 - 2 q.m + |m|^2 expansion); the distance to that
candidate is then recomputed exactly from ``q - m``, and the most anomalous patch of each image
is searched again exactly, so its nearest patch m* (which the reweighting depends on) and the
image score are those of the CPU path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import exact_maps, fused
from .bundle import Bundle, BundleError, check_graph_metadata, read_bundle
from .engines import ENGINES, DeviceUnavailableError, FeatureEngine, engine_cache_dir, engine_for_device, resolve
from .geometry import TileLayout
from .graph_choice import AUTO, GRAPH_CHOICE_CACHE, GraphChoice, choose as choose_graph, machine_key
from .measure import MeasureCache
from .postprocess import SCALE_FLOOR, Prediction, finish
from .preprocess import Prepared, prepare, stack_inputs
from .search.build import build_index
from .search.scorer import PatchScorer


def open_graph(bundle: Bundle, graph: str, device: str = "auto", threads: int | None = None,
               log=lambda s: None) -> FeatureEngine:
    """The engine for ``--graph graph`` on ``--device device`` (one row of the engines x precisions
    table), checked against the manifest: the identity stored in the graph, its input size and its
    output (patches per image, dims). A graph the engine cannot load is a bad bundle naming the
    file (a missing device is not)."""
    m = bundle.manifest
    try:
        variant = resolve(engine_for_device(device), graph, set(m.get("graphs", {})))
    except ValueError as e:
        raise BundleError(str(e)) from None
    path = bundle.path(bundle.graph_info(variant.graph)["file"])
    kind = ENGINES.get(variant.engine)
    try:
        engine = kind.make(bundle, variant, device=device, threads=threads, log=log)
    except DeviceUnavailableError:
        raise
    except Exception as e:  # noqa: BLE001 - engines raise their own classes for corrupt graphs
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{path}: {variant.engine} cannot load this graph ({reason[:300]})") from None
    if engine.metadata or kind.reads_metadata:
        check_graph_metadata(engine.metadata, m, variant.graph, str(path))
    _check_graph_shapes(engine, m, path)
    return engine


def _check_graph_shapes(engine, manifest: dict, path: Path) -> None:
    """The graph takes the manifest's input size and gives grid h*w patches of the bank's dim.
    Dimensions the graph leaves symbolic are read off one probe run of a single zero image."""
    h, w = manifest["features"]["input_size"]
    gh, gw = manifest["features"]["grid"]
    dim = manifest["memory_bank"]["dim"]
    shape_in = engine.input_shape
    if list(shape_in[1:]) != [3, h, w]:
        raise BundleError(f"{path}: graph input is {shape_in}, the manifest's input_size is [{h}, {w}]")
    shape_out = list(engine.output_shape[1:])
    if not all(isinstance(d, int) for d in shape_out):
        try:
            shape_out = list(engine.run(np.zeros((1, 3, h, w), np.float32)).shape[1:])
        except Exception as e:  # noqa: BLE001 - a graph that cannot run is a bad bundle, whatever ORT raises
            raise BundleError(f"{path}: the graph fails on a {h}x{w} input ({str(e).strip()[:300]})") from None
    if shape_out != [gh * gw, dim]:
        raise BundleError(f"{path}: graph gives {shape_out[0]} patches of {shape_out[1]} dims per image; the manifest's "
                          f"grid {gh}x{gw} and bank dim need {gh * gw} of {dim}")


class Predictor:
    """Scores images with a bundle. ``graph`` picks the bundle's feature graph (``features_fp32``
    by default, ``features_fp16``, ``features_int8``, and ``features_bf16`` with ``device`` openvino),
    or ``auto``: the fastest here of float32 and the variants the export's parity approved
    (:mod:`runtime.graph_choice`; :attr:`graph` is then the one chosen);
    ``search`` is ``auto``, ``faiss``, ``numpy``, ``bf16`` or ``int8`` (a reduced-precision candidate
    step, ``candidates`` per patch, rescored in float32 as bounds, the patches that decide scores and
    shown maps settled exactly; :mod:`runtime.search.reduced`; ``auto``: :mod:`runtime.search.auto`).

    :meth:`prepare` turns one decoded image into its network inputs (one, or its tiles) and its
    geometry; :meth:`predict_prepared` scores a batch of those, so a batch need not hold decoded
    images. :meth:`predict` does both."""

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", graph: str = "features_fp32",
                 search: str = "auto", engine: FeatureEngine | None = None, threads: int | None = None,
                 candidates: int | None = None, log=lambda s: None, overlays: bool = False):
        self.bundle = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
        self.overlays = overlays  # maps exact down to the overlays' floor (see level), unless a call says
        self.settled: np.ndarray | None = None  # (B,) patches the last call's reduced search settled per image
        m = self.bundle.manifest
        self.spec = self.bundle.preprocess
        self.grid = tuple(m["features"]["grid"])
        self.input_size = tuple(m["features"]["input_size"])
        self.layout = TileLayout.for_spec(self.spec, self.grid)  # checked by read_bundle
        self.blur_sigma = float(m["scoring"]["blur_sigma"])
        self.threshold = m["threshold"]["value"]
        self.scale = m["threshold"]["scale"]
        self.graph_choice: GraphChoice | None = None
        if engine is None and graph == AUTO:
            engine, variant, self.graph_choice = choose_graph(
                lambda v: open_graph(self.bundle, v.key, ENGINES.get(v.engine).device or device, threads, log=log),
                m, device, log=log,
                cache=MeasureCache(engine_cache_dir(self.bundle.root) / GRAPH_CHOICE_CACHE,
                                   machine_key(m, self.bundle.bundle_id, device, threads)))
            graph, source = variant.key, variant.graph
        elif engine is None:
            engine = open_graph(self.bundle, graph, device, threads, log=log)
            source = resolve(engine_for_device(device), graph).graph
        else:
            source = graph
        self.graph = graph
        info = self.bundle.graph_info(source)  # BundleError naming the graphs present when absent
        self.in_graph_search = info.get("kind") == "scores"
        if self.in_graph_search and not hasattr(engine, "run_outputs"):
            raise BundleError(f"graph {graph!r} outputs nearest-neighbour indices, but engine {engine.name} "
                              "cannot return them")
        self.engine = engine
        bank = self.bundle.memory_bank().astype(np.float32)
        # what the export measured for this bundle: candidates per patch (and int8's principal components)
        # (--search auto may choose the int8 step: it reads the int8 facts too)
        kind = "int8" if search == "auto" else search
        measured = (m.get("reduced_precision", {}).get(f"{kind}_search") or {}) if kind in ("bf16", "int8") else {}
        for key in ("candidates", "components"):
            value = measured.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise BundleError(f"manifest reduced_precision.{kind}_search.{key} must be a positive integer, "
                                  f"got {value!r}: re-export the bundle")
        if candidates is None:
            candidates = measured.get("candidates")
        search_device = "cuda" if device in ("cuda", "tensorrt") else "auto"
        parts = fused.read_parts(m["features"])
        if parts is not None:  # both parts searched exactly (runtime.fused), whatever --search auto would pick
            if self.in_graph_search:
                raise BundleError(f"graph {graph!r} searches one bank in-graph; a fused bundle has two: use a "
                                  "features_* graph")
            self.scorer, self.search_choice = fused.make_scorer(bank, parts, search, m["scoring"]["n_reweight"],
                                                                search_device), {}
            return
        index, self.search_choice = build_index(  # search_choice: what --search auto measured ({} else)
            bank, search, device=search_device, candidates=candidates, components=measured.get("components"))
        self.scorer = PatchScorer(bank, index, n_reweight=m["scoring"]["n_reweight"])

    @property
    def map_level(self) -> float | None:
        """:meth:`level` for this predictor's ``overlays`` (what a call that does not say uses)."""
        return self.level(self.overlays)

    def level(self, overlays: bool) -> float | None:
        """The anomaly-map value from which a reduced-precision search makes every pixel exact.

        For records (``overlays`` False): the level regions are cut at (the pixel threshold, or the
        image threshold in a bundle without one). Every region pixel, its box, area, peak and mean,
        and the peak of any map that reaches the level, are then the exact search's.

        Where an overlay is drawn (``overlays`` True): also down to the overlays' floor, threshold -
        scale (normalised score 0, the median held-out good image score), below which an overlay
        shows no colour; with a pixel threshold, the lower of that and the pixel threshold's own
        floor (overlays are centred on it). That settles most of a part's patches, where the pixel
        threshold settles only those around its defects, so it is paid only for the images drawn.

        Below the level a pixel may keep an over-estimate (a distance to a real bank row) but stays
        below it. None for a bundle without a threshold: every patch is settled."""
        if self.threshold is None or self.scale is None:
            return None
        pixel = self.bundle.manifest["threshold"].get("pixel_value")
        cut = float(self.threshold) if pixel is None else float(pixel)  # where regions are cut (pixel_level)
        if not overlays:
            return cut
        level = min(cut, float(self.threshold) - float(self.scale))
        if pixel is not None:  # overlays are centred on the pixel threshold
            level = min(level, cut - max(float(self.scale), SCALE_FLOOR * abs(cut)))
        return level

    def map_patches(self, bounds: np.ndarray, overlays=None) -> np.ndarray:
        """(B, P) upper bounds of the patch scores -> (B, P) bool: the patches to settle exactly for
        the maps to be exact at and above :meth:`level` (:mod:`runtime.exact_maps`); ``overlays``: one
        flag per image, or one for all (None: this predictor's)."""
        drawn = self._drawn(overlays, len(bounds))
        out = np.zeros(bounds.shape, bool)
        for flag in (False, True):
            rows = drawn == flag
            if not rows.any():
                continue
            level = self.level(flag)
            out[rows] = True if level is None else exact_maps.patches_to_settle(
                bounds[rows], self.layout, self.blur_sigma, level)
        return out

    def _drawn(self, overlays, n: int) -> np.ndarray:
        """(n,) bool: which images of a call get an overlay (``overlays`` None: this predictor's flag)."""
        flags = np.broadcast_to(np.asarray(self.overlays if overlays is None else overlays, bool), (n,))
        return np.array(flags)

    def info(self) -> dict:
        search = "in-graph + exact rescoring" if self.in_graph_search else self.scorer.backend
        if isinstance(self.scorer, fused.FusedScorer):
            search = f"fused: {' + '.join(p.aggregation for p in self.scorer.parts)}, each {search}, exact"
        out = {"bundle": self.bundle.bundle_id, "engine": self.engine.name, "graph": self.graph, "search": search,
               "precision": self.precision}
        if self.search_choice:
            out["search_choice"] = dict(self.search_choice)
        if self.graph_choice is not None:
            out["graph_choice"] = self.graph_choice.as_dict()
        return out

    @property
    def precision(self) -> str:
        """The engine and the precision it actually ran, e.g. ``openvino bf16`` (in each record)."""
        kind = (getattr(self.engine, "info", None) or {}).get("engine", self.engine.name.split(":")[0])
        return f"{kind} {getattr(self.engine, 'precision', 'fp32')}"

    def prepare(self, image: np.ndarray) -> Prepared:
        """One RGB uint8 image -> its network inputs and geometry plan (PreprocessError if unusable)."""
        return prepare(image, self.spec)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images -> (B, n_tiles * P, D) float32 patch embeddings from the bundle's
        feature graph (what the memory bank holds; a bank update adds rows of these)."""
        x = stack_inputs([self.prepare(im) for im in images])
        emb = self.engine.run_outputs(x)["embeddings"] if self.in_graph_search else self.engine.run(x)
        return emb.reshape(len(images), -1, emb.shape[-1])

    def predict(self, images: Sequence[np.ndarray], overlays=None) -> Prediction:
        """RGB uint8 images -> scores, maps and verdicts (``overlays``: see :meth:`predict_prepared`)."""
        t0 = time.perf_counter()
        prepared = [self.prepare(im) for im in images]
        seconds = time.perf_counter() - t0
        pred = self.predict_prepared(prepared, overlays)
        pred.timings["preprocess"] += seconds
        return pred

    def predict_prepared(self, prepared: Sequence[Prepared], overlays=None) -> Prediction:
        """Prepared images -> scores, maps (on each canvas; ``map_on_original`` for the image's
        own pixels) and verdicts. ``overlays``: which images get an overlay drawn (one bool per
        image, or one for all; None: the predictor's ``overlays``), whose maps a reduced search
        then settles down to the overlays' floor (:meth:`level`). :attr:`settled` says how many
        patches of each image it searched exactly."""
        t0 = time.perf_counter()
        x = stack_inputs(prepared)
        n = len(prepared)
        t1 = time.perf_counter()
        if self.in_graph_search:
            outs = self.engine.run_outputs(x)
            emb = outs["embeddings"]
            t2 = time.perf_counter()
            try:
                s = self.scorer.score_candidates(emb.reshape(n, -1, emb.shape[-1]), outs["nn_index"].reshape(n, -1))
            except ValueError as e:
                raise BundleError(f"graph {self.graph!r}: {e}") from None
        else:
            emb = self.engine.run(x)
            t2 = time.perf_counter()
            emb = emb.reshape(n, -1, emb.shape[-1])
            # a reduced candidate step settles first, exactly, the patches the maps show (map_patches)
            s = self.scorer.score(emb, settle=lambda bounds: self.map_patches(bounds, overlays))
        self.settled = None if s.exact is None else s.exact.sum(axis=1)
        t3 = time.perf_counter()
        pred = finish(s, self.layout, self.blur_sigma, self.threshold, self.scale, [p.plan for p in prepared])
        t4 = time.perf_counter()
        pred.timings = {"preprocess": t1 - t0, "features": t2 - t1, "search": t3 - t2, "postprocess": t4 - t3}
        return pred
