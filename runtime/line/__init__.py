"""The line layer around the torch-free core: records and run options, the watched folder and its
journal, the camera loop, outputs (overlays, moves), hot reload, result sinks, camera sources and
PLC triggers, score, bench and bundle information. :mod:`runtime.serve` and the command line
(:mod:`runtime.cli`) sit above it and it imports neither; the core (``runtime.bundle``,
``preprocess``, ``engines``, ``search``, ``postprocess``, ``predictor``) never imports from here."""
