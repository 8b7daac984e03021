"""agelib: the helper package of an open course on facial age estimation.

Chapters import its modules by name (``from agelib import data, settings``) so
that shared code lives once and each notebook keeps only what it teaches.
Where to start, reusing it in your own work:

- ``data``: ``load_faces`` (UTKFace, a pack, or synthetic faces), ``load_table`` (your
  own photos, a CSV of file and age), the standard split and batches;
- ``models`` and ``hybrid``: age models on timm backbones, the ConvNeXt-ViT hybrid;
- ``losses`` and ``metrics``: regression, classification and ordinal losses, MAE, CS@k;
- ``training``: ``train_age_model`` (fastai), run records, checkpoints;
- ``predict``: ages of the faces in a photo, from a checkpoint.

``import agelib`` alone loads nothing heavy; ``agelib.models`` (any module of
:data:`__all__`) is imported the first time it is used.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["analysis", "baselines", "bench", "checkpoints", "cli", "course", "data", "demo",
           "distill", "export", "faces", "files", "hybrid", "inference", "interpret", "losses",
           "metrics", "models", "plots", "predict", "records", "settings", "study", "training"]


def __getattr__(name: str):
    """``agelib.models`` and the like without importing every module up front (PEP 562)."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
