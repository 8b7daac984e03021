"""Who a model fails for: per-face errors joined with labels, from the run records.

Every training run keeps its per-face test predictions next to its record
(``results/predictions/<id>.csv``). :func:`model_predictions` joins them with
the faces' labels, so error tables by age band, gender and race, CS curves and
galleries of the worst errors are made from what the runs actually predicted,
never re-typed or re-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import metrics, records, settings
from .data import utkface

if TYPE_CHECKING:
    from .data.sources import Faces

UNKNOWN = "unknown"  # what labelled() calls a face without that label
MIN_GROUP_FACES = 30  # fewer test faces than this, and a group's MAE is too noisy to rank


def labelled(faces: Faces) -> pd.DataFrame:
    """The faces' gender and race names keyed as the predictions are (sha1 prefix), so a
    join adds them to each prediction; the full sha1 and file count come along."""
    s = faces.samples
    return pd.DataFrame({
        "sha1": s["sha1"].str[:records.SHA1_CHARS], "full_sha1": s["sha1"],
        "gender": s["gender"].map(utkface.GENDERS).fillna(UNKNOWN),
        "race": s["race"].map(utkface.RACES).fillna(UNKNOWN),
        "n_files": s["n_files"]})


def run_label(record) -> str:
    """A short name for a run in tables and legends: tag, model (with its backbone settings,
    as README's table names them: a 2-block ViT is not ``vit_tiny_patch16_224``), what the
    run changed, and (where they are not the defaults) pretrained weights and the seed, so
    two runs of one setting never share a name.

    >>> run_label({"tag": "ch10", "backbone": "resnet18", "variant": "balanced sampling"})
    'ch10 resnet18 (balanced sampling)'
    >>> run_label({"tag": "ch02", "backbone": "resnet18", "head": "regression", "loss": "l1"})
    'ch02 resnet18 · regression · l1'
    >>> run_label({"tag": "ch08", "backbone": "hybrid_atto", "variant": "baseline", "seed": 2,
    ...            "pretrained": True})
    'ch08 hybrid_atto (baseline) · pretrained · seed 2'
    >>> run_label({"tag": "cpu-study", "backbone": "vit_tiny_patch16_224", "variant": "stage 2",
    ...            "config": {"model": {"backbone_args": {"depth": 2, "embed_dim": 80}}}})
    'cpu-study vit_tiny_patch16_224 [depth=2, embed_dim=80] (stage 2)'
    """
    variant = record.get("variant") or ""
    backbone = records.model_text(record["backbone"],
                                  records.backbone_args_text(record.get("config")))
    model = (f"{backbone} ({variant})" if variant else
             f"{backbone} · {record['head']} · {record['loss']}")
    pretrained, seed, trained = (record.get(k) for k in ("pretrained", "seed", "n_train"))
    if pd.notna(pretrained) and pretrained and (pd.isna(trained) or trained):  # off-the-shelf
        model += " · pretrained"                       # models say so in their variant already
    if pd.notna(seed) and int(seed) != 0:
        model += f" · seed {int(seed)}"
    return f"{record.get('tag', '')} {model}".strip()


def runs_with_predictions(table: pd.DataFrame, faces: Faces, mode: str) -> pd.DataFrame:
    """The records of runs on these faces in ``mode`` (``"smoke"`` or ``"full"``) that kept
    per-face predictions, the latest per :func:`run_label` (a re-run replaces its earlier
    twin), oldest first. The mode is not optional: a smoke run and a full run of one model
    share a label, and the later would silently replace the other."""
    _check_mode(mode)
    if table.empty or "predictions" not in table:
        return table.iloc[:0]
    keep = table
    if "data_fingerprint" in table:
        keep = table[table["data_fingerprint"] == faces.fingerprint]
    keep = keep[keep["mode"] == mode] if "mode" in keep else keep.iloc[:0]
    keep = keep[keep["predictions"].notna()].sort_values("date", kind="stable", na_position="first")
    labels = keep.apply(run_label, axis=1) if len(keep) else pd.Series(dtype=str)
    return keep.assign(label=labels).drop_duplicates("label", keep="last")


def _check_mode(mode: str) -> None:
    """Records name their mode ``"smoke"`` or ``"full"``; anything else (a RunMode itself,
    say) matches no record, and the tables would be silently empty."""
    names = (settings.SMOKE.name, settings.FULL.name)
    if not isinstance(mode, str) or mode not in names:
        raise ValueError(f"mode must be one of {names}, not {mode!r}; for a RunMode, "
                         "give its name (mode.name)")


def best_trained(table: pd.DataFrame, faces: Faces, mode: str) -> str | None:
    """The label of the run, trained here, with the lowest *validation* MAE.

    Chosen on validation, as every model choice in the course is: the test set
    only reports. Off-the-shelf models (nothing trained here, no validation
    score) are never the "best model", whatever their test MAE.
    """
    runs = runs_with_predictions(table, faces, mode)
    if "n_train" in runs:
        runs = runs[runs["n_train"].fillna(0) > 0]
    runs = runs[runs["valid_mae"].notna()] if "valid_mae" in runs else runs.iloc[:0]
    return None if runs.empty else runs.loc[runs["valid_mae"].astype(float).idxmin(), "label"]


def model_predictions(table: pd.DataFrame, faces: Faces, mode: str,
                      folder: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Per-face test predictions, with labels, of every run on these faces (latest per label).

    ``table`` is :func:`agelib.records.load_records`; runs on other data, in
    another mode, or recorded before predictions were kept are left out.
    """
    labels = labelled(faces)
    out: dict[str, pd.DataFrame] = {}
    for _, record in runs_with_predictions(table, faces, mode).iterrows():
        try:
            preds = records.load_predictions(record, folder)
        except FileNotFoundError:
            continue
        joined = preds.merge(labels, on="sha1", how="left", validate="one_to_one")
        joined["age band"] = pd.Categorical(metrics.age_band(joined["age"]),
                                            categories=metrics.band_labels(), ordered=True)
        out[record["label"]] = joined.assign(error=(joined["pred"] - joined["age"]).abs())
    return out


def group_table(predictions: dict[str, pd.DataFrame], by: str, value: str = "MAE",
                k: float = 5) -> pd.DataFrame:
    """One column per model, one row per group (``by``): its MAE (or ``CS@k``, or ``n``)."""
    columns = {name: metrics.errors_by_group(p, "pred", "age", by, k)[value]
               for name, p in predictions.items()}
    out = pd.DataFrame(columns)
    first = next(iter(predictions.values()), None)
    if first is not None:  # how many faces each row rests on: small groups are noisy
        out.insert(0, "faces", metrics.errors_by_group(first, "pred", "age", by, k)["n"])
    return out


def leak_table(predictions: dict[str, pd.DataFrame], leaked: set[str]) -> pd.DataFrame:
    """What faces seen in training (as near-copies, :func:`agelib.data.leaked_test_faces`) do
    to each model's test MAE: the MAE on every test face, without the leaked ones, and on
    them alone. ``change`` is how much the leak lowered (flattered) the reported MAE."""
    rows = []
    for name, p in predictions.items():
        seen = p["full_sha1"].isin(leaked)
        rows.append({"model": name, "faces": len(p), "leaked": int(seen.sum()),
                     "MAE": p["error"].mean(), "MAE without them": p.loc[~seen, "error"].mean(),
                     "MAE on them": p.loc[seen, "error"].mean() if seen.any() else np.nan})
    out = pd.DataFrame(rows, columns=["model", "faces", "leaked", "MAE", "MAE without them",
                                      "MAE on them"]).set_index("model")
    out["change"] = out["MAE"] - out["MAE without them"]
    return out


def worst_group(p: pd.DataFrame, by: str, k: float = 5,
                min_faces: int = MIN_GROUP_FACES) -> float:
    """The highest MAE among the named groups of ``by`` with at least ``min_faces`` faces.

    Without the floor, the "worst race" is whichever group is smallest: 7 faces
    with no race label, or 3 "Others" in a smoke run, swing their MAE by years.
    Faces without the label (``"unknown"``) are not a group of people, so they
    are never ranked. NaN when no group is large enough.
    """
    table = metrics.errors_by_group(p, "pred", "age", by, k)
    table = table[(table.index != UNKNOWN) & table.index.notna() & (table["n"] >= min_faces)]
    return float(table["MAE"].max()) if len(table) else float("nan")


def summary(predictions: dict[str, pd.DataFrame], k: float = 5,
            min_faces: int = MIN_GROUP_FACES) -> pd.DataFrame:
    """MAE, CS@k and the worst group's MAE (by age band, gender, race; :func:`worst_group`,
    so NaN where no group has ``min_faces`` faces) and the slope, for every model."""
    rows = []
    for name, p in predictions.items():
        worst = {by: worst_group(p, by, k, min_faces) for by in ("age band", "gender", "race")}
        rows.append({"model": name, "faces": len(p), "MAE": metrics.mae(p["pred"], p["age"]),
                     f"CS@{k:g}": metrics.cs_at(p["pred"], p["age"], k),
                     "worst age band": worst["age band"], "worst race": worst["race"],
                     "worst gender": worst["gender"],
                     "slope": regression_to_mean(p["pred"], p["age"])[0]})
    columns = ["model", "faces", "MAE", f"CS@{k:g}", "worst age band", "worst race",
               "worst gender", "slope"]  # named, so that no runs yet is an empty table
    return pd.DataFrame(rows, columns=columns).set_index("model").sort_values("MAE")


def group_errors(p: pd.DataFrame, by: str, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """One model's error per group of ``by`` (race, gender), with what a fair reading needs.

    - ``MAE`` and its bootstrap interval at ``level`` (``MAE low``, ``MAE high``):
      the group's faces resampled with replacement ``n_boot`` times. The interval
      narrows only with the square root of the group's size, so a small group's
      is wide. Intervals that do not overlap show a gap beyond resampling noise;
      intervals that overlap a little can still hide one (the cautious check).
    - ``age-standardised MAE`` (and its interval, from the same resamples): the
      group's MAE in each age band (``p["age band"]``), weighted by the share of
      that band among *all* the faces in ``p``. Error grows with age, so a group
      with more old faces has a higher raw MAE even if the model serves every age
      equally well; standardising gives every group the same age mix.
    - ``age mix covered``: the share of all faces whose band the group has faces
      in. Bands a group lacks are left out of its average; below 1, compare with care.
    """
    rng = np.random.default_rng(seed)
    bands = p["age band"].astype(str).to_numpy()
    names = np.unique(bands)
    weights = np.array([(bands == b).mean() for b in names])  # (J,) the whole table's age mix
    q = [(1 - level) / 2, (1 + level) / 2]
    rows = []
    for group, g in p.groupby(by, sort=True, dropna=False):
        errors = g["error"].to_numpy(float)  # (n,)
        band = np.searchsorted(names, g["age band"].astype(str).to_numpy())  # (n,) into names
        draws = rng.integers(0, len(errors), (n_boot, len(errors)))  # (B, n) resampled faces
        mae_draws = errors[draws].mean(1)  # (B,)
        std, std_draws, covered = _standardised(errors, band, weights, draws)
        rows.append({by: group, "faces": len(errors), "MAE": errors.mean(),
                     "MAE low": np.quantile(mae_draws, q[0]),
                     "MAE high": np.quantile(mae_draws, q[1]),
                     "age-standardised MAE": std,
                     "standardised low": np.nanquantile(std_draws, q[0]),
                     "standardised high": np.nanquantile(std_draws, q[1]),
                     "age mix covered": covered})
    return pd.DataFrame(rows).set_index(by)


def _standardised(errors: np.ndarray, band: np.ndarray, weights: np.ndarray,
                  draws: np.ndarray) -> tuple[float, np.ndarray, float]:
    """The age-standardised MAE of one group, of each resample of it, and the mix it covers."""
    present = np.bincount(band, minlength=len(weights)) > 0  # (J,) bands the group has faces in
    w = np.where(present, weights, 0.0) / weights[present].sum()  # (J,) renormalised
    drawn_errors, drawn_band = errors[draws], band[draws]  # (B, n) each
    band_mae = np.zeros(len(weights))  # (J,)
    sums, counts = np.zeros((len(draws), len(weights))), np.zeros((len(draws), len(weights)))
    for j in np.flatnonzero(present):  # a loop over ~10 bands keeps memory at (B, n)
        band_mae[j] = errors[band == j].mean()
        in_band = drawn_band == j
        sums[:, j], counts[:, j] = (drawn_errors * in_band).sum(1), in_band.sum(1)
    # a resample that misses a band the group has gets that band's weight spread over the rest
    w_draw = np.where(counts > 0, w[None, :], 0.0)  # (B, J)
    draw_mae = (sums / np.maximum(counts, 1) * w_draw).sum(1) / w_draw.sum(1)
    return float((band_mae * w).sum()), draw_mae, float(weights[present].sum())


def distinct_runs(predictions: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The runs with different per-face predictions, the first name of each kept.

    The same command run twice (one under two tags, say) is one model, not two
    pieces of evidence: listing both double-counts it in a median or a ranking.
    """
    seen: list[np.ndarray] = []
    out = {}
    for name, p in predictions.items():
        pred = p.sort_values("sha1")["pred"].to_numpy()
        if not any(len(s) == len(pred) and np.array_equal(s, pred) for s in seen):
            seen.append(pred)
            out[name] = p
    return out


def regression_to_mean(pred, true) -> tuple[float, float]:
    """Slope and intercept of the least-squares line ``pred ~ true``.

    A perfect model has slope 1. A model that hedges towards the typical age has
    a slope below 1: it over-estimates the young and under-estimates the old,
    which is where the errors by age band come from.

    >>> [round(v, 3) for v in regression_to_mean([30, 35, 40], [20, 35, 50])]
    [0.333, 23.333]
    """
    slope, intercept = np.polyfit(np.asarray(true, float), np.asarray(pred, float), 1)
    return float(slope), float(intercept)


def worst_errors(predictions: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    """The ``n`` faces with the largest absolute error, largest first."""
    return predictions.sort_values("error", ascending=False).head(n).reset_index(drop=True)


def label_conflicts(faces: Faces) -> pd.DataFrame:
    """Identical images whose file names give different ages: measured label noise.

    The data layer leaves these out of training and testing (no rule can tell
    which label is right); here they show how far apart two annotations of the
    *same* photo can be, a floor under any model's error on this dataset.
    """
    if faces.files is None:
        return pd.DataFrame(columns=["sha1", "ages", "age_spread"])
    groups = utkface.duplicate_groups(faces.files)
    return groups[groups["age_conflict"]].reset_index(drop=True)


def old_age_table(predictions: dict[str, pd.DataFrame], from_age: int = 60) -> pd.DataFrame:
    """Per model: MAE on all faces and on faces aged ``from_age`` or more, and the slope.

    The three numbers a remedy for old ages has to move: the old faces' error
    down, the slope towards 1, and (its price) the overall error not much up.
    """
    rows = []
    for name, p in predictions.items():
        old = p[p["age"] >= from_age]
        old_mae = metrics.mae(old["pred"], old["age"]) if len(old) else np.nan
        rows.append({"run": name, "faces": len(p), "MAE, all": metrics.mae(p["pred"], p["age"]),
                     f"MAE, {from_age}+": old_mae,
                     f"faces {from_age}+": len(old),
                     "slope": regression_to_mean(p["pred"], p["age"])[0]})
    columns = ["run", "faces", "MAE, all", f"MAE, {from_age}+", f"faces {from_age}+", "slope"]
    return pd.DataFrame(rows, columns=columns).set_index("run")
