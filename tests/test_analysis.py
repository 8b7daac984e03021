"""Error and fairness analysis (agelib.analysis) and the off-the-shelf baseline (agelib.baselines)."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from matplotlib import cbook
from PIL import Image

from conftest import tiny_mode

from agelib import analysis, baselines, data, metrics, records
from agelib.data import loaders

MODE = tiny_mode()


def fake_run(faces, test: pd.DataFrame, pred, mode="smoke", **fields) -> dict:
    """A record with per-face predictions, as a training run would save it."""
    true = test["age"].to_numpy(dtype=np.float32)
    record = {"id": "run", "tag": "t", "variant": "", "backbone": "m", "head": "regression",
              "loss": "l1", "data": faces.name, "data_fingerprint": faces.fingerprint,
              "mode": mode, "date": "2026-01-01T00:00:00", "seed": 0,
              "test_mae": metrics.mae(pred, true), **fields}
    records.save_record(record, predictions=records.predictions_table(test["sha1"], true, pred))
    return record


def test_predictions_join_the_labels_of_each_test_face(synthetic_faces, results):
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    fake_run(synthetic_faces, test, test["age"] + 3.0, variant="plus three")
    found = analysis.model_predictions(records.load_records(), synthetic_faces, "smoke")
    assert list(found) == ["t m (plus three)"]
    p = found["t m (plus three)"]
    assert len(p) == len(test)
    assert set(p["gender"]) <= {"male", "female", "unknown"}
    assert set(p["race"]) <= {"White", "Black", "Asian", "Indian", "Others", "unknown"}
    np.testing.assert_allclose(p["error"], 3.0, atol=0.01)
    assert p["age band"].cat.ordered
    # a face's band is its true age's, never the prediction's (3 years off, here)
    assert (p["age band"].astype(str) == metrics.age_band(p["age"])).all()


def test_runs_on_other_data_other_modes_or_without_predictions_are_left_out(synthetic_faces,
                                                                            results):
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    fake_run(synthetic_faces, test, test["age"], variant="kept")
    fake_run(synthetic_faces, test, test["age"], variant="full run", mode="full")
    fake_run(synthetic_faces, test, test["age"], variant="other data", data_fingerprint="0" * 12)
    records.save_record({"id": "old", "tag": "t", "variant": "old", "backbone": "m",
                         "head": "regression", "loss": "l1", "mode": "smoke", "test_mae": 5.0,
                         "data_fingerprint": synthetic_faces.fingerprint, "date": "2025"})
    found = analysis.model_predictions(records.load_records(), synthetic_faces, "smoke")
    assert list(found) == ["t m (kept)"]
    assert analysis.model_predictions(pd.DataFrame(), synthetic_faces, "smoke") == {}


def test_a_later_smoke_run_never_hides_the_full_run_of_the_same_model(synthetic_faces, results):
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    fake_run(synthetic_faces, test, test["age"] + 1, variant="same", mode="full", id="full")
    fake_run(synthetic_faces, test, test["age"] + 9, variant="same", id="smoke", date="2099")
    table = records.load_records()
    full = analysis.model_predictions(table, synthetic_faces, "full")["t m (same)"]
    np.testing.assert_allclose(full["error"], 1.0, atol=0.01)
    with pytest.raises(TypeError):  # no mode, no mixing
        analysis.model_predictions(table, synthetic_faces)


def test_a_mode_that_no_record_can_have_is_an_error(synthetic_faces, results):
    """Catches a RunMode (what baselines takes) or a typo passed as the mode: it matched no
    record, so every table was silently empty."""
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    fake_run(synthetic_faces, test, test["age"] + 1, variant="kept")
    table = records.load_records()
    for wrong in (MODE, "Smoke", "tiny"):
        with pytest.raises(ValueError, match=r"mode must be one of .*mode\.name"):
            analysis.model_predictions(table, synthetic_faces, wrong)
        with pytest.raises(ValueError, match="mode must be one of"):
            analysis.best_trained(table, synthetic_faces, wrong)
    assert list(analysis.model_predictions(table, synthetic_faces, MODE.name)) == ["t m (kept)"]


def test_seeds_and_pretrained_runs_keep_their_own_predictions(synthetic_faces, results):
    """Runs that differ only in seed or weights are different runs: none hides another."""
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    for seed in (0, 1, 2):
        fake_run(synthetic_faces, test, test["age"] + seed, variant="base", seed=seed, id=f"s{seed}")
    fake_run(synthetic_faces, test, test["age"], pretrained=True, n_train=10, id="imagenet")
    fake_run(synthetic_faces, test, test["age"], id="scratch")
    found = analysis.model_predictions(records.load_records(), synthetic_faces, "smoke")
    assert set(found) == {"t m (base)", "t m (base) · seed 1", "t m (base) · seed 2",
                          "t m · regression · l1 · pretrained", "t m · regression · l1"}
    np.testing.assert_allclose(found["t m (base) · seed 2"]["error"], 2.0, atol=0.01)


def test_runs_of_one_backbone_built_with_other_settings_keep_their_own_predictions(
        synthetic_faces, results):
    """A 2-block ViT is not the ViT-Tiny its backbone name says: both stay, named as README
    names them (the later run used to replace the other)."""
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    small = {"model": {"backbone_args": {"depth": 2, "embed_dim": 80}}}
    fake_run(synthetic_faces, test, test["age"] + 1, variant="part", id="tiny")
    fake_run(synthetic_faces, test, test["age"] + 4, variant="part", id="small", config=small,
             date="2099")
    found = analysis.model_predictions(records.load_records(), synthetic_faces, "smoke")
    assert set(found) == {"t m (part)", "t m [depth=2, embed_dim=80] (part)"}
    np.testing.assert_allclose(found["t m (part)"]["error"], 1.0, atol=0.01)


def test_the_best_model_is_chosen_on_validation_among_models_trained_here(synthetic_faces,
                                                                         results):
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    fake_run(synthetic_faces, test, test["age"] + 4, variant="best on test", valid_mae=6.0,
             n_train=64, id="a")
    fake_run(synthetic_faces, test, test["age"] + 5, variant="best on valid", valid_mae=5.0,
             n_train=64, id="b")
    fake_run(synthetic_faces, test, test["age"], variant="off-the-shelf", valid_mae=None,
             n_train=0, pretrained=True, id="c")
    table = records.load_records()
    assert analysis.best_trained(table, synthetic_faces, "smoke") == "t m (best on valid)"
    assert analysis.best_trained(table, synthetic_faces, "full") is None


def test_group_tables_and_summary_agree_with_the_metrics(synthetic_faces, results):
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    rng = np.random.default_rng(0)
    fake_run(synthetic_faces, test, test["age"] + rng.normal(0, 5, len(test)), variant="a")
    fake_run(synthetic_faces, test, test["age"] * 0.5 + 15, variant="b")
    preds = analysis.model_predictions(records.load_records(), synthetic_faces, "smoke")
    by_race = analysis.group_table(preds, "race")
    assert list(by_race.columns)[0] == "faces" and set(by_race.columns[1:]) == {"t m (a)", "t m (b)"}
    assert by_race["faces"].sum() == len(test)
    p = preds["t m (a)"]
    white = p[p["race"] == "White"]
    if len(white):
        assert by_race.loc["White", "t m (a)"] == pytest.approx(metrics.mae(white["pred"], white["age"]))
    s = analysis.summary(preds)
    assert s.loc["t m (a)", "MAE"] == pytest.approx(metrics.mae(p["pred"], p["age"]))
    assert s.loc["t m (b)", "slope"] == pytest.approx(0.5, abs=0.01)  # hedges towards the middle
    assert s["MAE"].is_monotonic_increasing


def test_regression_to_the_mean_of_a_perfect_and_a_hedging_model():
    true = np.arange(1, 90, dtype=float)
    assert analysis.regression_to_mean(true, true)[0] == pytest.approx(1.0)
    slope, intercept = analysis.regression_to_mean(0.6 * true + 14, true)
    assert (slope, intercept) == pytest.approx((0.6, 14))


def test_worst_errors_come_largest_first():
    p = pd.DataFrame({"error": [1.0, 9.0, 4.0, 7.0]})
    assert analysis.worst_errors(p, 3)["error"].tolist() == [9.0, 7.0, 4.0]


def test_label_conflicts_are_the_images_whose_names_disagree_on_age(quirky_folder, home):
    faces = data.load_faces(quirky_folder, verbose=False)
    conflicts = analysis.label_conflicts(faces)
    assert len(conflicts) == 1
    assert sorted(conflicts.loc[0, "ages"]) == [40, 45]
    assert conflicts.loc[0, "age_spread"] == 5
    assert conflicts.loc[0, "sha1"] not in set(faces.samples["sha1"])  # left out of the data


# --------------------------------------------------------------------------- the dlib baseline
needs_dlib = pytest.mark.skipif(not baselines.available(), reason=baselines.INSTALL)


@needs_dlib
def test_dlib_ages_are_plausible_for_a_shipped_portrait():
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        (age,) = baselines.dlib_ages([im.copy()])
    assert 20 <= age <= 80  # Grace Hopper in uniform, photographed in her late 70s


@needs_dlib
def test_dlib_is_close_on_real_faces(real_folder):
    names = sorted(p.name for p in real_folder.glob("*_0_0_*.jpg.chip.jpg"))
    picked = [n for n in names if n.split("_")[0] in {"25", "26", "27", "28"}][:6]
    ages = baselines.dlib_ages([Image.open(real_folder / n) for n in picked])
    labels = np.array([int(n.split("_")[0]) for n in picked])
    assert np.median(np.abs(ages - labels)) < 10


@needs_dlib
def test_the_baseline_is_recorded_like_any_run(synthetic_faces, results):
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test.head(8)
    record = baselines.evaluate_dlib(synthetic_faces, test, MODE, tag="t")
    assert record["pretrained"] is True and record["epochs"] == 0
    assert record["n_test"] == 8 and record["mode"] == "smoke"
    first = synthetic_faces.open_image(test["sha1"].iloc[0])
    assert record["image_size"] == max(first.size)  # what it read, not a training size
    table = records.load_records()
    assert len(table) == 1
    preds = records.load_predictions(table.iloc[0])
    assert len(preds) == 8 and preds["pred"].between(0, 80).all()
    assert record["test_mae"] == pytest.approx(metrics.mae(preds["pred"], preds["age"]), abs=0.01)


def test_a_recorded_baseline_is_found_only_for_the_same_test_faces(synthetic_faces, results):
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    assert baselines.recorded_dlib(test, MODE) is None  # nothing recorded yet
    fake_run(synthetic_faces, test.head(6), test.head(6)["age"] + 1.0, backbone=baselines.BACKBONE,
             n_test=6, date="2026-01-01T00:00:00")
    fake_run(synthetic_faces, test.head(6), test.head(6)["age"] + 2.0, backbone=baselines.BACKBONE,
             n_test=6, date="2026-01-02T00:00:00")
    found = baselines.recorded_dlib(test.head(6), MODE)
    assert found is not None and found["date"] == "2026-01-02T00:00:00"  # the latest one
    other = test.iloc[6:12]  # as many faces, but other ones: not this split's baseline
    assert baselines.recorded_dlib(other, MODE) is None
    assert baselines.recorded_dlib(test.head(6), replace(MODE, name="full")) is None


def test_old_age_table_splits_the_error_at_sixty():
    p = pd.DataFrame({"age": [20.0, 40.0, 70.0, 80.0], "pred": [22.0, 40.0, 60.0, 60.0]})
    t = analysis.old_age_table({"m": p})
    assert t.loc["m", "MAE, all"] == pytest.approx(8.0)
    assert t.loc["m", "MAE, 60+"] == pytest.approx(15.0)
    assert t.loc["m", "faces 60+"] == 2 and t.loc["m", "faces"] == 4
    assert t.loc["m", "slope"] < 1  # the old are pulled towards the middle
    young = analysis.old_age_table({"m": p[p["age"] < 60]})
    assert np.isnan(young.loc["m", "MAE, 60+"])


def test_the_summary_of_saved_predictions_agrees_with_the_record(synthetic_faces, results):
    """Chapter 10 recomputes each run's MAE from its saved per-face predictions: stored to
    a hundredth of a year, a run could show 0.01 off the MAE its record and chapter give."""
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    rng = np.random.default_rng(0)
    pred = test["age"].to_numpy(dtype=np.float32) + rng.uniform(-9, 9, len(test)).astype(np.float32)
    record = fake_run(synthetic_faces, test, pred, variant="noisy")
    found = analysis.model_predictions(records.load_records(), synthetic_faces, "smoke")
    mae = float(analysis.summary(found).loc["t m (noisy)", "MAE"])
    assert abs(mae - record["test_mae"]) < 2e-4


def test_old_age_table_counts_a_face_of_exactly_the_threshold_age():
    p = pd.DataFrame({"age": [30.0, 59.0, 60.0, 75.0], "pred": [30.0, 59.0, 50.0, 65.0]})
    row = analysis.old_age_table({"m": p}, from_age=60).iloc[0]
    assert row["faces 60+"] == 2 and row["MAE, 60+"] == 10.0


def test_the_leak_table_scores_each_model_with_and_without_the_leaked_faces():
    from agelib import analysis

    p = pd.DataFrame({"full_sha1": ["a", "b", "c", "d"], "error": [1.0, 2.0, 3.0, 6.0]})
    table = analysis.leak_table({"m": p}, leaked={"a", "b"})
    row = table.loc["m"]
    assert (row["faces"], row["leaked"]) == (4, 2)
    assert (row["MAE"], row["MAE without them"], row["MAE on them"]) == (3.0, 4.5, 1.5)
    assert row["change"] == -1.5  # the leak flattered the MAE by 1.5 years


def test_no_runs_yet_give_empty_tables_not_errors():
    assert analysis.summary({}).empty and "MAE" in analysis.summary({}).columns
    assert analysis.leak_table({}, set()).empty and analysis.old_age_table({}).empty


# --------------------------------------------------------------------------- the dlib baseline's scores
def test_the_baseline_is_scored_against_each_faces_own_age(synthetic_faces, results, monkeypatch):
    """Catches CS@5 computed with another k, age and pred swapped in the saved
    predictions and true ages out of line with the predictions. dlib is replaced by
    a predictor whose errors are known, so no package is needed and the numbers are exact."""
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0),
                                tiny_mode()).test.head(8)
    ages = test["age"].to_numpy(dtype=np.float32)
    errors = np.array([-3, 0, 2, 4, 5, 6, -8, 10], dtype=np.float32)

    def known_predictor(images):
        n = sum(1 for _ in images)  # opens every face, as the real predictor does
        return ages[:n] + errors[:n]

    monkeypatch.setattr(baselines, "dlib_ages", known_predictor)
    monkeypatch.setattr(baselines.metadata, "version", lambda name: "0.0")
    record = baselines.evaluate_dlib(synthetic_faces, test, tiny_mode(), tag="t")
    assert record["test_mae"] == pytest.approx(38 / 8)  # mean |error|
    assert record["test_cs5"] == pytest.approx(5 / 8)  # |error| <= 5: -3, 0, 2, 4, 5
    preds = records.load_predictions(record)
    assert list(preds["sha1"]) == [str(s)[:records.SHA1_CHARS] for s in test["sha1"]]
    np.testing.assert_allclose(preds["age"], ages)
    np.testing.assert_allclose(preds["pred"], ages + errors, atol=1e-3)


def test_no_recorded_dlib_run_among_records_that_lack_a_face_count(tmp_path):
    """Older or hand-written records have no ``n_test``: chapter 10 then measures dlib
    itself instead of failing with a KeyError."""
    records.save_record({"id": "run", "tag": "t", "backbone": "m", "mode": "smoke",
                         "test_mae": 5.0, "date": "2026-01-01"}, tmp_path)
    test = pd.DataFrame({"sha1": ["a" * 40], "age": [30.0]})
    assert baselines.recorded_dlib(test, tiny_mode(), folder=tmp_path) is None


def _predictions(ages, preds, **labels) -> pd.DataFrame:
    """A per-face table as model_predictions gives it, from ages, predictions and labels."""
    p = pd.DataFrame({"sha1": [f"{i:08x}" for i in range(len(ages))], "age": ages,
                      "pred": preds, **labels})
    p["age band"] = pd.Categorical(metrics.age_band(p["age"]), categories=metrics.band_labels(),
                                   ordered=True)
    return p.assign(error=(p["pred"] - p["age"]).abs())


def test_the_worst_group_skips_unlabelled_faces_and_groups_too_small_to_rank():
    """Catches a "worst race" that is 7 faces without a race label, or 3 faces of "Others"."""
    race = ["White"] * 40 + ["Black"] * 40 + ["unknown"] * 7 + ["Others"] * 3
    errors = [2.0] * 40 + [3.0] * 40 + [20.0] * 7 + [15.0] * 3
    ages = [20, 40] * 45
    p = _predictions(ages, [a + e for a, e in zip(ages, errors)], race=race, gender=["male"] * 90)
    assert analysis.worst_group(p, "race") == pytest.approx(3.0)
    assert analysis.worst_group(p, "race", min_faces=3) == pytest.approx(15.0)  # Others, not unknown
    assert np.isnan(analysis.worst_group(p, "race", min_faces=41))
    s = analysis.summary({"m": p})
    assert s.loc["m", "worst race"] == pytest.approx(3.0)
    assert s.loc["m", "worst gender"] == pytest.approx(p["error"].mean())


def test_group_errors_standardise_the_age_mix_and_bracket_the_mae():
    """Catches a fairness table that blames a group for holding more old faces."""
    # the model errs by 2 years at 25 and by 10 at 75, for both groups; B has more old faces
    ages = [25] * 60 + [75] * 20 + [25] * 20 + [75] * 60
    errors = [2.0 if a == 25 else 10.0 for a in ages]
    p = _predictions(ages, [a + e for a, e in zip(ages, errors)], race=["A"] * 80 + ["B"] * 80)
    t = analysis.group_errors(p, "race")
    assert t.loc["A", "MAE"] == pytest.approx(4.0) and t.loc["B", "MAE"] == pytest.approx(8.0)
    # the whole table's mix is half 25s, half 75s: both groups standardise to (2 + 10) / 2
    assert t["age-standardised MAE"].tolist() == pytest.approx([6.0, 6.0])
    assert (t["age mix covered"] == 1.0).all() and t["faces"].tolist() == [80, 80]
    assert (t["MAE low"] < t["MAE"]).all() and (t["MAE"] < t["MAE high"]).all()
    assert (t["standardised low"] <= 6.0).all() and (t["standardised high"] >= 6.0).all()
    # the interval is a bootstrap of the group's own faces: about ±1.96 standard errors
    half = (t.loc["A", "MAE high"] - t.loc["A", "MAE low"]) / 2
    se = np.std(np.array(errors[:80]), ddof=1) / np.sqrt(80)
    assert half == pytest.approx(1.96 * se, rel=0.15)


def test_group_errors_say_how_much_of_the_age_mix_a_group_covers():
    """Catches a standardised MAE that silently averages over bands the group has no face in."""
    p = _predictions([25, 25, 75, 75], [27, 27, 85, 85], race=["A", "A", "A", "B"])
    t = analysis.group_errors(p, "race", n_boot=50)
    assert t.loc["A", "age mix covered"] == 1.0 and t.loc["B", "age mix covered"] == 0.5
    assert t.loc["B", "age-standardised MAE"] == pytest.approx(10.0)
    assert t.loc["A", "age-standardised MAE"] == pytest.approx((2 + 10) / 2)


def test_distinct_runs_keep_the_first_name_of_identical_predictions():
    """Catches the same command's two records counted as two models."""
    a = _predictions([20, 30], [21, 33])
    b = a.sample(frac=1, random_state=0)  # the same predictions, in another order
    c = _predictions([20, 30], [21, 34])
    assert list(analysis.distinct_runs({"x": a, "y": b, "z": c})) == ["x", "z"]


