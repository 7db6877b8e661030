"""``python -m runtime`` = the ``patchcore-rt`` command."""

from .cli.app import main

main()
