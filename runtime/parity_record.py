"""The last ``patchcore parity`` result of a bundle, kept beside its manifest as ``parity.json``.

Parity does not re-seal the manifest (that would change the bundle id, which journals, records and
a running line refer to): it writes this file next to it, naming the bundle id it measured. ``info``
shows it only while that id is still the bundle's; a bundle exported again or updated since shows
the record as stale. The file is not covered by the manifest's checksums: it is a note of what was
measured, not part of what the runtime loads.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

PARITY_FILE = "parity.json"


def write_parity_record(root: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (which names its ``bundle_id``) as ``root/parity.json``, atomically."""
    path = Path(root) / PARITY_FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".parity-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_parity_record(root: str | Path, bundle_id: str) -> dict[str, Any] | None:
    """The bundle's parity record with ``current`` (measured on this very bundle id), or None
    when parity never wrote one (or it cannot be read)."""
    try:
        record = json.loads((Path(root) / PARITY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {**record, "current": record.get("bundle_id") == bundle_id}


def parity_line(record: dict[str, Any] | None) -> str:
    """``info``'s line: what parity measured, on which images, and whether it passed."""
    if record is None:
        return "not measured (patchcore parity BUNDLE DATA records it here)"
    if not record.get("current"):
        return (f"measured on another content of this bundle ({record.get('bundle_id')}, {record.get('created')}): "
                "run patchcore parity again")
    targets = record.get("targets", {})
    parts = [f"{name} {'ok' if t.get('ok') else 'FAIL'} (image scores {t.get('image', float('nan')):.1e})"
             for name, t in targets.items()]
    head = (f"{'passed' if record.get('ok') else 'FAILED'} {record.get('created')} on {record.get('n_images')} "
            f"{record.get('images', 'test')} images")
    return f"{head}: {', '.join(parts) or 'no target ran'}"
