"""``info``: what a bundle is, what it was built with, its history of updates, which devices and
camera sources it can use here, and whether its files still match their checksums. Never loads the model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import onnxruntime as ort
import typer
from rich.table import Table

from ..engines.table import variants
from ..bundle import MANIFEST, Bundle, read_bundle
from ..calibration import pixel_level
from ..fileio import sha256_file
from ..graph_choice import verdict_text
from ..operating_point import describe as describe_operating_point
from ..parity_record import parity_line, read_parity_record
from ..update import UpdateResult
from .messages import info, warn
from .sources import describe as camera_sources


def checksums(bundle: Bundle) -> dict[str, str]:
    """file -> "ok" or "MISMATCH" (sha256 recomputed for every file the manifest lists)."""
    out = {}
    for rel, meta in sorted(bundle.manifest["files"].items()):
        out[rel] = "ok" if sha256_file(bundle.root / rel) == meta.get("sha256") else "MISMATCH"
    return out


def devices() -> dict[str, Any]:
    """What this machine offers the runtime (without creating a session or touching a GPU)."""
    d: dict[str, Any] = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    try:
        import faiss  # optional: reported when installed

        d["faiss"] = faiss.__version__
        d["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        d["faiss"] = None
        d["faiss_gpus"] = 0
    d["tensorrt_python"] = importlib.util.find_spec("tensorrt") is not None
    d["openvino_python"] = importlib.util.find_spec("openvino") is not None  # found, not imported
    provs = d["providers"]
    d["usable_devices"] = ["cpu"] + [name for name, p in (("cuda", "CUDAExecutionProvider"),
                                                         ("tensorrt", "TensorrtExecutionProvider")) if p in provs]
    if d["openvino_python"]:
        d["usable_devices"].append("openvino")
    return d


def runnable_variants(graphs: set[str], dev: dict[str, Any]) -> list[dict[str, Any]]:
    """The engines x precisions table's rows this bundle offers: the bundle ``graph`` file each runs
    (``features_bf16`` is ``features_fp32`` at bf16), and whether it runs here (``why_not`` if not:
    the engine is not installed, or the CPU lacks bf16)."""
    have = {"onnxruntime": True, "openvino": dev["openvino_python"], "tensorrt": dev["tensorrt_python"]}
    rows = []
    for v in variants(graphs=graphs):
        why_not = None if have[v.engine] else f"{v.engine} not installed"
        if why_not is None and v.engine == "openvino" and v.precision == "bf16" and not _cpu_has_bf16():
            why_not = "this CPU has no bf16 arithmetic"
        rows.append({"engine": v.engine, "precision": v.precision, "graph": v.key, "file_graph": v.graph,
                     "runs_here": why_not is None, **({"why_not": why_not} if why_not else {})})
    return rows


def _cpu_has_bf16() -> bool:
    from ..engines.openvino_engine import cpu_capabilities

    return "BF16" in cpu_capabilities()


def _variant_text(v: dict[str, Any]) -> str:
    """``onnxruntime fp16 (features_fp16)``; a variant that runs another graph names it."""
    graph = v["graph"] if v.get("file_graph", v["graph"]) == v["graph"] else f"{v['file_graph']} at {v['precision']}"
    return f"{v['engine']} {v['precision']} ({graph})"


def bundle_info(root: str | Path) -> dict[str, Any]:
    """Everything ``info`` shows, as a dict. Raises BundleError for a bundle that cannot be read
    at all (bad manifest, missing or truncated files); checksum mismatches are reported, not raised."""
    b = read_bundle(root, verify=False)
    m = b.manifest
    sums = checksums(b)
    dev = devices()
    bank = m["memory_bank"]
    return {
        "path": str(b.root),
        "name": b.name,
        "bundle_id": b.bundle_id,
        "schema_version": m["schema_version"],
        "created": m.get("created"),
        "backbone": {k: m["backbone"].get(k) for k in ("name", "family", "weights", "weights_tag", "seed")}
        | {"layers": [l.get("name") if isinstance(l, dict) else l for l in m["backbone"]["layers"]]},
        "preprocess": m["preprocess"],
        "input_size": m["features"]["input_size"],
        "grid": m["features"]["grid"],
        "memory_bank": {"rows": bank["rows"], "dim": bank["dim"], "dtype": bank["dtype"],
                        "coreset_ratio": bank.get("coreset_ratio")},
        "scoring": m["scoring"],
        "threshold": {k: v for k, v in m["threshold"].items() if k not in ("calibration_scores", "operating_point")},
        "operating_point": operating_point(m["threshold"]),
        "pixel_threshold": {"value": pixel_level(m["threshold"]).value, "source": pixel_level(m["threshold"]).source},
        "units": m.get("units", {}),
        "lineage": b.lineage,
        "graphs": {k: v.get("file") for k, v in m.get("graphs", {}).items()},
        "versions": m.get("versions", {}),
        "checksums": sums,
        "checksums_ok": all(v == "ok" for v in sums.values()),
        "devices": dev,
        "variants": runnable_variants(set(m.get("graphs", {})), dev),
        "manifest": str(b.root / MANIFEST),
        "reduced_precision": m.get("reduced_precision", {}),
        "parity": read_parity_record(b.root, b.bundle_id),
        "result_sinks": result_sinks(),
        "camera_sources": camera_sources(),
        "selection": m.get("selection"),
    }


def operating_point(threshold: dict[str, Any]) -> dict[str, Any] | None:
    """The operating point without its evidence and curve (``threshold`` shows them in full), and
    in words (:func:`runtime.operating_point.describe`); None for a bundle exported before
    operating points existed."""
    op = threshold.get("operating_point")
    if not isinstance(op, dict):
        return None
    ev = op.get("evidence", {})
    sets = {k: {"images": len(ev.get(k, {}).get("scores", [])), "source": ev.get(k, {}).get("source")}
            for k in ("good", "defects")}
    return {**{k: v for k, v in op.items() if k not in ("evidence", "curve")}, "evidence": sets,
            "words": describe_operating_point(op)}


def result_sinks() -> list[dict[str, Any]]:
    """The ``--publish`` kinds (the sinks table) and whether each one's package is installed here."""
    import importlib.util

    from .sinks.table import SINKS

    def have(package: str) -> bool:
        module = {"paho-mqtt": "paho.mqtt"}.get(package, package)
        try:
            return not package or importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    return [{"scheme": k.key, "what": k.what, "needs": k.needs, "installed": have(k.needs)} for k in SINKS]


