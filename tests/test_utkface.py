"""File names, folder checks and duplicates (agelib.data.utkface) on generated folders."""

import os

import pandas as pd
import pytest
from conftest import (AGE_CONFLICT, ATTR_CONFLICT, BAD, COPY_SAME, GOOD, IRREGULAR, ODD_MODES,
                      REAL_IRREGULAR)

from agelib.data import utkface
from agelib.data.utkface import parse_name


# --------------------------------------------------------------------------- parse_name
def test_parse_name_reads_a_regular_name():
    labels = parse_name("26_1_2_20170116184028385.jpg.chip.jpg")
    assert (labels.age, labels.gender, labels.race) == (26, 1, 2)
    assert labels.timestamp == "20170116184028385"
    assert labels.irregular == ""


@pytest.mark.parametrize("name", sorted(REAL_IRREGULAR))
def test_parse_name_keeps_labels_of_irregular_real_names(name):
    age, gender, race, note = REAL_IRREGULAR[name]
    labels = parse_name(name)
    assert (labels.age, labels.gender, labels.race) == (age, gender, race)
    assert labels.irregular == note


def test_parse_name_strips_the_stray_space_from_the_timestamp():
    assert parse_name("24_0_1_20170116220224657 .jpg.chip.jpg").timestamp == "20170116220224657"


def test_parse_name_notes_missing_race_and_timestamp():
    labels = parse_name("7_0.jpg")
    assert (labels.age, labels.gender, labels.race, labels.timestamp) == (7, 0, None, None)
    assert labels.irregular == "race and timestamp missing"


def test_parse_name_keeps_the_oldest_age_and_refuses_one_above_it():
    assert parse_name("116_0_0_20170120134725990.jpg.chip.jpg").age == 116  # real files
    with pytest.raises(ValueError, match="above 116"):
        parse_name("117_0_0_20170120134725990.jpg.chip.jpg")


def test_parse_name_reads_a_short_third_field_as_the_race():
    # "45_1_3.jpg", as a learner names photos of their own: 3 is a race, not a date and time
    labels = parse_name("45_1_3.jpg")
    assert (labels.age, labels.gender, labels.race, labels.timestamp) == (45, 1, 3, None)
    assert labels.irregular == "timestamp missing"
    # UTKFace's own three-field names keep their date and time
    assert parse_name("39_1_20170116174525125.jpg.chip.jpg").race is None


@pytest.mark.parametrize("name, why", [
    ("photo.jpg", "found 1 field(s)"),
    ("1_0_0_2017_extra.jpg", "found 5 field(s)"),
    ("x_0_0_20170116174525125.jpg.chip.jpg", "age 'x' is not a whole number"),
    ("-3_0_0_20170116174525125.jpg.chip.jpg", "age '-3' is not a whole number"),
    ("2\u00b2_0_0_20170116174525125.jpg.chip.jpg", "age '2\u00b2' is not a whole number"),
    ("130_0_0_20170101000000000.jpg.chip.jpg", "age 130 is above 116"),
    ("30_2_0_20170116174525125.jpg.chip.jpg", "gender '2' is not 0 (male) or 1 (female)"),
    ("30_0_7_20170116174525125.jpg.chip.jpg", "race '7' is not one of 0-4"),
])
def test_parse_name_says_what_is_wrong_with_a_bad_name(name, why):
    with pytest.raises(ValueError) as err:
        parse_name(name)
    assert repr(name) in str(err.value)
    assert why in str(err.value)


# --------------------------------------------------------------------------- scan_folder
def test_scan_accounts_for_every_file_exactly_once(quirky_folder):
    files, report = utkface.scan_folder(quirky_folder)
    skipped = [s["file"] for s in report.skipped]
    assert len(set(skipped)) == len(skipped)
    assert not set(skipped) & set(files["file"])
    assert set(skipped) | set(files["file"]) == set(os.listdir(quirky_folder))
    assert report.n_files == len(files) + len(report.skipped) == len(os.listdir(quirky_folder))
    assert report.n_readable == len(files)


def test_scan_skips_each_bad_file_with_its_reason(quirky_folder):
    _, report = utkface.scan_folder(quirky_folder)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert set(reasons) == set(BAD)
    for name, fragment in BAD.items():
        assert fragment in reasons[name], (name, reasons[name])


def test_scan_keeps_every_good_file(quirky_folder):
    files, _ = utkface.scan_folder(quirky_folder)
    good = {*GOOD, *IRREGULAR, *COPY_SAME, *AGE_CONFLICT, *ATTR_CONFLICT, *ODD_MODES}
    assert set(files["file"]) == good


