"""Which bundle a command uses.

Bundle choice for ``watch`` (the command people type as ``patchcore-rt watch ./incoming``):
``--bundle`` if given, else ``$PATCHCORE_RT_BUNDLE``, else the only bundle under the models
folder (``$PATCHCORE_RT_MODELS`` or ``./models``). Several bundles and no choice is a usage error
that lists them. A bundle argument with a path separator is a folder path; a bare name is the
bundle of that name in the models folder (a folder of the same name in the current directory is
used only when the models folder has none, and a warning names the one chosen when both exist).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..bundle import find_bundles
from ..errors import UsageError
from ..line.messages import warn
from ..line.products import parse_bundles

BUNDLE_ENV = "PATCHCORE_RT_BUNDLE"
MODELS_ENV = "PATCHCORE_RT_MODELS"


def models_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(MODELS_ENV) or "models")


def resolve_bundle(arg: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The bundle folder to use (see the module docstring). Does not open the bundle."""
    env = os.environ if env is None else env
    models = models_dir(env)
    named = arg or env.get(BUNDLE_ENV)
    if named:
        p = Path(named)
        if os.sep in named or (os.altsep and os.altsep in named) or named in (".", ".."):
            return p  # a path: read_bundle names the problem if it is not a bundle
        # a bare name means the bundle of that name in the models folder; a folder of the same
        # name here is used only when the models folder has none, and never silently instead
        if (models / named).is_dir():
            if p.exists():
                warn(f"bundle {named!r}: using {models / named} (a folder ./{named} exists too; "
                     f"write ./{named} to use that one)")
            return models / named
        return p
    found = find_bundles(models)
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(
            f"no bundle given and none found under {models}/ "
            f"(pass --bundle PATH, set {BUNDLE_ENV}, or put one bundle in {models}/)"
        )
    listing = "\n".join(f"  --bundle {p}" for p in found)
    raise UsageError(f"{len(found)} bundles under {models}/; choose one:\n{listing}")


def bundle_paths(bundles: list[str] | None) -> dict[str | None, Path]:
    """``--bundle`` values (none: the default bundle) -> {product: bundle folder}; exit 2 for bad ones."""
    return {name: resolve_bundle(path) for name, path in (parse_bundles(bundles) if bundles else {None: None}).items()}
