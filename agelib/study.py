"""Chapter 07's long study, read from its run records: does the hybrid beat its own parts,
and what does each lever (a start from trained parts, distillation, the recipe) do?

The runs take longer than a chapter should (``.ci/gpu study`` on a GPU, ``.ci/cpu-study``
on two CPU cores), so these functions only compare what the records hold, and the
chapter shows the comparison instead of the plumbing. Every "best" run is chosen on
validation MAE: the test set only reports.
"""

from __future__ import annotations

import pandas as pd

from . import records

#: Each study's tag, and the tag under which its teacher (a plain ResNet-18) is recorded.
STUDIES = {"study": "study", "cpu-study": "cpu-baseline"}


def hours_per_seed(raw: pd.DataFrame, tag: str) -> pd.Series:
    """What each training seed of a study cost, summed from its runs' own clocks."""
    runs = raw[raw["tag"] == tag]
    return (runs.groupby("seed")["seconds"].sum() / 3600).rename("hours")


def levered(raw: pd.DataFrame) -> set[tuple[str, str]]:
    """(backbone, variant) of the runs that started from trained parts or learned from a
    teacher: their budget includes the training of those other models."""
    return {(r.backbone, r.variant) for r in raw.itertuples() if isinstance(r.config, dict)
            and (r.config.get("init_from") or r.config.get("distill_from"))}


def comparison(report: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """For each study in ``report`` (:func:`agelib.records.report_table` rows): its best part
    alone, its best hybrid at the same budget (from scratch, like the parts), its best hybrid
    with the levers, and the teacher ResNet-18 that is also the bar to clear.

    ``vs best part`` is how many years lower (better) a row's test MAE is than the best part's.
    """
    with_levers = levered(raw)
    rows = []
    for tag in [t for t in report["tag"].unique() if t in STUDIES]:
        for role, row in _best_per_role(report, tag, with_levers):
            for r in row.itertuples():
                model = records.model_text(r.backbone, r.backbone_args, r.variant)
                rows.append({"study": tag, "role": role, "model": model, "epochs": r.epochs,
                             "runs": r.runs, "valid MAE": r.valid_mae, "test MAE": r.test_mae})
    out = pd.DataFrame(rows, columns=["study", "role", "model", "epochs", "runs", "valid MAE",
                                      "test MAE"])
    part = out[out["role"] == "best part alone"].set_index("study")["test MAE"]
    return out.assign(**{"vs best part": out["study"].map(part) - out["test MAE"]})


def _best_per_role(report: pd.DataFrame, tag: str, with_levers: set[tuple[str, str]]
                   ) -> list[tuple[str, pd.DataFrame]]:
    """Each role of :func:`comparison` in study ``tag``, with its run of lowest validation
    MAE (no row when no run plays that role)."""
    runs = report[(report["tag"] == tag) & (report["variant"] != "teacher")]
    hybrid = runs["backbone"].str.startswith("hybrid")
    uses_levers = pd.Series([(b, v) in with_levers for b, v in zip(runs["backbone"],
                                                                    runs["variant"])],
                            index=runs.index, dtype=bool)
    teacher = report[(report["tag"] == STUDIES[tag]) & (report["backbone"] == "resnet18")]
    candidates = {"best part alone": runs[~hybrid],
                  "best hybrid, same budget": runs[hybrid & ~uses_levers],
                  "best hybrid, with levers": runs[hybrid & uses_levers],
                  "the ResNet-18 (teacher)": teacher}
    return [(role, table.nsmallest(1, "valid_mae")) for role, table in candidates.items()]


def lever_effects(raw: pd.DataFrame, tag: str, levers: list[tuple[str, str, str]]
                  ) -> pd.DataFrame:
    """What each lever changed, seed by seed: ``levers`` are (name, variant before, variant
    after) of one backbone; each pair is compared only on the seeds both runs have.

    ``change`` is the mean over those seeds of (after − before) test MAE: negative is better.
    """
    per_seed = records.per_seed(raw, tag)
    rows = []
    for lever, before, after in levers:
        for name in per_seed.index.get_level_values("backbone").unique():
            if (name, before) not in per_seed.index or (name, after) not in per_seed.index:
                continue
            pair = per_seed.loc[[(name, before), (name, after)]].dropna(axis=1)
            if pair.empty:
                continue
            was, now = pair.iloc[0], pair.iloc[1]
            rows.append({"lever": lever, "model": name, "before": was.mean(), "after": now.mean(),
                         "change": (now - was).mean(), "seeds": len(was),
                         **{f"seed {s}": c for s, c in (now - was).items()}})
    return pd.DataFrame(rows)


def seed_noise(per_seed: pd.DataFrame) -> tuple[float, float, int] | None:
    """How far the same run moved with another training seed: the smallest and largest
    range (max − min test MAE) over runs repeated with several seeds, and how many there
    are; None when no run was repeated."""
    repeated = per_seed[per_seed.count(axis=1) > 1]
    if repeated.empty:
        return None
    moved = repeated.max(axis=1) - repeated.min(axis=1)
    return float(moved.min()), float(moved.max()), len(moved)
