"""The line application around the torch-free core: the ``patchcore-rt`` command line, the
watched folder and its journal, the camera loop, outputs (records, overlays, moves), the live
status line, benchmarks and bundle information. The core (``runtime.bundle``, ``preprocess``,
``engines``, ``search``, ``postprocess``, ``predictor``) never imports from here."""