def test_a_rerun_of_a_model_replaces_its_earlier_predictions(synthetic_faces, results):
    """Catches tables that show the first, superseded run of a model instead of its re-run."""
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    fake_run(synthetic_faces, test, test["age"] + 2, variant="same", id="a-rerun", date="2099")
    fake_run(synthetic_faces, test, test["age"] + 7, variant="same", id="b-first", date="2026")
    found = analysis.model_predictions(records.load_records(), synthetic_faces, "smoke")
    assert list(found) == ["t m (same)"]
    np.testing.assert_allclose(found["t m (same)"]["error"], 2.0, atol=0.01)  # the 2099 run


def test_age_mix_covered_is_a_share_of_faces_not_of_bands():
    """Catches "age mix covered" counted as the share of bands instead of the share of faces."""
    # bands 20-29 (6 faces) and 70-79 (2 faces); B has faces only in the rarer band
    p = _predictions([25] * 6 + [75] * 2, [27] * 6 + [85] * 2, race=["A"] * 6 + ["B"] * 2)
    t = analysis.group_errors(p, "race", n_boot=50)
    assert t.loc["A", "age mix covered"] == pytest.approx(0.75)
    assert t.loc["B", "age mix covered"] == pytest.approx(0.25)


def test_a_resample_that_misses_a_band_is_not_scored_as_zero_error_there():
    """Catches a bootstrap that counts a band absent from a resample as 0 years of error."""
    # A's one old face errs by 10, its 19 young ones by 2; about a third of resamples miss it
    ages = [25] * 19 + [75] + [75] * 19
    p = _predictions(ages, [a + (2 if a == 25 else 10) for a in ages],
                     race=["A"] * 20 + ["B"] * 19)
    t = analysis.group_errors(p, "race", n_boot=200)
    # every resample's standardised MAE averages A's band MAEs: never below its smallest error
    assert t.loc["A", "standardised low"] >= 2.0 - 1e-9
    assert t.loc["A", "standardised high"] <= 10.0 + 1e-9


