"""What every feature engine is: the :class:`FeatureEngine` protocol and the one error a missing
device raises. Nothing here imports torch or an engine library."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .. import errors


class DeviceUnavailableError(RuntimeError):
    """The requested device or provider cannot be used on this machine."""

    exit_code = errors.DEVICE


class FeatureEngine(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider"
    precision: str  # what it actually ran: fp32, fp16, bf16, int8
    info: dict  # engine, version, precision, ...: goes into each record's bundle info

    def run(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised images -> (B, P, D) float32 embeddings."""


def float32(a: np.ndarray) -> np.ndarray:
    """Engine outputs as float32 (float16 outputs widened; integer indices kept)."""
    return a.astype(np.float32) if a.dtype == np.float16 else a
