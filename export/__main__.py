"""``python -m export``: the ``patchcore`` command line (``python -m export bundle`` still works)."""

from .cli import main

main()
