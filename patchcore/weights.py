"""Loading backbone weights: a local file (safetensors or a torch state dict, never unpickled
as arbitrary objects), or a framework's pretrained download with a clear offline remedy."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .registry import WeightsUnavailableError


def torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch checkpoint loaded with ``weights_only=True``
    (tensors only: no arbitrary unpickling). Nested {"state_dict": ...} / {"model": ...} unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # lazy: only .safetensors files need it

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, wrong format, or pickled objects weights_only refuses
        raise WeightsUnavailableError(f"could not read weights file {path}: expected a .safetensors file or a "
                                      f"state dict saved with torch.save ({_load_failure(e)})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} does not hold a state dict of tensors")
    return state


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``, ignoring keys of layers the trunk cut off (e.g. ``fc.``)
    but failing loudly when a kept parameter is missing or mis-shaped."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsUnavailableError(
            f"{source} lacks {len(missing)} parameter(s) of this backbone, e.g. {missing[:3]}: wrong architecture?"
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise WeightsUnavailableError(
            f"{source}: parameter {k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
        )
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def download_failed_message(what: str, filename: str, url: str | None) -> str:
    where = torch_hub_checkpoint_dir()
    lines = [
        f"could not load the pretrained weights of {what}.",
        f"Offline remedy: place the file {filename} in {where}/ (or set TORCH_HOME),",
        "or pass --weights PATH to a local checkpoint, or --weights random for an untrained network.",
    ]
    if url:
        lines.insert(1, f"It is downloaded from {url} on a machine with internet access.")
    return "\n".join(lines)


def offline() -> bool:
    return os.environ.get("PATCHCORE_OFFLINE", "") not in ("", "0")


def _load_failure(e: Exception) -> str:
    """The cause in one line, without torch's advice to retry with ``weights_only=False`` (this
    loader never unpickles arbitrary objects)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        cause = next((l.strip() for l in text.split(marker, 1)[1].splitlines() if l.strip()), "")
        return f"not a tensors-only checkpoint: {cause.split('. ')[0]}"[:300]
    return next((l.strip() for l in text.splitlines() if l.strip()), type(e).__name__).split(". ")[0][:300]
