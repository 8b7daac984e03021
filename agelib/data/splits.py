"""The course's one evaluation protocol: a seeded, age-stratified split after deduplication.

Every chapter trains on ``train``, picks epochs and settings on ``valid`` and
reports ``test`` once, on the same images, so numbers from different chapters
can be compared. The split is made on *distinct images* (see
:func:`agelib.data.utkface.deduplicate`) and keyed by content hash, so the same
photo can never sit on both sides, and it is saved so later runs reload the
identical split instead of re-drawing it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..files import written_whole

SPLITS = ("train", "valid", "test")
#: Age bands used for stratification: fine where faces change fast, wide where data is thin.
STRATA_EDGES = (0, 3, 7, 13, 18, 23, 27, 31, 36, 41, 46, 51, 56, 61, 66, 71, 81, 200)


def age_strata(ages: ArrayLike) -> np.ndarray:
    """Index of each age's band in :data:`STRATA_EDGES`.

    >>> age_strata([0, 2, 3, 29, 80, 116]).tolist()
    [0, 0, 1, 6, 15, 16]
    """
    return np.digitize(np.asarray(ages), STRATA_EDGES[1:-1])


#: the fewest images in each part of a split (one face makes no error distribution)
MIN_PER_SPLIT = 2


def split_sizes(n: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
                ) -> tuple[int, int, int]:
    """Train, valid and test sizes of a split of ``n`` images, as scikit-learn rounds them.

    >>> split_sizes(10), split_sizes(9)
    ((6, 2, 2), (6, 1, 2))
    """
    test = math.ceil(fractions[2] * n)
    valid = math.ceil(fractions[1] / (fractions[0] + fractions[1]) * (n - test))
    return n - test - valid, valid, test


def make_split(samples: pd.DataFrame, seed: int = 0,
               fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> pd.Series:
    """Assign each sample to train/valid/test, stratified by age band.

    Returns a Series of split names indexed by ``sha1``. Deterministic for a
    given set of images and seed, whatever order the rows come in.
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
        raise ValueError(f"fractions {fractions} must be three positive numbers summing to 1")
    if samples["sha1"].duplicated().any():
        raise ValueError("samples hold the same image twice: run deduplicate() first")
    if min(split_sizes(len(samples), fractions)) < MIN_PER_SPLIT:
        raise ValueError(f"only {len(samples)} distinct image(s): too few for a train/valid/test "
                         f"split of {fractions}, which needs {MIN_PER_SPLIT} or more in each. "
                         "Give a folder with more faces, or try the course on its synthetic "
                         "faces (AGELIB_DATA=synthetic).")
    ordered = samples.sort_values("sha1", ignore_index=True)  # row order must not matter
    # each band holds at least 1/smallest-fraction images, so the smallest part has room for
    # one image of every band (10 for the standard 70/10/20, as always)
    strata = _mergeable_strata(ordered["age"], min_count=max(10, math.ceil(1 / min(fractions))))
    rest, test = train_test_split(ordered.index, test_size=fractions[2], random_state=seed,
                                  stratify=strata)
    valid_share = fractions[1] / (fractions[0] + fractions[1])
    train, valid = train_test_split(rest, test_size=valid_share, random_state=seed + 1,
                                    stratify=strata[rest])
    split = pd.Series("train", index=ordered["sha1"], name="split")
    split.iloc[valid] = "valid"
    split.iloc[test] = "test"
    return split


def _mergeable_strata(ages: pd.Series, min_count: int) -> np.ndarray:
    """Age bands, with bands too small to split merged into their neighbour.

    Stratifying needs a few samples per band; tiny data (smoke runs, synthetic
    faces) may have empty or thin bands, so those fold into the previous one.
    """
    strata = age_strata(ages)
    labels = np.unique(strata)
    mapping, current, count = {}, labels[0], 0
    for band in labels:
        if count >= min_count:
            current, count = band, 0
        mapping[band] = current
        count += int((strata == band).sum())
    merged = np.array([mapping[s] for s in strata])
    last = merged.max()  # the oldest band may still be thin: join it to the one before
    if (merged == last).sum() < min_count and len(np.unique(merged)) > 1:
        merged[merged == last] = np.unique(merged)[-2]
    return merged


def make_folds(samples: pd.DataFrame, k: int = 5, seed: int = 0) -> pd.Series:
    """Assign each sample to one of ``k`` age-stratified folds (for mean +- std).

    Fold ``i`` is the test set of run ``i``; :func:`fold_split` turns it into a
    train/valid/test assignment.
    """
    ordered = samples.sort_values("sha1", ignore_index=True)
    strata = _mergeable_strata(ordered["age"], min_count=k)
    folds = np.empty(len(ordered), dtype=int)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, test_idx) in enumerate(splitter.split(ordered.index, strata)):
        folds[test_idx] = i
    return pd.Series(folds, index=ordered["sha1"], name="fold")


def fold_split(folds: pd.Series, fold: int, valid_fold: int | None = None) -> pd.Series:
    """Train/valid/test names for run ``fold``: its fold is test, the next one valid."""
    k = int(folds.max()) + 1
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} is not in 0..{k - 1}")
    valid_fold = (fold + 1) % k if valid_fold is None else valid_fold
    split = pd.Series("train", index=folds.index, name="split")
    split[folds == valid_fold] = "valid"
    split[folds == fold] = "test"
    return split


def save_split(split: pd.Series, path: str | Path) -> Path:
    """Write a split as CSV (``sha1,split``), the form it is compared and reloaded in.

    Written whole or not at all (a temporary file renamed), so that a crash mid-write
    never leaves half a split for the next run to read.
    """
    path = Path(path)
    with written_whole(path) as partial:
        split.rename_axis("sha1").reset_index().to_csv(partial, index=False)
    return path


def load_split(path: str | Path) -> pd.Series:
    """Read a split written by :func:`save_split`."""
    table = pd.read_csv(path, dtype=str)
    if len(table.columns) != 2 or table.columns[0] != "sha1":
        raise ValueError(f"{path} is not a split file (expected columns sha1,split)")
    return table.set_index("sha1").iloc[:, 0]


def check_no_leak(samples: pd.DataFrame, split: pd.Series) -> None:
    """Raise if one image (by content) is assigned to two splits or left unassigned."""
    clash = split.groupby(level=0).nunique()  # a split may list one image twice
    if (clash > 1).any():
        raise ValueError(f"{int((clash > 1).sum())} images sit in more than one split")
    assigned = samples["sha1"].map(split[~split.index.duplicated()])
    if assigned.isna().any():
        raise ValueError(f"{int(assigned.isna().sum())} samples have no split")


def subsample(samples: pd.DataFrame, n: int | None, seed: int = 0) -> pd.DataFrame:
    """A fixed, age-stratified subset of ``n`` rows (all rows when ``n`` is None).

    Smoke runs use it to shrink each split without changing which split an image is in.
    """
    if n is None or n >= len(samples):
        return samples
    strata = _mergeable_strata(samples["age"], min_count=2)
    try:
        keep, _ = train_test_split(samples.index, train_size=n, random_state=seed,
                                   stratify=strata)
    except ValueError:  # too few rows per band to stratify: fall back to a seeded draw
        keep = samples.sample(n=n, random_state=seed).index
    return samples.loc[sorted(keep)]
