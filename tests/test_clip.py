"""CLIP backbones: registry numbers, token-to-grid reshape, positional-embedding resize, equality
with open_clip's own towers, weight loading and its errors, spatial alignment, ONNX parity.

Everything runs on random weights fixed by a seed (no CLIP weights can be downloaded here)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from patchcore.backbones import create_trunk, get_spec, names
from patchcore.registry import WeightsUnavailableError
from runtime.preprocess import CLIP_MEAN, CLIP_STD

open_clip = pytest.importorskip("open_clip")
from patchcore import backbones_clip as bc  # noqa: E402


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ----------------------------------------------------------------------------- registry
def test_registry_entries_match_open_clip_configs():
    clip = set(names("CLIP"))
    assert {"clip-rn50", "clip-rn101", "clip-rn50x4", "clip-vit-b16", "clip-vit-b32", "clip-vit-l14"} <= clip
    for model, arch in bc.ARCHS.items():
        v = open_clip.get_model_config(model)["vision_cfg"]
        layers = tuple(v["layers"]) if isinstance(v["layers"], list) else v["layers"]
        assert (v["image_size"], v["width"], layers, v.get("patch_size")) == (
            arch.image_size, arch.width, arch.layers, arch.patch_size), model

    rn50 = get_spec("clip-rn50")
    assert rn50.family == "CLIP" and rn50.default_layers == ("layer2", "layer3")
    assert [(l.name, l.channels, l.stride) for l in rn50.layers] == [
        ("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16), ("layer4", 2048, 32)]
    assert [l.channels for l in get_spec("clip-rn50x4").layers] == [320, 640, 1280, 2560]
    assert get_spec("clip-rn50x4").preprocess.crop == 288  # its native input
    b16, l14 = get_spec("clip-vit-b16"), get_spec("clip-vit-l14")
    assert b16.default_layers == ("block4", "block8") and len(b16.layers) == 12
    assert (b16.layer("block4").channels, b16.layer("block4").stride) == (768, 16)
    assert get_spec("clip-vit-b32").layer("block8").stride == 32
    assert l14.default_layers == ("block8", "block16") and (l14.layer("block0").channels, l14.layer("block0").stride) == (1024, 14)
    pre = b16.preprocess
    assert (pre.resize, pre.crop, pre.interpolation, pre.mean, pre.std) == (224, 224, "bicubic", CLIP_MEAN, CLIP_STD)
    assert get_spec("clip-vit-l14-laion2b").preprocess.mean == (0.5, 0.5, 0.5)
    assert rn50.weights_tag.endswith("openai") and get_spec("clip-vit-b16-laion2b").weights_tag.endswith("laion2b_s34b_b88k")


# ----------------------------------------------------------------------------- reshape / pos embed
@pytest.mark.parametrize("n_in,n_out", [(14, 14), (14, 10), (14, 7), (14, 20), (7, 4), (16, 9)])
def test_bicubic_matrix_equals_torch_interpolate(n_in, n_out):
    v = torch.randn(1, 5, n_in, 3, dtype=torch.float64)
    ref = F.interpolate(v, size=(n_out, 3), mode="bicubic", align_corners=False, antialias=True)
    got = torch.einsum("oi,bciw->bcow", torch.from_numpy(bc.bicubic_matrix(n_in, n_out)), v)
    assert (got - ref).abs().max().item() < 1e-12
    if n_in == n_out:
        assert np.array_equal(bc.bicubic_matrix(n_in, n_out), np.eye(n_in))


def test_tokens_to_grid_is_row_major_and_drops_class_token():
    b, (h, w), c = 2, (3, 5), 4
    tokens = torch.randn(b, 1 + h * w, c)
    tokens[:, 0] = 1e6  # the class token must appear nowhere
    grid = bc.tokens_to_grid(tokens, (h, w))
    assert grid.shape == (b, c, h, w)
    for r in range(h):
        for col in range(w):
            assert torch.equal(grid[:, :, r, col], tokens[:, 1 + r * w + col])
    assert grid.abs().max() < 1e5


@pytest.fixture(scope="module")
def vit_small():
    """ViT-B/16 cut after block2 (random, seed 0): cheap, but the real layer shapes."""
    trunk, _, _ = create_trunk("clip-vit-b16", ("block0", "block2"), "random", seed=0)
    return trunk


def _direct_pos(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    c = pos.shape[-1]
    g = pos[1:].reshape(1, 14, 14, c).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=grid, mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([pos[:1], g.permute(0, 2, 3, 1).reshape(-1, c)])


def test_positional_embedding_resize_vs_direct_bicubic(vit_small):
    t = vit_small
    try:
        t.set_input_size(224)  # native: the parameter itself
        assert torch.equal(t.pos_embed(), t.positional_embedding)
        for size, grid in [((224, 160), (14, 10)), (112, (7, 7)), ((320, 208), (20, 13))]:
            t.set_input_size(size)
            assert t.grid == grid
            got = t.pos_embed()
            assert got.shape == (1 + grid[0] * grid[1], 768)
            assert torch.equal(got[0], t.positional_embedding[0])  # class position kept
            assert (got - _direct_pos(t.positional_embedding, grid)).abs().max().item() < 1e-5
        with pytest.raises(ValueError, match="multiple of its patch size 16"):
            t.set_input_size((224, 150))
    finally:
        t.set_input_size(224)


def test_vit_maps_equal_direct_token_computation_on_non_square_input(vit_small):
    """224x160 input -> 14x10 grid: each map cell equals the token of a direct re-computation
    with open_clip's own blocks (nn.MultiheadAttention) and a directly resized pos embedding."""
    t = vit_small
    x = torch.randn(2, 3, 224, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = t(x)
        conv = t.conv1(x)  # (B, C, 14, 10)
        cells = [conv[:, :, r, c] for r in range(14) for c in range(10)]  # row-major by hand
        seq = torch.stack([t.class_embedding.expand(2, -1)] + cells, dim=1)
        seq = t.ln_pre(seq + _direct_pos(t.positional_embedding, (14, 10)))
        ref = {}
        for i, blk in enumerate(t.transformer.resblocks):
            seq = blk(seq)
            ref[f"block{i}"] = seq
    assert [tuple(m.shape) for m in maps] == [(2, 768, 14, 10)] * 2
    for name, m in zip(("block0", "block2"), maps):
        tok = ref[name]
        for r in range(14):
            for c in range(10):
                assert rel_err(m[:, :, r, c], tok[:, 1 + r * 10 + c]) < 1e-4, (name, r, c)
    # and a change in one patch shows up in that cell of the map, not elsewhere
    x2 = x.clone()
    x2[:, :, 5 * 16:6 * 16, 7 * 16:8 * 16] = 3.0
    with torch.no_grad():
        for m1, m2 in zip(maps, t(x2)):
            d = (m2 - m1).norm(dim=1).mean(0)
            assert np.unravel_index(int(d.argmax()), d.shape) == (5, 7)


# ----------------------------------------------------------------------------- open_clip parity
def _random_open_clip_tower(model: str, n_layers: int | None = None) -> torch.nn.Module:
    import open_clip.model as ocm

    cfg = open_clip.get_model_config(model)
    vcfg = dict(cfg["vision_cfg"])
    if n_layers is not None:
        vcfg["layers"] = n_layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        v = ocm._build_vision_tower(cfg["embed_dim"], ocm.CLIPVisionCfg(**vcfg), quick_gelu=True).eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # every tensor random (open_clip zero-inits BN gammas)
        for k, t in v.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in k else torch.randn(t.shape, generator=g) * 0.05)
    return v


