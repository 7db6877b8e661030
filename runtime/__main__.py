"""``python -m runtime`` = the ``patchcore-rt`` command."""

from .cli import main

main()
