"""The real UTKFace folder (AGELIB_DATA): the report and the standard split.

Skipped when AGELIB_DATA is unset. The folder is scanned once per module (about 8 s);
images are read in place, never copied.
"""

import hashlib
import os
from collections import defaultdict

import numpy as np
import pytest
from conftest import REAL_IRREGULAR

from agelib.data import splits, utkface

#: Files in the course's shared copy (10% of UTKFace held back) and in the full download.
KNOWN_SIZES = {21_376: "the course's shared copy", 23_708: "the full UTKFace download"}


@pytest.fixture(scope="module")
def real(real_folder):
    files, report = utkface.scan_folder(real_folder)
    samples = utkface.deduplicate(files, report)
    return files, report, samples


@pytest.fixture(scope="module")
def real_split(real):
    return splits.make_split(real[2], seed=0)


def test_every_real_file_is_read_or_skipped_with_a_reason(real, real_folder):
    files, report, _ = real
    visible = [e for e in os.listdir(real_folder) if not e.startswith(".")]
    assert report.n_files == len(visible) == len(files) + len(report.skipped)
    assert report.n_files in KNOWN_SIZES
    assert all(s["reason"] for s in report.skipped)
    if report.n_files == 21_376:
        assert report.skipped == []


def test_the_irregular_real_names_are_reported(real):
    files, report, _ = real
    notes = {r["file"]: r["note"] for r in report.irregular_names}
    for name, (*_, note) in REAL_IRREGULAR.items():
        assert notes[name] == note
    if report.n_files == 21_376:
        assert len(notes) == 6
    assert set(files.loc[files.irregular != "", "file"]) == set(notes)


def test_real_counts_add_up(real):
    files, report, samples = real
    assert report.n_readable == len(files)
    assert report.n_images == report.n_readable - report.n_duplicate_files
    assert report.n_used == len(samples) == report.n_images - report.n_age_conflicts
    assert report.n_duplicate_groups > 0 and report.n_age_conflicts > 0
    assert samples["sha1"].is_unique


def test_real_ages_are_within_the_utkface_range(real):
    files, report, samples = real
    assert files["age"].between(1, 116).all()
    assert (report.age_min, report.age_max) == (samples.age.min(), samples.age.max())
    assert 25 <= report.age_median <= 35


def test_real_age_conflicts_match_an_independent_hash_check(real, real_folder):
    files, report, samples = real
    by_hash = defaultdict(list)
    for name in files["file"]:
        by_hash[hashlib.sha1((real_folder / name).read_bytes()).hexdigest()].append(name)
    ages = {sha1: {int(n.split("_")[0]) for n in names} for sha1, names in by_hash.items()}
    expected = {frozenset(by_hash[s]) for s, a in ages.items() if len(a) > 1}
    groups = utkface.duplicate_groups(files)
    assert {frozenset(g) for g in groups.loc[groups.age_conflict, "files"]} == expected
    assert report.n_age_conflicts == len(expected)
    assert report.n_duplicate_groups == sum(len(n) > 1 for n in by_hash.values())
    used = set("|".join(samples["files"]).split("|"))
    assert not used & set().union(*expected)
    assert report.n_attribute_conflicts == int(
        (groups.attribute_conflict & ~groups.age_conflict).sum())


# --------------------------------------------------------------------------- the standard split
def test_real_split_fractions_are_70_10_20(real, real_split):
    shares = real_split.value_counts(normalize=True)
    assert shares.to_dict() == pytest.approx({"train": 0.7, "valid": 0.1, "test": 0.2}, abs=0.002)
    assert set(real_split.index) == set(real[2]["sha1"])


def test_real_split_puts_each_image_in_one_split(real, real_split):
    assert real_split.index.is_unique
    splits.check_no_leak(real[2], real_split)


def test_real_split_is_stratified_by_age(real, real_split):
    samples = real[2].set_index("sha1")
    bands = splits.age_strata(samples["age"])
    n_bands = len(splits.STRATA_EDGES) - 1
    shares = {}
    for name in ("train", "test"):
        mask = (real_split[samples.index] == name).to_numpy()
        shares[name] = np.bincount(bands[mask], minlength=n_bands) / mask.sum()
    assert np.abs(shares["train"] - shares["test"]).max() < 0.01


def test_real_split_is_reproducible_and_ignores_row_order(real, real_split):
    samples = real[2]
    again = splits.make_split(samples, seed=0)
    shuffled = splits.make_split(samples.sample(frac=1, random_state=1), seed=0)
    assert again.equals(real_split)
    assert shuffled.equals(real_split)


def test_real_split_changes_with_the_seed(real, real_split):
    other = splits.make_split(real[2], seed=1)
    assert (other != real_split[other.index]).mean() > 0.2
