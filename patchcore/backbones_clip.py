"""CLIP image encoders as PatchCore trunks: OpenAI's ModifiedResNets and CLIP vision transformers.

Only the visual tower is ever built, from ``open_clip``'s vision config; the text tower is never
constructed and, when a full CLIP checkpoint is read, only its ``visual.*`` tensors are used.

ResNets (``clip-rn50``, ``clip-rn101``, ``clip-rn50x4``): the 3-conv stem + avg-pool and the
stages ``layer1``..``layerN`` up to the deepest layer used (strides 4/8/16/32), built from
open_clip's ``Bottleneck``; the attention pool is never built.

Vision transformers (``clip-vit-b16``, ``clip-vit-b32``, ``clip-vit-l14`` and their LAION twins):
layer ``blockK`` is the token sequence after transformer block K (0-based). The class token is
dropped and the patch tokens are laid back, row-major, on the (H/p, W/p) patch grid as a
(B, C, h, w) map (:func:`tokens_to_grid`), so the CNNs' :class:`~patchcore.features.PatchAggregator`
applies unchanged. Only the blocks up to the deepest one used are built.

Input size of a ViT: the learned positional embedding belongs to the native grid (224/p). For another
input size its grid part is resized bicubically (as open_clip's ``resize_pos_embed``:
``align_corners=False``, ``antialias=True``; the class position is kept). The resize is linear and
separable, so it is stored as two small constant matrices, ``A_h`` (h, h0) and ``A_w`` (w, w0),
computed in numpy once per input size (:meth:`ClipViTTrunk.set_input_size`); forward applies
``A_h @ P @ A_w^T`` to the current parameter (cheap, always consistent with loaded weights, and
in ONNX a constant-folded MatMul instead of a Resize on weights). The trunk remembers the input
size it is configured for; an eager forward at another size reconfigures it, and during
``torch.onnx.export`` tracing the example's (static) size is used the same way, so the exported
graph is fixed to that H x W with a dynamic batch. Input sides must be multiples of the patch size.
"""

from __future__ import annotations

import os
import socket
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtime.fileio import sha256_file
from runtime.preprocess import CLIP_MEAN, CLIP_STD, PreprocessSpec

from .registry import BackboneSpec, FeatureLayer, WeightsUnavailableError, register
from .weights import load_into, load_state_dict_file, offline

HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"


# ----------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class ClipArch:
    """What the registry needs to know about an open_clip vision tower without importing open_clip.
    ``tests/test_clip.py`` checks these numbers against ``open_clip.get_model_config``."""

    model: str  # open_clip model name
    image_size: int  # native input side
    width: int  # ResNet stem width, or transformer width
    layers: tuple[int, ...] | int  # blocks per stage (ResNet) or depth (ViT)
    patch_size: int | None = None  # None for the ResNets

    @property
    def is_vit(self) -> bool:
        return self.patch_size is not None


ARCHS = {
    "RN50": ClipArch("RN50", 224, 64, (3, 4, 6, 3)),
    "RN101": ClipArch("RN101", 224, 64, (3, 4, 23, 3)),
    "RN50x4": ClipArch("RN50x4", 288, 80, (4, 6, 10, 6)),
    "ViT-B-16": ClipArch("ViT-B-16", 224, 768, 12, 16),
    "ViT-B-32": ClipArch("ViT-B-32", 224, 768, 12, 32),
    "ViT-L-14": ClipArch("ViT-L-14", 224, 1024, 24, 14),
}


def feature_layers(arch: ClipArch) -> tuple[FeatureLayer, ...]:
    if arch.is_vit:
        return tuple(FeatureLayer(f"block{i}", arch.width, arch.patch_size) for i in range(arch.layers))
    # Bottleneck expansion 4: layer i has width * 2**(i-1) * 4 channels at stride 4 * 2**(i-1)
    return tuple(FeatureLayer(f"layer{i + 1}", arch.width * 4 * 2**i, 4 * 2**i) for i in range(4))


