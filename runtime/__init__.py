"""patchcore-rt runtime: the torch-free ground floor.

Preprocessing, post-processing, nearest-neighbour scoring and the bundle format live here so that
fitting (``patchcore``), export (``export``) and the deployed runtime share one implementation.
Nothing in this package imports torch.
"""

__version__ = "0.1.0"