def _fmt(value) -> str:
    return "none" if value is None else f"{value:.6g}"


def describe_update(entry: dict[str, Any]) -> str:
    """One line for one lineage entry (``info``'s history, and what ``update`` reports)."""
    if entry.get("kind") == "threshold":  # a version written by patchcore-rt threshold
        from ..threshold import describe_version

        return describe_version(entry)
    rows = entry.get("rows", {})
    cal = entry.get("calibration", {})
    before, after = cal.get("before", {}), cal.get("after", {})
    thr = (f"threshold {_fmt(before.get('value'))} -> {_fmt(after.get('value'))}" if cal.get("recalibrated")
           else f"threshold kept at {_fmt(after.get('value'))} ({after.get('method') or 'none'})")
    stop = entry.get("stop")  # absent in entries written before the stop rule was recorded
    rule = ""
    if stop:
        cap = "" if stop.get("cap") is None else f", cap {stop['cap']} rows"
        rule = f" ({stop.get('rule')}: radius {_fmt(stop.get('radius'))}{cap})"
    line = (f"{entry.get('created', '?')} {entry.get('tool', 'update')}: +{entry.get('rows_added')} rows "
            f"({rows.get('before')} -> {rows.get('after')}) from {len(entry.get('images', []))} images "
            f"({entry.get('patches')} patches, {entry.get('covered')} already covered, stopped: "
            f"{entry.get('stopped')}{rule}); {thr}; parent {entry.get('parent')}")
    if entry.get("graphs_dropped"):
        line += f"; dropped {', '.join(entry['graphs_dropped'])} (held the old bank: export again for them)"
    return line