def default_layers(arch: ClipArch) -> tuple[str, str]:
    if arch.is_vit:  # at 1/3 and 2/3 of the depth: block4/block8 of 12, block8/block16 of 24
        return f"block{arch.layers // 3}", f"block{2 * arch.layers // 3}"
    return "layer2", "layer3"


def _layer_index(name: str, prefix: str) -> int:
    if not name.startswith(prefix) or not name[len(prefix):].isdigit():
        raise ValueError(f"layer {name!r} is not of the form {prefix}N")
    return int(name[len(prefix):])


def _vision_cfg(model: str) -> dict:
    import open_clip  # lazy: importing open_clip takes seconds; only CLIP builds need it

    cfg = open_clip.get_model_config(model)
    if not cfg or "vision_cfg" not in cfg:
        raise WeightsUnavailableError(f"open_clip {open_clip.__version__} has no model config {model!r}")
    return cfg


# ----------------------------------------------------------------------------- ResNet trunk
class ClipResNetTrunk(nn.Module):
    """OpenAI CLIP ModifiedResNet stem + stages up to the deepest requested ``layerN``.

    Submodule names equal open_clip's, so a checkpoint's ``visual.*`` keys load directly. Random
    init is PyTorch's default for every layer (open_clip zeroes each block's last BatchNorm for
    training, which would make an untrained trunk ignore its residual branches)."""

    def __init__(self, blocks: Sequence[int], width: int, layer_names: Sequence[str]):
        super().__init__()
        from open_clip.modified_resnet import Bottleneck

        self.out_names = list(layer_names)
        depth = max(_layer_index(n, "layer") for n in layer_names)
        if not 1 <= depth <= len(blocks):
            raise ValueError(f"CLIP ResNet layers are layer1..layer{len(blocks)}, got {self.out_names}")
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        self.stage_names = []
        for i in range(depth):
            planes = width * 2**i
            stage = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks[i])]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            self.stage_names.append(f"layer{i + 1}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return [out[n] for n in self.out_names]


# ----------------------------------------------------------------------------- ViT helpers
def _cubic_aa(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The bicubic kernel torch uses when ``antialias=True`` (PIL's, a = -0.5)."""
    x = np.abs(x)
    return np.where(
        x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0)
    )


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix M with ``M @ v`` = 1-D ``F.interpolate(v, n_out, mode="bicubic",
    align_corners=False, antialias=True)``: when shrinking, the kernel is widened by the scale
    (low-pass); taps outside the input are dropped and the weights renormalised."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = np.arange(lo, hi)
        w = _cubic_aa((taps - center + 0.5) * inv)
        total = w.sum()
        m[i, lo:hi] = w / total if total != 0 else w
    return m


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, 1 + h*w, C) tokens, class token first, patch tokens row-major -> (B, C, h, w) map.
    The inverse of ``conv(x).flatten(2).transpose(1, 2)``; the batch stays dynamic in ONNX."""
    h, w = grid
    c = tokens.shape[-1]
    return tokens[:, 1:].transpose(1, 2).reshape(-1, c, h, w)


def _static_size(x: torch.Tensor) -> tuple[int, int]:
    """Input height and width as Python ints. While tracing for ONNX they are concrete values of the
    example (the graph is exported for a fixed H x W), read without the tracer's warning."""
    if torch.jit.is_tracing():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return int(x.shape[-2]), int(x.shape[-1])
    return int(x.shape[-2]), int(x.shape[-1])


class ClipViTTrunk(nn.Module):
    """CLIP vision transformer up to the deepest requested ``blockK``; returns (B, C, h, w) maps.

    Holds open_clip's own ``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre`` and
    ``transformer.resblocks`` (so checkpoint keys match) and runs the blocks with an explicit
    attention (``nn.MultiheadAttention``'s fused fast path has no ONNX export)."""

    def __init__(self, visual: nn.Module, n_blocks: int, layer_names: Sequence[str], heads: int,
                 input_size: int | tuple[int, int] | None = None):
        super().__init__()
        self.out_names = list(layer_names)
        self.out_index = {_layer_index(n, "block"): n for n in self.out_names}
        depth = max(self.out_index) + 1
        if depth > n_blocks:
            raise ValueError(f"this ViT has blocks block0..block{n_blocks - 1}, got {self.out_names}")
        self.patch = int(visual.conv1.kernel_size[0])
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self.heads = heads
        self.head_dim = int(visual.conv1.out_channels) // heads
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(list(visual.transformer.resblocks[:depth]))
        native = (self.native_grid[0] * self.patch, self.native_grid[1] * self.patch)
        self.set_input_size(input_size if input_size is not None else native)

    # -- input size and positional embedding
    def set_input_size(self, size: int | tuple[int, int]) -> None:
        """Configure the trunk for (H, W) inputs: the patch grid and the bicubic resize matrices of
        the positional embedding (None at the native grid: used as is)."""
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        p = self.patch
        if h % p or w % p or h < p or w < p:
            raise ValueError(f"CLIP ViT input {h}x{w} must be a positive multiple of its patch size {p} on both sides")
        self.input_size = (h, w)
        self.grid = (h // p, w // p)
        if self.grid == self.native_grid:
            self._resize = None
        else:
            self._resize = (
                bicubic_matrix(self.native_grid[0], self.grid[0]).astype(np.float32),
                bicubic_matrix(self.native_grid[1], self.grid[1]).astype(np.float32),
            )

    def pos_embed(self) -> torch.Tensor:
        """(1 + h*w, C) positional embedding for the configured grid: class position kept, grid
        part resized as ``A_h @ P @ A_w^T``."""
        pos = self.positional_embedding
        if self._resize is None:
            return pos
        with warnings.catch_warnings():  # constants by design; the tracer need not warn
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            ah = torch.as_tensor(self._resize[0], device=pos.device, dtype=pos.dtype)
            aw = torch.as_tensor(self._resize[1], device=pos.device, dtype=pos.dtype)
        (h0, w0), (h, w) = self.native_grid, self.grid
        c = pos.shape[-1]
        g = torch.matmul(ah, pos[1:].reshape(h0, w0 * c)).reshape(h, w0, c)  # resize rows
        g = torch.matmul(aw, g)  # (w, w0) @ (h, w0, C) -> (h, w, C): resize columns
        return torch.cat([pos[:1], g.reshape(h * w, c)], dim=0)

    # -- blocks
    def _attention(self, attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape[1], self.head_dim
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        qkv = qkv.reshape(-1, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q * (float(d) ** -0.5), k.transpose(-2, -1))
        out = torch.matmul(scores.softmax(dim=-1), v)  # (B, heads, N, d)
        out = out.transpose(1, 2).reshape(-1, n, self.heads * d)
        return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)

    def _block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x + blk.ls_1(self._attention(blk.attn, blk.ln_1(x)))
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = _static_size(x)
        if size != self.input_size:
            self.set_input_size(size)
        t = self.conv1(x).flatten(2).transpose(1, 2)  # (B, h*w, C), row-major over the grid
        cls = self.class_embedding.to(t.dtype).reshape(1, 1, -1).expand(t.shape[0], -1, -1)
        t = torch.cat([cls, t], dim=1) + self.pos_embed().to(t.dtype)
        t = self.ln_pre(t)
        out = {}
        for i, blk in enumerate(self.transformer.resblocks):
            t = self._block(blk, t)
            if i in self.out_index:
                out[self.out_index[i]] = tokens_to_grid(t, self.grid)
        return [out[n] for n in self.out_names]


# ----------------------------------------------------------------------------- weights
def clip_cache_dir() -> Path:
    """Where open_clip caches checkpoints downloaded from a URL (OpenAI's ``*.pt``)."""
    return Path(os.path.expanduser("~/.cache/clip"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~/.cache"), "huggingface")
    return Path(home) / "hub"


def _hf_repo_file(cfg: dict) -> tuple[str, list[str]] | None:
    """(repo_id, candidate file names, safetensors first) of a pretrained config's ``hf_hub``."""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    # "org/repo/" means the default file name; "org/repo/file.pt" names the file
    repo, name = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
    if not name or name == HF_WEIGHTS_NAME:
        return repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if name.endswith((".bin", ".pth")):
        return repo, [name[:-4] + ".safetensors", name]
    return repo, [name]


def _reachable(url: str, timeout: float = 5.0) -> bool:
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _sha_ok(path: Path, url: str) -> bool:
    """OpenAI's URLs carry the file's sha256 as the parent folder name."""
    if "openaipublic" not in url:
        return True
    return sha256_file(path).startswith(url.rstrip("/").split("/")[-2])


def resolve_pretrained(model: str, tag: str, what: str) -> Path:
    """The local path of open_clip checkpoint (``model``, ``tag``): from open_clip's URL cache or the
    Hugging Face cache, else downloaded unless offline (``PATCHCORE_OFFLINE=1``). Raises
    :class:`WeightsUnavailableError` naming the file to place and where."""
    from open_clip import pretrained as ocp

    cfg = ocp.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = ocp.list_pretrained_tags_by_model(model)
        raise WeightsUnavailableError(f"open_clip has no pretrained tag {tag!r} for {model}; tags: {', '.join(tags)}")
    url = cfg.get("url", "")
    hf = _hf_repo_file(cfg)
    url_file = clip_cache_dir() / Path(urlparse(url).path).name if url else None
    problems = []
    if url_file is not None and url_file.is_file():
        if _sha_ok(url_file, url):
            return url_file
        problems.append(f"{url_file} does not match the sha256 in its URL (truncated download?)")
    if hf is not None:
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in hf[1]:
                hit = try_to_load_from_cache(hf[0], name, cache_dir=str(hf_cache_dir()))
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
        except ImportError:
            pass
    if not offline():
        try:
            if url and _reachable(url):
                return Path(ocp.download_pretrained_from_url(url, cache_dir=str(clip_cache_dir())))
            if hf is not None and _reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co")):
                return Path(ocp.download_pretrained_from_hf(hf[0], filename=hf[1][-1], cache_dir=str(hf_cache_dir())))
            problems.append("no network connection to the download host")
        except Exception as e:  # HTTP errors, checksum mismatch, missing huggingface_hub
            problems.append(f"download failed: {e}")
    else:
        problems.append("offline (PATCHCORE_OFFLINE is set)")
    lines = [f"could not load the pretrained weights of {what} (open_clip {model}, tag {tag}): {'; '.join(problems)}.",
             "Offline remedy, any one of:"]
    if url_file is not None:
        lines.append(f"- place the file {url_file.name} (from {url}) in {url_file.parent}/")
    if hf is not None:
        lines.append(
            f"- put {hf[1][0]} or {hf[1][-1]} of the Hugging Face repo {hf[0]} into the Hugging Face cache "
            f"{hf_cache_dir()} (e.g. `hf download {hf[0]} {hf[1][0]}`, or set HF_HUB_CACHE)"
        )
    lines.append("- pass --weights PATH to a local CLIP checkpoint (a full CLIP or a visual-only state dict),"
                 " or --weights random for an untrained network.")
    raise WeightsUnavailableError("\n".join(lines))


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())


def read_visual_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The visual tower's tensors of a CLIP checkpoint, keys relative to the tower (``conv1.weight``).

    Accepts OpenAI's TorchScript archives (``RN50.pt``: tensors read by ``torch.jit.load``),
    open_clip state dicts (``open_clip_model.safetensors`` / ``.bin``, ``visual.`` prefixed, text
    tensors ignored) and visual-only state dicts (no prefix); a DDP ``module.`` prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as e:
            raise WeightsUnavailableError(f"could not read the TorchScript checkpoint {path}: {e}") from e
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    else:
        state = load_state_dict_file(path)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return state


def _fill_bn_counters(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BatchNorm ``num_batches_tracked`` counters are unused in eval; older checkpoints lack them."""
    own = module.state_dict()
    extra = {k: own[k] for k in own if k.endswith("num_batches_tracked") and k not in state}
    return {**state, **extra} if extra else state


# ----------------------------------------------------------------------------- builders
def _clip_builder(name: str, arch: ClipArch, tag: str, quick_gelu: bool):
    def build(layer_names: Sequence[str], weights: str | Path = "default",
              image_size: int | tuple[int, int] | None = None) -> nn.Module:
        path = None  # resolved first: a missing download fails before a large tower is built
        if weights == "default":
            path = resolve_pretrained(arch.model, tag, name)
        elif weights != "random":
            path = Path(weights)
        cfg = _vision_cfg(arch.model)
        vcfg = dict(cfg["vision_cfg"])
        if arch.is_vit:
            import open_clip.model as ocm

            depth = max(_layer_index(n, "block") for n in layer_names) + 1
            if depth > vcfg["layers"]:
                raise ValueError(f"{name} has blocks block0..block{vcfg['layers'] - 1}, got {list(layer_names)}")
            n_blocks = vcfg["layers"]
            vcfg["layers"] = depth  # only the blocks used are built
            vision = ocm.CLIPVisionCfg(**vcfg)
            visual = ocm._build_vision_tower(cfg["embed_dim"], vision, quick_gelu=quick_gelu)
            trunk = ClipViTTrunk(visual, n_blocks, layer_names, heads=vision.width // vision.head_width,
                                 input_size=image_size)
            del visual
        else:
            trunk = ClipResNetTrunk(vcfg["layers"], vcfg["width"], layer_names)
        if path is not None:
            state = read_visual_state(path)
            load_into(trunk, _fill_bn_counters(trunk, state), str(path))
        return trunk.eval()

    return build


def _register(name: str, model: str, tag: str, quick_gelu: bool, note: str,
              mean=CLIP_MEAN, std=CLIP_STD) -> None:
    arch = ARCHS[model]
    side = arch.image_size
    kind = "ModifiedResNet" if not arch.is_vit else f"ViT ({arch.layers} blocks, patch {arch.patch_size})"
    register(BackboneSpec(name=name, family="CLIP", description=f"CLIP {model} image encoder, {kind}, {note}",
                          layers=feature_layers(arch), default_layers=default_layers(arch),
                          preprocess=PreprocessSpec(resize=side, crop=side, interpolation="bicubic", mean=mean,
                                                    std=std),
                          weights_tag=f"open_clip {model} {tag}", build=_clip_builder(name, arch, tag, quick_gelu)))


# OpenAI weights were trained with QuickGELU (ResNets have none: ReLU only).
_register("clip-rn50", "RN50", "openai", True, "OpenAI weights")
_register("clip-rn101", "RN101", "openai", True, "OpenAI weights")
_register("clip-rn50x4", "RN50x4", "openai", True, "OpenAI weights (native input 288)")
_register("clip-vit-b16", "ViT-B-16", "openai", True, "OpenAI weights")
_register("clip-vit-b32", "ViT-B-32", "openai", True, "OpenAI weights")
_register("clip-vit-l14", "ViT-L-14", "openai", True, "OpenAI weights")
# LAION-2B weights (open_clip training: exact GELU; ViT-L-14's uses mean = std = 0.5).
_register("clip-vit-b16-laion2b", "ViT-B-16", "laion2b_s34b_b88k", False, "LAION-2B weights")
_register("clip-vit-b32-laion2b", "ViT-B-32", "laion2b_s34b_b79k", False, "LAION-2B weights")
_register("clip-vit-l14-laion2b", "ViT-L-14", "laion2b_s32b_b82k", False, "LAION-2B weights",
          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
