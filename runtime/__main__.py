"""``python -m runtime`` = the ``patchcore-rt`` command."""

from .line.cli import main

main()
