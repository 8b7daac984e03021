"""The evaluation protocol (agelib.data.splits) on generated tables, no images."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from agelib.data import splits


def table(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A samples table with a UTKFace-like skewed age distribution."""
    rng = np.random.default_rng(seed)
    ages = np.clip(np.concatenate([rng.integers(1, 5, n // 10),
                                   rng.gamma(6, 5, n - n // 10).astype(int) + 1]), 1, 116)
    sha1 = [hashlib.sha1(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]
    return pd.DataFrame({"sha1": sha1, "age": rng.permutation(ages),
                         "gender": rng.integers(0, 2, n), "race": rng.integers(0, 5, n)})


@pytest.fixture(scope="module")
def samples():
    return table()


def band_shares(samples, split, name):
    ages = samples.set_index("sha1").loc[split.index[split == name], "age"]
    counts = np.bincount(splits.age_strata(ages), minlength=len(splits.STRATA_EDGES) - 1)
    return counts / counts.sum()


# --------------------------------------------------------------------------- make_split
def test_split_covers_every_sample_once_in_the_asked_fractions(samples):
    split = splits.make_split(samples, fractions=(0.6, 0.15, 0.25))
    assert split.index.is_unique and set(split.index) == set(samples["sha1"])
    assert split.value_counts().to_dict() == {"train": 1200, "test": 500, "valid": 300}


def test_split_is_stratified_by_age_band(samples):
    split = splits.make_split(samples)
    train, valid, test = (band_shares(samples, split, n) for n in ("train", "valid", "test"))
    assert np.abs(train - test).max() < 0.01
    assert np.abs(train - valid).max() < 0.02


def test_split_is_deterministic_for_a_seed(samples):
    assert splits.make_split(samples, seed=3).equals(splits.make_split(samples, seed=3))
    assert not splits.make_split(samples, seed=3).equals(splits.make_split(samples, seed=4))


def test_split_does_not_depend_on_row_order(samples):
    shuffled = samples.sample(frac=1, random_state=7).reset_index(drop=True)
    assert splits.make_split(shuffled).equals(splits.make_split(samples))


def test_split_of_a_tiny_table_still_works():
    small = table(30)
    counts = splits.make_split(small).value_counts()
    assert counts["test"] == 6 and counts["valid"] in (3, 4) and counts.sum() == 30


def test_a_lone_old_face_joins_the_band_before_it():
    """A folder of your own: 60 faces aged 20-40 and one of 90. The 90-year-old's band is too
    thin to stratify on its own (sklearn refuses a class of one): it joins the band before."""
    ages = [20, 25, 30, 35, 40] * 12 + [90]
    small = pd.DataFrame({"sha1": [hashlib.sha1(str(i).encode()).hexdigest() for i in range(61)],
                          "age": ages})
    split = splits.make_split(small, 0)
    assert split.notna().all() and len(split) == 61
    assert set(split) == {"train", "valid", "test"}


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.8, 0.0, 0.2), (1.1, -0.1, 0.0)])
def test_split_refuses_bad_fractions(samples, fractions):
    with pytest.raises(ValueError, match="fractions"):
        splits.make_split(samples, fractions=fractions)


def test_split_refuses_the_same_image_twice(samples):
    doubled = pd.concat([samples, samples.iloc[:1]])
    with pytest.raises(ValueError, match="deduplicate"):
        splits.make_split(doubled)


def test_age_strata_bands():
    assert splits.age_strata([0, 2, 3, 17, 18, 80, 81, 116]).tolist() == [0, 0, 1, 3, 4, 15, 16, 16]


# --------------------------------------------------------------------------- save / load
def test_save_and_load_round_trip(samples, tmp_path):
    split = splits.make_split(samples)
    path = splits.save_split(split, tmp_path / "deep" / "split.csv")
    assert path.read_text().splitlines()[0] == "sha1,split"
    loaded = splits.load_split(path)
    assert loaded.index.name == "sha1"
    assert loaded.equals(split)
    assert loaded.name == "split"
    assert [p.name for p in path.parent.iterdir()] == ["split.csv"]  # no partial file left


@pytest.mark.parametrize("text", ["file,split\na,train\n", "sha1\na\n", "sha1,split,x\na,b,c\n"])
def test_load_split_refuses_other_csv_files(tmp_path, text):
    path = tmp_path / "other.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match="not a split file"):
        splits.load_split(path)


# --------------------------------------------------------------------------- folds
def test_folds_cover_every_sample_once_in_balanced_folds(samples):
    folds = splits.make_folds(samples, k=5, seed=0)
    assert folds.index.is_unique and set(folds.index) == set(samples["sha1"])
    sizes = folds.value_counts()
    assert sorted(sizes.index) == [0, 1, 2, 3, 4]
    assert sizes.max() - sizes.min() <= 5


def test_folds_are_stratified_and_reproducible(samples):
    folds = splits.make_folds(samples, k=4, seed=2)
    assert folds.equals(splits.make_folds(samples.iloc[::-1], k=4, seed=2))
    shares = [band_shares(samples, folds.astype(str), str(i)) for i in range(4)]
    assert max(np.abs(s - shares[0]).max() for s in shares) < 0.02


def test_fold_split_uses_the_fold_as_test_and_the_next_as_valid(samples):
    folds = splits.make_folds(samples, k=5)
    for fold in range(5):
        split = splits.fold_split(folds, fold)
        assert (split[folds == fold] == "test").all()
        assert (split[folds == (fold + 1) % 5] == "valid").all()
        assert (split[~folds.isin([fold, (fold + 1) % 5])] == "train").all()
        splits.check_no_leak(samples, split)
    tests = pd.concat([splits.fold_split(folds, f).loc[lambda s: s == "test"] for f in range(5)])
    assert tests.index.is_unique and len(tests) == len(samples)


def test_fold_split_with_a_chosen_valid_fold_and_a_bad_fold(samples):
    folds = splits.make_folds(samples, k=3)
    split = splits.fold_split(folds, 0, valid_fold=2)
    assert set(split[folds == 2]) == {"valid"} and set(split[folds == 1]) == {"train"}
    with pytest.raises(ValueError, match="not in 0..2"):
        splits.fold_split(folds, 3)


# --------------------------------------------------------------------------- check_no_leak
def test_check_no_leak_accepts_a_proper_split(samples):
    splits.check_no_leak(samples, splits.make_split(samples))


def test_check_no_leak_raises_on_an_unassigned_sample(samples):
    split = splits.make_split(samples).iloc[1:]
    with pytest.raises(ValueError, match="1 samples have no split"):
        splits.check_no_leak(samples, split)


def test_check_no_leak_raises_when_an_image_sits_in_two_splits(samples):
    split = splits.make_split(samples)
    first = split.index[0]
    other = "test" if split.iloc[0] != "test" else "train"
    leaky = pd.concat([split, pd.Series([other], index=[first])])
    with pytest.raises(ValueError, match="1 images sit in more than one split"):
        splits.check_no_leak(samples, leaky)


def test_check_no_leak_raises_on_copies_of_an_image_in_two_splits():
    files = pd.DataFrame({"sha1": ["x", "x", "y"], "file": ["a", "b", "c"]})
    split = pd.Series(["train", "test", "valid"], index=["x", "x", "y"])
    with pytest.raises(ValueError, match="more than one split"):
        splits.check_no_leak(files, split)


# --------------------------------------------------------------------------- subsample
def test_subsample_is_a_stratified_subset_of_the_asked_size(samples):
    sub = splits.subsample(samples, 300, seed=0)
    assert len(sub) == 300 and sub.index.is_unique
    assert set(sub.index) <= set(samples.index)
    assert sub.equals(samples.loc[sub.index])
    assert sub.index.is_monotonic_increasing  # original order kept
    full = np.bincount(splits.age_strata(samples.age), minlength=17) / len(samples)
    part = np.bincount(splits.age_strata(sub.age), minlength=17) / len(sub)
    assert np.abs(full - part).max() < 0.02


def test_subsample_is_reproducible_and_changes_with_the_seed(samples):
    assert splits.subsample(samples, 100, seed=1).equals(splits.subsample(samples, 100, seed=1))
    assert not splits.subsample(samples, 100, seed=1).equals(splits.subsample(samples, 100, seed=2))


def test_subsample_keeps_everything_when_n_is_none_or_large(samples):
    assert splits.subsample(samples, None) is samples
    assert splits.subsample(samples, len(samples) + 5) is samples


def test_subsample_of_fewer_rows_than_bands_falls_back_to_a_draw(samples):
    sub = splits.subsample(samples, 3, seed=0)
    assert len(sub) == 3 and set(sub.index) <= set(samples.index)


def faces_aged_20_on(n: int) -> pd.DataFrame:
    return pd.DataFrame({"sha1": [f"{i:040x}" for i in range(n)], "age": range(20, 20 + n)})


@pytest.mark.parametrize("n", [1, 5, 9])
def test_too_few_images_for_a_split_say_so(n):
    with pytest.raises(ValueError, match=f"only {n} distinct image.*2 or more in each"):
        splits.make_split(faces_aged_20_on(n))


@pytest.mark.parametrize("n", [10, 11, 16, 37])
def test_split_sizes_are_the_ones_made(n):
    made = splits.make_split(faces_aged_20_on(n)).value_counts()
    assert tuple(made[k] for k in ("train", "valid", "test")) == splits.split_sizes(n)
    assert made.min() >= splits.MIN_PER_SPLIT


@pytest.mark.parametrize("n", [32, 57, 120, 399])
def test_a_split_with_a_small_part_has_room_for_every_age_band(n):
    split = splits.make_split(table(n, seed=n), fractions=(0.9, 0.05, 0.05))
    assert (split == "test").sum() >= 2 and (split == "valid").sum() >= 1


def test_a_split_that_lists_an_image_twice_still_splits(samples):
    from agelib import settings
    from agelib.data import loaders

    split = splits.make_split(samples, seed=0)
    twice = pd.concat([split, split.iloc[:3]])  # the same assignment, listed twice
    parts = loaders.split_tables(samples, twice, settings.FULL)
    assert sum(len(p) for p in (parts.train, parts.valid, parts.test)) == len(samples)


def test_the_test_set_itself_changes_with_the_seed(samples):
    """Catches a split whose test part ignores the seed (only valid would move)."""
    first, second = (splits.make_split(samples, seed=seed) for seed in (0, 1))
    assert set(first.index[first == "test"]) != set(second.index[second == "test"])


def test_folds_change_with_the_seed(samples):
    """Catches k-fold assignments that ignore the seed (repeats would be one run)."""
    folds = [splits.make_folds(samples, k=5, seed=seed) for seed in (0, 1)]
    assert not folds[0].equals(folds[1])


def test_the_fallback_draw_of_a_tiny_subsample_is_reproducible(samples):
    """Catches an unseeded fallback draw: smoke subsets of tiny data must not change per run."""
    first = splits.subsample(samples, 3, seed=5)
    assert all(splits.subsample(samples, 3, seed=5).equals(first) for _ in range(5))


def test_split_tables_refuse_a_split_that_leaks_or_leaves_faces_out(samples):
    """Catches split_tables silently using a split that puts one face in train and test, or
    that misses faces (a stale or hand-made split file)."""
    from agelib import settings
    from agelib.data import loaders

    split = splits.make_split(samples, seed=0)
    first = split.index[0]
    leaky = pd.concat([split, pd.Series(["test" if split.iloc[0] != "test" else "train"],
                                        index=[first])])
    with pytest.raises(ValueError, match="more than one split"):
        loaders.split_tables(samples, leaky, settings.FULL)
    with pytest.raises(ValueError, match="have no split"):
        loaders.split_tables(samples, split.iloc[1:], settings.FULL)


# --------------------------------------------------------------------------- Faces.split
def test_faces_split_is_saved_in_the_data_home_and_reloaded_not_redrawn(samples, home):
    """Chapter 01's promise: the standard split is saved under ``<data home>/splits/`` and
    later runs reload it. Catches a split drawn afresh each time (a changed sklearn or seed
    handling would then move faces between splits silently) or saved somewhere else."""
    from agelib.data import sources, utkface

    faces = sources.Faces("mine", True, samples, utkface.DataReport("mine"))
    split = faces.split(seed=0)
    saved = list((home / "splits").glob("*.csv"))
    assert len(saved) == 1 and splits.load_split(saved[0]).equals(split)
    edited = split.where(split != "valid", "train")  # not what make_split draws
    splits.save_split(edited, saved[0])
    assert faces.split(seed=0).equals(edited)  # read back from the file, not drawn again
    assert not faces.split(seed=1).equals(edited)  # another seed, another file
    assert len(list((home / "splits").glob("*.csv"))) == 2


@pytest.mark.parametrize("damage", ["", "<html>"])
def test_a_damaged_saved_split_is_drawn_again_not_fatal(samples, home, damage):
    """Catches a split file emptied by a crash mid-write (or overwritten) failing every later
    run: the split is drawn again, identical for the same seed, and saved over it."""
    from agelib.data import sources, utkface

    faces = sources.Faces("mine", True, samples, utkface.DataReport("mine"))
    split = faces.split(seed=0)
    (saved,) = (home / "splits").glob("*.csv")
    saved.write_text(damage)
    with pytest.warns(UserWarning, match="could not be read"):
        assert faces.split(seed=0).equals(split)
    assert splits.load_split(saved).equals(split)
