"""Near-copies: one photo saved twice with different bytes (re-encoded, re-cropped, re-toned).

The data layer merges *identical* files by their hash (:func:`agelib.data.utkface.deduplicate`).
UTKFace also holds the same photo re-encoded under another name, often with another age: no
hash finds those. Here they are found by the look of the images: each face shrunk to 16x16
grey, with its mean and contrast removed, so that a copy that was only re-compressed,
brightened or turned sepia still matches, and pairs whose thumbnails correlate at
``min_corr`` or more are the same photo (chapter 01 shows them; they are, down to colour).

The standard split does not group them yet, so a few test faces have a near-copy in
training: :func:`leaked_test_faces` names them, and chapter 10 measures what that does to the
test MAE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from .sources import Faces

THUMB = 16  # side of the grey thumbnails compared
MIN_CORR = 0.97  # every pair above it that chapter 01 shows is one photo


def thumbnails(images: np.ndarray) -> np.ndarray:
    """``(N, 256)`` grey 16x16 thumbnails of uint8 ``(N, S, S, 3)`` images (S a multiple of
    16), each with zero mean and unit length, so that their dot product is a correlation."""
    n, side = len(images), images.shape[1]
    if side % THUMB:
        raise ValueError(f"images of {side} px: give a multiple of {THUMB} (e.g. faces.images(32))")
    f = side // THUMB
    grey = images.astype(np.float32).mean(axis=3)
    thumbs = grey.reshape(n, THUMB, f, THUMB, f).mean(axis=(2, 4)).reshape(n, THUMB * THUMB)
    thumbs -= thumbs.mean(axis=1, keepdims=True)
    return thumbs / np.maximum(np.linalg.norm(thumbs, axis=1, keepdims=True), 1e-6)


def near_copies(faces: Faces, min_corr: float = MIN_CORR, neighbours: int = 5,
                size: int = 32) -> pd.DataFrame:
    """Pairs of distinct images of ``faces`` that show the same photo.

    Each image is compared with every other (its ``neighbours`` closest are kept); one row
    per pair with ``corr`` at or above ``min_corr``: ``sha1_a``, ``sha1_b``, ``corr``,
    ``age_a``, ``age_b``. A pair counts when either image has the other among its closest
    (a harsh re-encoding may be close to its original while the original's closest are
    cleaner copies); a photo with more than ``neighbours`` copies may still lose a pair.
    Seconds for UTKFace's 20,000 faces, from the ``size`` px cache.
    """
    samples = faces.samples.reset_index(drop=True)
    x = torch.from_numpy(thumbnails(faces.images(size)))
    pairs: dict[tuple[int, int], float] = {}  # (i, j) with i < j: each pair once
    for start in range(0, len(x), 2048):  # a block of rows at a time: memory stays small
        sim = x[start:start + 2048] @ x.T  # (b, N) correlations
        rows = torch.arange(start, start + len(sim))
        sim[torch.arange(len(sim)), rows] = -1  # not with itself
        corr, idx = sim.topk(min(neighbours, len(x) - 1), dim=1)
        for i, cs, js in zip(rows.tolist(), corr.tolist(), idx.tolist()):
            pairs.update({(min(i, j), max(i, j)): c for c, j in zip(cs, js) if c >= min_corr})
    rows = [{"sha1_a": samples.at[i, "sha1"], "sha1_b": samples.at[j, "sha1"],
             "corr": round(c, 4), "age_a": int(samples.at[i, "age"]),
             "age_b": int(samples.at[j, "age"])} for (i, j), c in sorted(pairs.items())]
    return pd.DataFrame(rows, columns=["sha1_a", "sha1_b", "corr", "age_a", "age_b"])


def across_splits(pairs: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """The pairs whose two images sit in different parts of ``split``, with both parts (a
    pair with an image the split does not hold is left out)."""
    split = split[~split.index.duplicated()]
    out = pairs.assign(split_a=pairs["sha1_a"].map(split), split_b=pairs["sha1_b"].map(split))
    out = out.dropna(subset=["split_a", "split_b"])  # an image this split leaves out crosses nothing
    return out[out["split_a"] != out["split_b"]].reset_index(drop=True)


def leaked_test_faces(pairs: pd.DataFrame, split: pd.Series) -> set[str]:
    """Test faces (sha1) whose photo also sits, as a near-copy, in train or valid."""
    crossing = across_splits(pairs, split)
    return (set(crossing.loc[crossing["split_a"] == "test", "sha1_a"])
            | set(crossing.loc[crossing["split_b"] == "test", "sha1_b"]))