def test_scan_reports_irregular_names_and_still_uses_them(quirky_folder):
    files, report = utkface.scan_folder(quirky_folder)
    assert {r["file"]: r["note"] for r in report.irregular_names} == IRREGULAR
    row = files.set_index("file").loc["39_1_20170116174525125.jpg.chip.jpg"]
    assert row["age"] == 39 and pd.isna(row["race"])


def test_scan_reads_images_in_odd_modes(quirky_folder):
    files, report = utkface.scan_folder(quirky_folder)
    modes = files.set_index("file")["mode"]
    for name, mode in ODD_MODES.items():
        assert modes[name] == mode
        assert report.modes[mode] == 1
    assert sum(report.modes.values()) == len(files)


def test_scan_records_hash_size_and_labels(quirky_folder):
    files, _ = utkface.scan_folder(quirky_folder)
    assert files["sha1"].str.fullmatch("[0-9a-f]{40}").all()
    assert (files[["width", "height"]] == 48).all().all()
    assert str(files["race"].dtype) == "Int64"
    row = files.set_index("file").loc[GOOD[1]]
    assert (row["age"], row["gender"], row["race"]) == (8, 1, 4)
    assert row["bytes"] == (quirky_folder / GOOD[1]).stat().st_size


def test_scan_ignores_hidden_files(quirky_folder):
    (quirky_folder / ".DS_Store").write_bytes(b"\0\1")
    _, report = utkface.scan_folder(quirky_folder)
    assert report.n_files == len(os.listdir(quirky_folder)) - 1
    assert ".DS_Store" not in [s["file"] for s in report.skipped]


def test_scan_of_missing_folder_says_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        utkface.scan_folder(tmp_path / "nowhere")
    assert "python -m agelib download" in str(err.value)
    assert "AGELIB_DATA" in str(err.value)


def test_a_folder_holding_utkface_means_its_images_everywhere(quirky_folder, tmp_path, home):
    import shutil

    from agelib.data import sources

    parent = tmp_path / "downloads"
    shutil.copytree(quirky_folder, parent / "UTKFace")
    files, _ = utkface.scan_folder(parent)  # as AGELIB_DATA=downloads would find it
    pd.testing.assert_frame_equal(files, utkface.scan_folder(quirky_folder)[0])
    faces = sources.load_folder(parent)  # and its images open from there
    assert faces.images(16).shape == (len(faces.samples), 16, 16, 3)


def test_broken_links_and_undecodable_names_are_skipped_with_their_reason(quirky_folder, home):
    """Links whose target went away, links that loop, and names in a legacy encoding: each
    is one skipped file with what to do, never a crash of the whole data set's scan."""
    from agelib.data import sources

    good = sorted(p for p in quirky_folder.iterdir() if p.name in GOOD)[0]
    (quirky_folder / "30_0_0_20170101000000000.jpg").symlink_to(quirky_folder / "gone.jpg")
    (quirky_folder / "31_0_0_20170101000000000.jpg").symlink_to("32_0_0_20170101000000000.jpg")
    (quirky_folder / "32_0_0_20170101000000000.jpg").symlink_to("31_0_0_20170101000000000.jpg")
    latin1 = os.fsdecode(b"50_0_0_caf\xe9.jpg")  # how Linux hands over a Latin-1 name
    try:
        (quirky_folder / latin1).write_bytes(good.read_bytes())
    except (UnicodeEncodeError, OSError):  # file systems that insist on UTF-8 names
        latin1 = None
    faces = sources.load_folder(quirky_folder)  # the cached scan stats every entry first
    reasons = {s["file"]: s["reason"] for s in faces.report.skipped}
    for name in ("30", "31", "32"):
        assert "broken link" in reasons[f"{name}_0_0_20170101000000000.jpg"]
    if latin1:
        assert reasons["50_0_0_caf\\udce9.jpg"] == "file name is not valid UTF-8: rename the file"
    assert len(faces.samples) > 0


def test_scan_of_empty_folder_says_it_is_empty(tmp_path):
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(ValueError, match="is empty"):
        utkface.scan_folder(tmp_path)


