"""A camera settings file (YAML or JSON): what ``--settings`` holds, checked for its shape here;
the camera checks the values against its own ranges when they are applied (:mod:`.genicam`).

    exposure_us: 20000          # ExposureTime, microseconds
    gain: 2.0                   # Gain (dB on most cameras)
    pixel_format: BayerRG8      # see runtime.line.sources.pixels
    region: {x: 0, y: 0, width: 1024, height: 768}
    frame_rate: 20              # AcquisitionFrameRate, free-running cameras
    trigger_mode: "On"          # Off: free-running; On: one frame per trigger
    trigger_source: Software    # Software (the runtime fires it) or a line input: Line0, Line1...
    trigger_activation: RisingEdge
    features: {GevSCPSPacketSize: 1500}   # any other GenICam feature, by name
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import SourceError

NUMBERS = ("exposure_us", "gain", "frame_rate")
NAMES = ("pixel_format", "trigger_mode", "trigger_source", "trigger_activation")
KEYS = (*NUMBERS, *NAMES, "region", "features")
REGION = ("x", "y", "width", "height")


def load_settings(path: Path) -> dict[str, Any]:
    """The file's settings, shape-checked; SourceError (exit 2) naming what is wrong."""
    try:
        text = path.read_text()
    except OSError as e:
        raise SourceError(f"--settings {path}: cannot read ({e.strerror or e})") from None
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise SourceError(f"--settings {path}: expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise SourceError(f"--settings {path}: unknown setting {', '.join(unknown)} (known: {', '.join(KEYS)}; "
                          "other GenICam features go under features:)")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in NUMBERS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SourceError(f"--settings {path}: {key} must be a number, got {value!r}")
        elif key == "trigger_mode" and isinstance(value, bool):  # YAML 1.1 reads On/Off unquoted as booleans
            value = "On" if value else "Off"
        elif key in NAMES and not isinstance(value, str):
            raise SourceError(f"--settings {path}: {key} must be a name, got {value!r}")
        elif key == "region":
            if not isinstance(value, dict) or set(value) != set(REGION) or not all(
                    isinstance(value[k], int) and not isinstance(value[k], bool) for k in REGION):
                raise SourceError(f"--settings {path}: region must be {{x, y, width, height}} in whole pixels, "
                                  f"got {value!r}")
        elif key == "features" and not isinstance(value, dict):
            raise SourceError(f"--settings {path}: features must map GenICam feature names to values")
        out[key] = value
    return out


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as e:
            raise SourceError(f"--settings {path}: not valid JSON ({e})") from None
    try:
        import yaml
    except ImportError:
        raise SourceError(f"--settings {path}: reading YAML needs PyYAML (pip install 'patchcore-rt[genicam]'), "
                          "or write the settings as a .json file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SourceError(f"--settings {path}: not valid YAML ({str(e).splitlines()[0]})") from None
