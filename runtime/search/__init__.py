"""Nearest-neighbour search against the memory bank: the same code for fit, eval and runtime.

- :mod:`.table`: the indexes ``--search`` names (one :class:`runtime.plugins.PluginTable`), each row
  with the index's capabilities as data (approximate, bounds, device);
- :mod:`.build`: :func:`~.build.build_index`, the one way to a ready index (a row, or ``auto``:
  :mod:`.auto` measures at load which is faster here);
- :mod:`.exact`, :mod:`.faiss_index`: the exact float32 searches (numpy, onnxruntime, faiss);
- :mod:`.reduced`: the reduced-precision candidate steps (bf16, int8) and their ONNX graphs
  (:mod:`.onnx_graphs`, files in ``graphs/``);
- :mod:`.distances`: exact float64 distances, the candidates' bounds, the pruned search's pairs;
- :mod:`.scorer`: :class:`~.scorer.PatchScorer`, patch and image scores from a ready index.

Nothing here imports torch.
"""