def test_scan_of_folder_with_only_bad_files_fails_with_an_example(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "1_0_0_20170101000000000.jpg.chip.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="No usable image") as err:
        utkface.scan_folder(tmp_path)
    assert "2 file(s) skipped" in str(err.value)


def test_report_text_lists_skipped_and_irregular_files(quirky_folder):
    files, report = utkface.scan_folder(quirky_folder)
    utkface.deduplicate(files, report)
    text = str(report)
    for name in [*BAD, *IRREGULAR]:
        assert name in text
    assert utkface.DataReport(**report.to_dict()) == report


# --------------------------------------------------------------------------- deduplicate
@pytest.fixture
def scanned(quirky_folder):
    files, report = utkface.scan_folder(quirky_folder)
    samples = utkface.deduplicate(files, report)
    return files, report, samples


def test_deduplicate_keeps_one_sample_per_image(scanned):
    files, _, samples = scanned
    assert samples["sha1"].is_unique
    conflict_sha1 = set(files.loc[files.file.isin(AGE_CONFLICT), "sha1"])
    assert set(samples["sha1"]) == set(files["sha1"]) - conflict_sha1
    assert samples["file"].is_monotonic_increasing


def test_deduplicate_merges_exact_copies(scanned):
    _, _, samples = scanned
    row = samples.set_index("file").loc[COPY_SAME[0]]
    assert row["n_files"] == 2
    assert row["files"] == "|".join(COPY_SAME)
    assert (row["age"], row["gender"], row["race"]) == (30, 0, 0)
    assert COPY_SAME[1] not in set(samples["file"])


def test_deduplicate_leaves_out_copies_that_disagree_on_age(scanned):
    _, report, samples = scanned
    used = "|".join(samples["files"])
    assert not any(name in used for name in AGE_CONFLICT)
    assert report.n_age_conflicts == 1


def test_deduplicate_keeps_attribute_conflict_with_the_tied_attribute_missing(scanned):
    _, report, samples = scanned
    row = samples.set_index("file").loc[ATTR_CONFLICT[0]]
    assert row["age"] == 50 and row["gender"] == 0
    assert pd.isna(row["race"])
    assert row["n_files"] == 2
    assert report.n_attribute_conflicts == 1


def test_deduplicate_takes_the_majority_attribute():
    files = pd.DataFrame({"file": ["a", "b", "c"], "sha1": ["x"] * 3, "age": [20] * 3,
                          "gender": [1, 1, 0], "race": pd.array([2, 3, 3], dtype="Int64")})
    sample = utkface.deduplicate(files).iloc[0]
    assert (sample["gender"], sample["race"], sample["n_files"]) == (1, 3, 3)


def test_the_report_gives_the_age_range_and_median_of_the_samples_used():
    files = pd.DataFrame({"file": ["a", "b", "c"], "sha1": ["x", "y", "z"], "age": [1, 2, 60],
                          "gender": [0, 1, 0], "race": pd.array([0, 1, 2], dtype="Int64")})
    report = utkface.DataReport(folder="f")
    utkface.deduplicate(files, report)
    assert (report.age_min, report.age_median, report.age_max) == (1, 2.0, 60)  # not the mean


def test_deduplicate_counts_in_the_report(scanned):
    files, report, samples = scanned
    n_readable = len(GOOD) + len(IRREGULAR) + 6 + len(ODD_MODES)
    assert report.n_readable == len(files) == n_readable
    assert report.n_images == files["sha1"].nunique() == n_readable - 3
    assert report.n_duplicate_groups == 3 and report.n_duplicate_files == 3
    assert report.n_used == len(samples) == report.n_images - 1
    assert samples["n_files"].sum() == n_readable - 2  # the two age-conflicting files
    assert (report.age_min, report.age_max) == (samples.age.min(), samples.age.max())


def test_deduplicate_dtypes():
    files = pd.DataFrame({"file": ["a", "b"], "sha1": ["x", "x"], "age": [3, 3],
                          "gender": [0, 1], "race": pd.array([1, None], dtype="Int64")})
    samples = utkface.deduplicate(files)
    assert samples.dtypes.astype(str)[["age", "gender", "race", "n_files"]].tolist() == [
        "int64", "Int64", "Int64", "int64"]
    assert pd.isna(samples.loc[0, "gender"]) and samples.loc[0, "race"] == 1


# --------------------------------------------------------------------------- duplicate_groups
GROUP_COLUMNS = ["sha1", "files", "ages", "genders", "races", "age_spread", "age_conflict",
                 "attribute_conflict"]


def test_duplicate_groups_lists_each_group_with_its_labels(scanned):
    files, _, _ = scanned
    groups = utkface.duplicate_groups(files)
    assert list(groups.columns) == GROUP_COLUMNS
    assert len(groups) == 3
    by_first = {g.files[0]: g for g in groups.itertuples()}
    age = by_first[AGE_CONFLICT[0]]
    assert age.files == list(AGE_CONFLICT) and age.ages == [40, 45] and age.age_spread == 5
    assert age.age_conflict and not age.attribute_conflict
    attr = by_first[ATTR_CONFLICT[0]]
    assert attr.races == [1, 2] and attr.attribute_conflict and not attr.age_conflict
    same = by_first[COPY_SAME[0]]
    assert not same.age_conflict and not same.attribute_conflict
    assert groups["age_spread"].is_monotonic_decreasing


def test_duplicate_groups_of_a_folder_without_copies_is_empty_but_filterable():
    files = pd.DataFrame({"file": ["a", "b"], "sha1": ["x", "y"], "age": [1, 2],
                          "gender": [0, 1], "race": pd.array([1, None], dtype="Int64")})
    groups = utkface.duplicate_groups(files)
    assert groups.empty and list(groups.columns) == GROUP_COLUMNS
    assert list(groups[groups.attribute_conflict].columns) == GROUP_COLUMNS
    assert list(groups[groups.age_conflict].columns) == GROUP_COLUMNS


def test_a_photo_too_large_to_decode_is_skipped_with_the_reason(tmp_path, monkeypatch):
    from PIL import Image

    from conftest import face_image, jpeg_bytes

    for i, age in enumerate((30, 31, 32)):
        (tmp_path / f"{age}_0_0_2017010100000000{i}.jpg.chip.jpg").write_bytes(
            jpeg_bytes(face_image(i)))
    Image.new("L", (300, 300)).save(tmp_path / "40_0_0_20170101000000009.jpg.chip.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 300 x 300 is twice too many
    files, report = utkface.scan_folder(tmp_path)
    assert len(files) == 3
    assert report.skipped == [{"file": "40_0_0_20170101000000009.jpg.chip.jpg",
                               "reason": report.skipped[0]["reason"]}]
    assert "too large to decode safely" in report.skipped[0]["reason"]


def test_a_folder_holding_only_other_files_names_them_instead_of_saying_empty(tmp_path):
    """Catches a folder of non-images (the archive not unpacked) reported as an empty folder."""
    (tmp_path / "UTKFace.tar.gz").write_bytes(b"\x1f\x8b not unpacked")
    with pytest.raises(ValueError, match="No usable image") as err:
        utkface.scan_folder(tmp_path)
    assert "UTKFace.tar.gz" in str(err.value) and "not an image file name" in str(err.value)


def test_a_file_replaced_under_the_same_name_is_scanned_again(quirky_folder, home):
    """Catches a cached folder scan that is reused after a file's content changed."""
    from conftest import face_image, jpeg_bytes

    from agelib.data import sources

    name = GOOD[0]
    before = sources.load_folder(quirky_folder).files.set_index("file").loc[name, "sha1"]
    (quirky_folder / name).write_bytes(jpeg_bytes(face_image(500), quality=60))  # re-saved
    files = sources.load_folder(quirky_folder).files.set_index("file")
    assert files.loc[name, "sha1"] != before
    assert files.loc[name, "bytes"] == (quirky_folder / name).stat().st_size


def test_a_corrupt_image_that_pillow_fails_on_oddly_is_skipped_not_fatal(tmp_path):
    """Catches a decoder error that is not an OSError or ValueError (a truncated QOI image
    raises IndexError in Pillow) ending the scan of the whole folder."""
    from conftest import face_image, jpeg_bytes

    for i, age in enumerate((30, 31, 32)):
        (tmp_path / f"{age}_0_0_2017010100000000{i}.jpg.chip.jpg").write_bytes(
            jpeg_bytes(face_image(i)))
    truncated_qoi = b"qoif\x00\x00\x00\x08\x00\x00\x00\x08\x03"
    (tmp_path / "40_0_0_20170101000000009.jpg.chip.jpg").write_bytes(truncated_qoi)
    files, report = utkface.scan_folder(tmp_path)
    assert len(files) == 3
    assert [s["file"] for s in report.skipped] == ["40_0_0_20170101000000009.jpg.chip.jpg"]


@pytest.mark.parametrize("make, error, words", [
    (lambda p: None, FileNotFoundError, "No data folder"),
    (lambda p: p.write_text("x"), ValueError, "is a file"),
])
def test_load_folder_of_a_missing_folder_or_a_file_says_what_to_give(tmp_path, home, make,
                                                                     error, words):
    """Catches the cached scan listing the folder before the scan's own checks, which
    surfaced a bare OS error ('[Errno 2] No such file or directory') with no advice."""
    from agelib.data import sources

    make(tmp_path / "faces")
    with pytest.raises(error, match=words):
        sources.load_folder(tmp_path / "faces")


def test_a_damaged_saved_scan_is_redone_not_fatal(quirky_folder, home):
    """Catches a scan cache cut short (its report half written) failing every later load
    until the user finds and deletes it: the scan is derived data, so it is made again."""
    from agelib.data import sources

    first = sources.load_folder(quirky_folder)
    (meta,) = (home / "cache").glob("scan-*.json")
    meta.write_text('{"folder": "qui')
    again = sources.load_folder(quirky_folder)
    pd.testing.assert_frame_equal(again.files, first.files)
    assert again.report == first.report
