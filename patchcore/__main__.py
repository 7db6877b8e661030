"""``python -m patchcore``: the ``patchcore`` command line, the fit-side commands together with
the export floor's ``export``/``parity``/``engine``. This program entry composes the floors; the
``patchcore`` library itself never imports ``export``."""

from export.cli import main

main()
