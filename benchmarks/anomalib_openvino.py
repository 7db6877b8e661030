"""The peer's reduced precision: anomalib's PatchCore exported to OpenVINO, float32 and int8 post-training
quantization (NNCF), on the same weights; runs with the python of ``.bench/anomalib-venv`` (with
``openvino`` and ``nncf`` installed there) and writes ``result.json`` to ``--out``.

    .bench/anomalib-venv/bin/python benchmarks/anomalib_openvino.py --data ../shared/datasets/mvtec_ad/bottle \\
        --weights <effnet-lite0 weights file> --backbone effnet-lite0 --coreset 0.1 --out .bench/precision/anomalib

It fits anomalib's PatchCore as ``anomalib_worker.py`` does (same weights, checked there), exports it with
anomalib's own ``to_openvino`` (float32) and ``to_openvino(compression_type=INT8_PTQ)``, which calibrates
NNCF on the training images of an ``MVTecAD`` datamodule; where that path fails, the float32 OpenVINO
model is quantized with ``nncf.quantize`` on the same good training images (the step anomalib's
INT8_PTQ runs), and ``result.json`` says which. Each variant: batch-1 latency on the CPU and image
AUROC over the whole test set from the model's ``pred_score``.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomalib_worker import BACKBONES, read_rgb, to_tensor  # noqa: E402
from common import dir_size_mb, latency_ms, write_json  # noqa: E402


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties counted half): the anomalib venv has no scikit-learn."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--backbone", default="effnet-lite0", choices=sorted(BACKBONES))
    ap.add_argument("--coreset", type=float, default=0.1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-latency", type=int, default=20)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    import anomalib
    import openvino as ov
    import torch
    from anomalib.models import Patchcore

    data = Path(a.data)
    train = sorted((data / "train" / "good").glob("*.png"))
    test = []
    for d in sorted((d for d in (data / "test").iterdir() if d.is_dir()), key=lambda d: (d.name != "good", d.name)):
        test += [(p, int(d.name != "good")) for p in sorted(d.glob("*.png"))]
    labels = np.array([t[1] for t in test])
    res: dict = {"anomalib": anomalib.__version__, "openvino": ov.get_version().split("-")[0], "coreset_ratio": a.coreset,
                 "backbone": a.backbone, "n_train": len(train), "n_test": len(test), "variants": {}, "errors": {}}
    timm_name, layers, loader = BACKBONES[a.backbone]
    pre = Patchcore.configure_pre_processor(image_size=(256, 256), center_crop_size=(224, 224))
    lit = Patchcore(backbone=timm_name, layers=layers, pre_trained=False, coreset_sampling_ratio=a.coreset,
                    pre_processor=pre)
    res["weights"] = loader(lit.model.feature_extractor.feature_extractor, a.weights)
    fitted = out / f"memory_bank-{a.backbone}-{a.coreset}.pt"  # a rerun reuses the fit (minutes at 10%)
    t0 = time.perf_counter()
    if fitted.is_file():
        lit.model.memory_bank = torch.load(fitted, weights_only=True)
    else:
        lit.model.train()
        with torch.no_grad():
            for s in range(0, len(train), 8):
                lit.model(pre(to_tensor([read_rgb(p) for p in train[s : s + 8]])))
        lit.model.subsample_embedding(a.coreset)
        torch.save(lit.model.memory_bank, fitted)
    lit.model.eval()
    lit.eval()
    res["fit_s"] = time.perf_counter() - t0
    res["bank"] = list(lit.model.memory_bank.shape)
    print(f"[anomalib-ov] fit {res['fit_s']:.0f} s, bank {res['bank']}", flush=True)

    export_root = out / "export"
    paths: dict[str, Path] = {}
    h, w = read_rgb(train[0]).shape[:2]
    res["input"] = [2, 3, h, w]

    batch = 2  # anomalib's export traces with a batch of 2 and its Interpolate nodes keep it fixed

    try:
        paths["fp32"] = Path(lit.to_openvino(export_root / "fp32", input_size=(h, w)))
    except Exception as e:  # noqa: BLE001 - reported in result.json
        res["errors"]["fp32"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    try:
        from anomalib.data import MVTecAD
        from anomalib.deploy import CompressionType

        dm = MVTecAD(root=str(data.parent), category=data.name, train_batch_size=batch, eval_batch_size=batch,
                     num_workers=0)
        dm.setup()
        paths["int8"] = Path(lit.to_openvino(export_root / "int8", input_size=(h, w),
                                             compression_type=CompressionType.INT8_PTQ, datamodule=dm))
        res["int8_how"] = "anomalib to_openvino(compression_type=INT8_PTQ) on the MVTecAD datamodule's training images"
    except Exception as e:  # noqa: BLE001 - fall back to the same NNCF step by hand
        res["errors"]["int8_anomalib"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
        if "fp32" in paths:
            import nncf

            model = ov.Core().read_model(paths["fp32"])
            calib = [to_tensor([read_rgb(p) for p in train[i : i + batch]]).numpy() for i in range(0, len(train) - 1, batch)]
            q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
            paths["int8"] = export_root / "int8-nncf" / "model.xml"
            paths["int8"].parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(q, paths["int8"])
            res["int8_how"] = f"nncf.quantize on the float32 OpenVINO model, {len(calib)} good training images"

    core = ov.Core()
    images = [read_rgb(p) for p, _ in test[: a.n_latency]]
    for name, xml in paths.items():
        compiled = core.compile_model(core.read_model(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        names = [o.get_any_name() for o in compiled.outputs]
        key = next((n for n in names if "score" in n), names[0])

        def call(ims):
            return np.asarray(compiled(to_tensor(ims).numpy())[compiled.output(key)]).reshape(-1)

        lat = latency_ms(lambda im: call([im] * batch), images)  # per image: the batch's time / batch
        paths_all = [p for p, _ in test] + [test[-1][0]] * (len(test) % batch)
        scores = np.concatenate([call([read_rgb(p) for p in paths_all[i : i + batch]])
                                 for i in range(0, len(paths_all), batch)])[: len(test)]
        lat = {k: (v / batch if k.endswith("_ms") else v) for k, v in lat.items()}
        res["variants"][name] = {"ms_per_image_batch2": lat["median_ms"], "p90_ms_per_image_batch2": lat["p90_ms"],
                                 "image_auroc": image_auroc(labels, scores), "score_output": key,
                                 "size_mb": dir_size_mb(Path(xml).parent)}
        print(f"[anomalib-ov] {name}: {lat['median_ms']:.1f} ms, image AUROC {res['variants'][name]['image_auroc']:.4f}",
              flush=True)
    write_json(out / "result.json", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