@pytest.mark.parametrize("name,model,indices,layers,suffix,size", [
    ("clip-rn50", "RN50", [2, 3], ("layer2", "layer3"), ".pt", 128),
    ("clip-vit-b32", "ViT-B-32", [1, 3], ("block1", "block3"), ".safetensors", 224),
])
def test_trunk_equals_open_clip_tower_loaded_from_full_clip_checkpoint(tmp_path, name, model, indices, layers, suffix,
                                                                        size):
    """A full-CLIP-style checkpoint (``visual.*`` + text tensors) loads into the trunk, whose maps
    equal open_clip's own ``forward_intermediates`` (ViT: at its native size)."""
    v = _random_open_clip_tower(model, n_layers=4 if model.startswith("ViT") else None)
    state = {f"visual.{k}": t.contiguous() for k, t in v.state_dict().items()}
    state["token_embedding.weight"] = torch.zeros(8, 4)
    state["logit_scale"] = torch.ones(())
    path = tmp_path / f"clip{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    trunk, _, chosen = create_trunk(name, layers, str(path))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = v.forward_intermediates(x, indices=indices, intermediates_only=True)["image_intermediates"]
        got = trunk(x)
    for r, g, layer in zip(ref, got, chosen):
        assert g.shape == r.shape and g.shape[1] == layer.channels and size // g.shape[-1] == layer.stride
        assert rel_err(g, r) < 1e-4
    assert not hasattr(trunk, "attnpool") and not hasattr(trunk, "proj")


