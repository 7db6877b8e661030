"""The ``patchcore-rt`` command line, the top layer of the runtime: the typer app (:mod:`.app`), a
module per group of commands, and the conventions they share (:mod:`.options`, :mod:`.console`,
:mod:`.flags`, :mod:`.bundle_choice`, :mod:`.long_running`, :mod:`.status`). ``patchcore`` and
``python -m export`` use the same conventions. Below it: :mod:`runtime.serve`, then the line layer
:mod:`runtime.line`, then the core; nothing below imports from here."""
