"""Who a model fails for: per-face errors joined with labels, from the run records.

Every training run keeps its per-face test predictions next to its record
(``results/predictions/<id>.csv``). :func:`model_predictions` joins them with
the faces' labels, so error tables by age band, gender and race, CS curves and
galleries of the worst errors are made from what the runs actually predicted,
never re-typed or re-run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics, records
from .data import utkface


def labelled(faces) -> pd.DataFrame:
    """The faces' labels keyed as the predictions are: sha1 prefix, age, gender and race names."""
    s = faces.samples
    return pd.DataFrame({
        "sha1": s["sha1"].str[:records.SHA1_CHARS], "full_sha1": s["sha1"],
        "gender": s["gender"].map(utkface.GENDERS).fillna("unknown"),
        "race": s["race"].map(utkface.RACES).fillna("unknown"),
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


def runs_with_predictions(table: pd.DataFrame, faces, mode: str) -> pd.DataFrame:
    """The records of runs on these faces in ``mode`` (``"smoke"`` or ``"full"``) that kept
    per-face predictions, the latest per :func:`run_label` (a re-run replaces its earlier
    twin), oldest first. The mode is not optional: a smoke run and a full run of one model
    share a label, and the later would silently replace the other."""
    if table.empty or "predictions" not in table:
        return table.iloc[:0]
    keep = table[table["data_fingerprint"] == faces.fingerprint] if "data_fingerprint" in table else table
    keep = keep[keep["mode"] == mode] if "mode" in keep else keep.iloc[:0]
    keep = keep[keep["predictions"].notna()].sort_values("date", kind="stable", na_position="first")
    labels = keep.apply(run_label, axis=1) if len(keep) else pd.Series(dtype=str)
    return keep.assign(label=labels).drop_duplicates("label", keep="last")


def best_trained(table: pd.DataFrame, faces, mode: str) -> str | None:
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


def model_predictions(table: pd.DataFrame, faces, mode: str,
                      folder=None) -> dict[str, pd.DataFrame]:
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


def summary(predictions: dict[str, pd.DataFrame], k: float = 5) -> pd.DataFrame:
    """MAE, CS@k and the worst group's MAE (by race, gender, age band) for every model."""
    rows = []
    for name, p in predictions.items():
        worst = {by: metrics.errors_by_group(p, "pred", "age", by, k)["MAE"].max()
                 for by in ("age band", "gender", "race")}
        rows.append({"model": name, "faces": len(p), "MAE": metrics.mae(p["pred"], p["age"]),
                     f"CS@{k:g}": metrics.cs_at(p["pred"], p["age"], k),
                     "worst age band": worst["age band"], "worst race": worst["race"],
                     "worst gender": worst["gender"],
                     "slope": regression_to_mean(p["pred"], p["age"])[0]})
    columns = ["model", "faces", "MAE", f"CS@{k:g}", "worst age band", "worst race",
               "worst gender", "slope"]  # named, so that no runs yet is an empty table
    return pd.DataFrame(rows, columns=columns).set_index("model").sort_values("MAE")


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


def label_conflicts(faces) -> pd.DataFrame:
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
        rows.append({"run": name, "faces": len(p), "MAE, all": metrics.mae(p["pred"], p["age"]),
                     f"MAE, {from_age}+": metrics.mae(old["pred"], old["age"]) if len(old) else np.nan,
                     f"faces {from_age}+": len(old),
                     "slope": regression_to_mean(p["pred"], p["age"])[0]})
    columns = ["run", "faces", "MAE, all", f"MAE, {from_age}+", f"faces {from_age}+", "slope"]
    return pd.DataFrame(rows, columns=columns).set_index("run")