def print_update(result: UpdateResult, as_json: bool) -> None:
    """What both update commands print: the new bundle's line and any warning on stderr, then
    the summary as JSON (``--json``) or the new bundle's folder on stdout."""
    info(f"{result.bundle.bundle_id}: {describe_update(result.entry)}")
    for message in result.warnings():
        warn(message)
    typer.echo(json.dumps(result.summary()) if as_json else str(result.bundle.root))


def _geometry(pre: dict[str, Any]) -> str:
    """The preprocessing's geometry in words (manifests before modes existed are crop mode)."""
    mode = pre.get("mode", "crop")
    size = pre.get("size")
    if mode == "crop" and size is None:
        text = f"resize {pre.get('resize')}, crop {pre.get('crop')}"
    elif mode == "crop":
        text = f"crop {size[0]}x{size[1]} (cover {pre.get('resize')})"
    else:
        text = f"{mode} {size[0]}x{size[1]}"
    if pre.get("tile"):
        stride = pre.get("tile_stride") or pre["tile"]
        text += f", tiles {pre['tile'][0]}x{pre['tile'][1]} every {stride[0]}x{stride[1]}"
    return text


def render(info: dict[str, Any]):
    """A rich renderable summary of :func:`bundle_info`."""
    t = Table(show_header=False, box=None, pad_edge=False, title=f"bundle {info['bundle_id']}", title_justify="left")
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    bb = info["backbone"]
    thr = info["threshold"]
    pre = info["preprocess"]
    bank = info["memory_bank"]
    dev = info["devices"]
    rows = [
        ("path", info["path"]),
        ("schema", f"v{info['schema_version']}, created {info['created'] or '?'}"),
        ("backbone", f"{bb['name']} ({bb.get('weights_tag') or bb.get('weights')}), layers {', '.join(map(str, bb['layers']))}"),
        ("preprocess", f"{_geometry(pre)}, {pre.get('interpolation')}, {pre.get('channel_order')}; "
                       f"input {info['input_size']}, grid {info['grid']}"),
        ("memory bank", f"{bank['rows']} x {bank['dim']} {bank['dtype']} (coreset {bank.get('coreset_ratio')})"),
        ("scoring", ", ".join(f"{k} {v}" for k, v in info["scoring"].items())),
        ("threshold", "none (no verdicts)" if thr.get("value") is None else
         f"{thr['value']:.6g} (scale {thr.get('scale') or 0:.6g}, {thr.get('method', '?')})"),
        ("calibration", _calibration_line(thr)),
        ("operating point", _operating_point_text(info.get("operating_point"), thr)),
        ("pixel threshold", "none" if info["pixel_threshold"]["value"] is None else
         f"{info['pixel_threshold']['value']:.6g}: {info['pixel_threshold']['source']}"),
        ("graphs", ", ".join(f"{k}: {v}" for k, v in info["graphs"].items()) or "none (run export)"),
        ("recipe", _selection_line(info.get("selection"))),
        ("history", "fitted, never updated" if not info["lineage"] else
         "\n".join(f"{i}. {describe_update(e)}" for i, e in enumerate(info["lineage"], 1))),
        ("built with", ", ".join(f"{k} {v}" for k, v in info["versions"].items())),
        ("checksums", "all ok" if info["checksums_ok"] else
         "; ".join(f"{k} {v}" for k, v in info["checksums"].items() if v != "ok")),
        ("devices here", f"{', '.join(dev['usable_devices'])} (onnxruntime {dev['onnxruntime']}: "
                         f"{', '.join(dev['providers'])})"),
        ("search here", f"faiss {dev['faiss']} ({dev['faiss_gpus']} GPU)" if dev["faiss"] else "numpy (faiss not installed)"),
        ("tensorrt", "python package present" if dev["tensorrt_python"] else "not installed"),
        ("engines x precisions", ", ".join(_variant_text(v) for v in info["variants"] if v["runs_here"]) or "none"),
        ("not here", "; ".join(f"{_variant_text(v)}: {v['why_not']}" for v in info["variants"]
                               if not v["runs_here"]) or "-"),
        ("parity", parity_line(info.get("parity"))),
        ("reduced precision", "; ".join(_reduced_line(k, f) for k, f in info["reduced_precision"].items())
         or "none in this bundle (export --int8 measures int8, and bf16 where OpenVINO runs it)"),
        ("--publish here", ", ".join(f"{k['scheme']}://" + ("" if k["installed"] else f" (needs {k['needs']})")
                                     for k in info.get("result_sinks", []))),
        ("camera sources", "; ".join(f"{c['kind']} ({c['example']})" + ("" if c["available"] else ": not installed")
                                     for c in info["camera_sources"])),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def _calibration_line(thr: dict[str, Any]) -> str:
    """What the threshold rests on: images, method, spread, and how far to trust it."""
    if thr.get("value") is None:
        return "none"
    parts = [f"{thr.get('n_images', '?')} good images, {thr.get('method', '?')}"]
    if thr.get("folds"):
        parts[0] += f" ({thr['folds']} folds)"
    if thr.get("quantile") is not None:
        parts.append(f"quantile {thr['quantile']:g}")
    sp = thr.get("spread")
    if isinstance(sp, dict):
        parts.append(f"median {sp.get('median', 0):.6g}, MAD {sp.get('mad', 0):.3g}, max {sp.get('max', 0):.6g}")
    tr = thr.get("trust")
    if isinstance(tr, dict):
        parts.append(f"trust {tr.get('level')}: {tr.get('why')}")
    return "; ".join(parts)


def _operating_point_text(op: dict | None, thr: dict[str, Any]) -> str:
    """The operating point in words, with how far to trust it (its intervals rest on the
    evidence's image counts), or what a bundle without one has."""
    if op is None:
        return ("none recorded (exported before operating points): rule image-score; `patchcore-rt threshold` "
                "shows the false calls its calibration scores allow" if thr.get("value") is not None else "none")
    lines = [line.strip().removeprefix("operating point: ") for line in op["words"]]
    ev = op["evidence"]
    lines.append(f"evidence: {ev['good']['images']} good ({ev['good']['source']}), {ev['defects']['images']} "
                 f"defects ({ev['defects']['source']}); chosen by {op.get('chosen_by')}")
    n = min(ev["good"]["images"], ev["defects"]["images"] or ev["good"]["images"])
    lines.append("trust: " + ("low: fewer than 100 images behind a rate, its interval is wide" if n < 100 else
                              "the intervals above are 95% intervals on the evidence's counts"))
    return "\n".join(lines)


def _selection_line(sel: dict | None) -> str:
    """How the recipe was chosen: a fixed preset, or what ``--preset auto`` decided and why."""
    if not sel:
        return "fixed (a preset or explicit options)"
    line = f"--preset auto: {sel.get('verdict')}"
    if sel.get("chosen"):
        line += f", {sel['chosen']}"
    line += f" ({sel.get('reason')})"
    if sel.get("candidates"):
        line += f"; {len(sel['candidates'])} candidates on {sel.get('validation', {}).get('good_images')} good images"
    return line


def _reduced_line(key: str, facts: dict) -> str:
    """One variant's measured parity, or one reduced search's candidate count, from the manifest."""
    if key.endswith("_search"):  # e.g. int8_search: what --search int8 uses for this bundle
        c, r = facts.get("candidates"), facts.get("components")
        on = f" on {r} of {facts.get('dims')} principal components" if r else ""
        return (f"--search {key[:-len('_search')]}: {c} candidates{on} "
                f"(recall {facts.get('recall', {}).get(str(c))})")
    if facts.get("measured"):
        return (f"{key}: features {facts['feature_rel_error']:.2%}, image scores "
                f"{facts['image_unweighted_max_rel_error']:.2%} ({facts['images']} images); {verdict_text(facts)}")
    return f"{key}: not measured ({facts.get('reason')})"