def test_each_faces_error_is_absolute_for_under_and_over_estimates(synthetic_faces, results):
    """Catches a signed error column (pred - age without abs): under-estimates would cancel
    over-estimates in the leak and fairness tables and never reach the worst-errors gallery."""
    test = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), MODE).test
    offsets = np.where(np.arange(len(test)) % 2 == 0, -3.0, 3.0)  # half too young, half too old
    fake_run(synthetic_faces, test, test["age"] + offsets, variant="both ways")
    found = analysis.model_predictions(records.load_records(), synthetic_faces, "smoke")
    p = found["t m (both ways)"]
    np.testing.assert_allclose(p["error"], 3.0, atol=0.01)
    assert analysis.leak_table({"m": p}, set()).loc["m", "MAE"] == pytest.approx(3.0, abs=0.01)


def test_the_summary_names_the_worst_age_band_and_scores_cs_at_its_own_k():
    """Catches a summary whose "worst age band" is another grouping's worst, or whose CS@k
    column is scored at k = 5 whatever k it is named after."""
    ages = [25] * 40 + [75] * 40  # off by 2 years at 25, by 4 at 75; one race, one gender
    p = _predictions(ages, [a + (2 if a == 25 else 4) for a in ages], race=["White"] * 80,
                     gender=["male"] * 80)
    s = analysis.summary({"m": p}, k=3)
    assert s.loc["m", "worst age band"] == pytest.approx(4.0)  # 70-79, not the overall 3
    assert s.loc["m", "worst race"] == s.loc["m", "worst gender"] == pytest.approx(3.0)
    assert s.loc["m", "CS@3"] == pytest.approx(0.5)  # at k = 5 every face would count


def test_group_table_hand_values_at_its_own_k():
    """Catches a group table that scores CS@k at the default k = 5, or miscounts its faces."""
    ages = [25, 25, 25, 75]
    p = _predictions(ages, [27, 29, 25, 72], race=["A", "A", "B", "B"])  # errors 2, 4, 0, 3
    t = analysis.group_table({"m": p, "n": p.assign(pred=p["age"])}, "race", value="CS@3", k=3)
    assert t["faces"].tolist() == [2, 2]
    assert t["m"].tolist() == [0.5, 1.0] and t["n"].tolist() == [1.0, 1.0]
    assert analysis.group_table({"m": p}, "race")["m"].tolist() == [3.0, 1.5]