# ----------------------------------------------------------------------------- weights
@pytest.fixture()
def no_caches(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHCORE_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_default_weights_offline_name_the_file_and_where(no_caches):
    with pytest.raises(WeightsUnavailableError) as e:
        get_spec("clip-rn50").build(["layer1"], "default")
    msg = str(e.value)
    for part in ("RN50.pt", str(no_caches / "home" / ".cache" / "clip"), "timm/resnet50_clip.openai",
                 "open_clip_model.safetensors", str(no_caches / "hf"), "--weights PATH"):
        assert part in msg, part
    with pytest.raises(WeightsUnavailableError, match="laion/CLIP-ViT-B-16-laion2B-s34B-b88K"):
        get_spec("clip-vit-b16-laion2b").build(["block0"], "default")


def _out(trunk, size=64):
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return [o.numpy() for o in trunk(x)]


def test_bad_weights_files_raise(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="nope.pt"):
        create_trunk("clip-rn50", ("layer1",), str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="junk.pt"):
        create_trunk("clip-rn50", ("layer1",), str(junk))
    rn50, _, _ = create_trunk("clip-rn50", ("layer1",), "random")
    torch.save(rn50.state_dict(), tmp_path / "rn50.pt")
    with pytest.raises(WeightsUnavailableError, match="wrong architecture|shape"):  # RN50 into RN50x4
        create_trunk("clip-rn50x4", ("layer1",), str(tmp_path / "rn50.pt"))
    with pytest.raises(WeightsUnavailableError, match="lacks"):  # layer2 not in the file
        create_trunk("clip-rn50", ("layer2",), str(tmp_path / "rn50.pt"))


def test_visual_only_state_dict_reproduces_outputs(tmp_path):
    layers = ("layer1", "layer2")
    src, _, _ = create_trunk("clip-rn50", layers, "random", seed=3)
    torch.save({k: v.half() for k, v in src.state_dict().items()}, tmp_path / "half.pt")
    torch.save(src.state_dict(), tmp_path / "visual.pt")
    loaded, _, _ = create_trunk("clip-rn50", layers, str(tmp_path / "visual.pt"), seed=0)
    other, _, _ = create_trunk("clip-rn50", layers, "random", seed=0)
    for a, b, c in zip(_out(src), _out(loaded), _out(other)):
        assert np.array_equal(a, b)
        assert rel_err(c, a) > 1e-2  # a different seed gives a different network
    half, _, _ = create_trunk("clip-rn50", layers, str(tmp_path / "half.pt"))
    assert all(p.dtype == torch.float32 for p in half.parameters())
    assert all(rel_err(h, a) < 1e-2 for h, a in zip(_out(half), _out(src)))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save, used to make the archive
def test_openai_torchscript_archive_and_hf_cache_resolution(no_caches):
    """OpenAI ships TorchScript archives; open_clip's HF copies are safetensors found in the HF
    cache. Both load offline and reproduce the source network."""
    layers = ("layer1",)
    src, _, _ = create_trunk("clip-rn50", layers, "random", seed=4)
    want = _out(src)

    class Clip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = src
            self.text_projection = torch.nn.Parameter(torch.zeros(4, 4))

        def forward(self, x):
            return self.visual(x)[0]

    jit_path = no_caches / "RN50.pt"
    torch.jit.save(torch.jit.trace(Clip(), torch.zeros(1, 3, 32, 32)), str(jit_path))
    from_jit, _, _ = create_trunk("clip-rn50", layers, str(jit_path))
    assert np.array_equal(_out(from_jit)[0], want[0])

    from safetensors.torch import save_file

    snap = no_caches / "hf" / "models--timm--resnet50_clip.openai"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    (snap / "snapshots" / "abc123").mkdir(parents=True)
    save_file({f"visual.{k}": v for k, v in src.state_dict().items()},
              str(snap / "snapshots" / "abc123" / "open_clip_model.safetensors"))
    from_cache, _, _ = create_trunk("clip-rn50", layers, "default", seed=0)
    assert np.array_equal(_out(from_cache)[0], want[0])


# ----------------------------------------------------------------------------- spatial alignment
@pytest.mark.parametrize("backbone,size,square,tol", [
    ("clip-rn50", 128, 12, 8),  # layer2 grid 16x16, stride 8
    ("clip-vit-b16", 160, 24, 16),  # 10x10 patch grid, stride 16 (non-native: pos embed resized)
])
def test_defect_moves_anomaly_argmax_to_its_location(tmp_path, backbone, size, square, tol):
    """Fit on defect-free copies of one smooth image (sensor noise only), paste a white square:
    the arg-max of each anomaly map lies within one stride of the square's centre."""
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore

    rng = np.random.default_rng(0)
    base = cv2.resize(rng.uniform(60, 160, (5, 5, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)

    def noisy():
        return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"good{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(noisy(), cv2.COLOR_RGB2BGR))
    model = PatchCore(PatchCoreConfig(backbone=backbone, weights="random", coreset_ratio=1.0, holdout=0,
                                      resize=size, crop=size, device="cpu")).fit(paths)
    centres = [(24, 24), (40, size - 32), (size - 28, 30), (size // 2, size // 2), (size - 24, size - 24)]
    images = []
    for cy, cx in centres:
        im = noisy()
        im[cy - square // 2:cy + square // 2, cx - square // 2:cx + square // 2] = 255
        images.append(im)
    pred = model.predict(images)
    assert pred.maps.shape == (len(centres), size, size)
    for (cy, cx), m in zip(centres, pred.maps):
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        assert np.hypot(y - cy, x - cx) <= tol, (backbone, (cy, cx), (y, x))


# ----------------------------------------------------------------------------- ONNX export
@pytest.mark.parametrize("backbone,layers,size", [
    ("clip-rn50", None, 128),
    ("clip-vit-b16", ("block1", "block3"), 112),  # 7x7 grid: the resized pos embed is traced
])
def test_onnx_feature_graph_matches_torch(tmp_path, backbone, layers, size):
    import onnx
    import onnxruntime as ort

    from export.onnx_export import export_feature_graph
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore

    model = PatchCore(PatchCoreConfig(backbone=backbone, layers=layers, weights="random", resize=size, crop=size,
                                      device="cpu"))
    path = export_feature_graph(model, tmp_path / "features.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    if backbone.startswith("clip-vit"):
        assert "Resize" not in ops  # the pos-embed resize is a constant matrix product
    x = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)  # batch 3 != traced 2
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    want = model.embed_tensor(x)
    assert got.shape == want.shape == (3, model.grid[0] * model.grid[1], 1024)
    assert rel_err(got, want) <= 1e-4


def test_onnx_feature_graph_of_a_non_square_vit_input(tmp_path):
    """A non-square geometry: the position embedding is resized to the 6 x 13 grid, in torch and
    in the exported graph alike."""
    import onnxruntime as ort

    from export.onnx_export import export_feature_graph
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore

    model = PatchCore(PatchCoreConfig(backbone="clip-vit-b16", layers=("block1", "block3"), weights="random",
                                      geometry="resize", input_size=(96, 208), device="cpu"))
    assert model.input_size == (96, 208) and model.grid == (6, 13)
    path = export_feature_graph(model, tmp_path / "features.onnx")
    x = np.random.default_rng(1).normal(size=(2, 3, 96, 208)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    want = model.embed_tensor(x)
    assert got.shape == want.shape == (2, 6 * 13, 1024)
    assert rel_err(got, want) <= 1e-4
