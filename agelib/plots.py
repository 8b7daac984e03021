"""Figures that several chapters draw: face grids, age histograms, saving to ``figures/``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from . import settings
# Age bands are defined with the metrics (tables grouped by age); figures use the same.
from .metrics import AGE_BANDS, age_band, band_labels  # noqa: F401  (re-exported)


def figures_dir() -> Path:
    """Where figures shown by README are saved: the checkout's ``figures/``."""
    root = settings.repo_root()
    return (root / "figures") if root else Path("figures")


def save_figure(fig: plt.Figure, name: str, real: bool = True, dpi: int = 110) -> Path:
    """Save ``fig`` as ``figures/NAME.png`` (small enough to commit) and return the path.

    ``real``: the figure shows a real result (UTKFace's faces, ``faces.is_utkface``,
    and full mode where it shows a model), the kind README shows. Any other
    (synthetic faces, your own photos, a smoke run: ``real=False``) goes to
    ``figures-scratch/`` in the ignored data home instead, so a test run on a fresh
    clone never overwrites the figures of a real run.
    """
    folder = figures_dir() if real else settings.data_home() / "figures-scratch"
    path = folder / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def face_grid(images: np.ndarray, titles: Sequence[str] | None = None, ncols: int = 8,
              size: float = 1.4, row_labels: Sequence[str] | None = None) -> plt.Figure:
    """A grid of uint8 ``(N, H, W, 3)`` faces with optional titles (one per face, ``""`` for
    none) and row labels."""
    n = len(images)
    if n == 0:  # e.g. no conflicting labels in this dataset: say so instead of failing
        fig, ax = plt.subplots(figsize=(ncols * size, size))
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        ax.set_axis_off()
        return fig
    if titles is not None and len(titles) < n:
        raise ValueError(f"{len(titles)} titles for {n} faces: give one title per face "
                         "('' for a face without one)")
    nrows = -(-n // ncols)
    height = nrows * size + _title_room(titles, ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, height), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i < n:
            ax.imshow(images[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if row_labels is not None:
        for row, label in enumerate(row_labels):
            axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def _title_room(titles: Sequence[str] | None, ncols: int) -> float:
    """Inches to add to a grid of square faces so that titles do not cover the row above:
    as many lines as the longest title has, on each row that has titled faces."""
    titled = [t for t in (titles or []) if t]
    lines = max((str(t).count("\n") + 1 for t in titled), default=0)
    titled_rows = -(-len(titled) // ncols)
    return titled_rows * lines * 0.17


def per_seed_figure(per_seed: pd.DataFrame, title: str,
                    bars: Sequence[tuple[float, str]] = ()) -> plt.Figure:
    """Test MAE of every (backbone, variant) row of :func:`agelib.records.per_seed`, one dot
    per training seed and a tick at their mean, worst at the top, with dashed vertical
    ``bars`` (value, label) to clear: a lever's effect next to the spread of the seeds."""
    per_seed = per_seed.loc[per_seed.mean(axis=1).sort_values(ascending=False).index]
    labels = [f"{backbone} ({variant})" for backbone, variant in per_seed.index]
    fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(labels) + 1.6))
    for seed, marker in zip(per_seed.columns, "os^Dvp<>"):
        ax.plot(per_seed[seed], labels, marker, ls="", alpha=0.75, label=f"seed {seed}")
    ax.plot(per_seed.mean(axis=1), labels, "|", color="k", ms=16, mew=2, label="mean")
    for value, label in bars:
        ax.axvline(value, color="C3", ls="--", lw=1, label=label)
    ax.set(xlabel="test MAE (years)", title=title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=5, fontsize=8, frameon=False)
    return fig
