"""The backbone registry: every backbone declared as data, built through one entry point.

A :class:`BackboneSpec` says which layers exist (channels and stride each), which two are used by
default, what input the weights expect (the shared :class:`~runtime.preprocess.PreprocessSpec`)
and where the weights come from. ``build`` returns a :class:`FeatureTrunk`: the network cut after
the deepest layer used, returning the chosen feature maps in order.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Sequence

from runtime import errors
from runtime.preprocess import PreprocessSpec


class UnknownBackboneError(KeyError):
    exit_code = errors.USAGE

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded; the message names the file to place and where."""

    exit_code = errors.WEIGHTS


@dataclass(frozen=True)
class FeatureLayer:
    name: str
    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "ImageNet" or "CLIP": the results table groups rows by it
    description: str
    layers: tuple[FeatureLayer, ...]  # every layer a user may pick, shallow to deep
    default_layers: tuple[str, ...]
    preprocess: PreprocessSpec
    weights_tag: str  # what "--weights default" loads, e.g. "IMAGENET1K_V1" or "openai"
    # build(layer_names, weights) -> torch.nn.Module returning a list of feature maps;
    # weights is "default", "random" or a path to a local checkpoint
    build: Callable[..., object] = field(repr=False, compare=False)

    def layer(self, name: str) -> FeatureLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        names = [l.name for l in self.layers]
        raise UnknownBackboneError(
            f"backbone {self.name!r} has no layer {name!r}; layers: {', '.join(names)}"
            + _suggest(name, names)
        )

    def resolve_layers(self, names: Sequence[str] | None) -> tuple[FeatureLayer, ...]:
        """The chosen layers, validated and sorted shallow to deep."""
        names = tuple(names) if names else self.default_layers
        if len(names) < 1:
            raise ValueError("at least one feature layer is needed")
        chosen = [self.layer(n) for n in names]
        order = {l.name: i for i, l in enumerate(self.layers)}
        return tuple(sorted(chosen, key=lambda l: order[l.name]))



_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; available: {', '.join(sorted(_REGISTRY))}" + _suggest(name, _REGISTRY)
        ) from None


def names(family: str | None = None) -> list[str]:
    return [n for n, s in _REGISTRY.items() if family is None or s.family == family]
