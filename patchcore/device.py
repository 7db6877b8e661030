"""The torch device behind ``--device auto|cpu|cuda``: an explicit cuda without CUDA is an error."""

from __future__ import annotations

import torch

from runtime.engines import DeviceUnavailableError


def torch_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda requested but torch sees no CUDA device")
    return torch.device(name)
