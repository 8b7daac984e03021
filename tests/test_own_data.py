"""Your own labelled photos: a table of file and age, checked, merged and trained like UTKFace."""

import json

import pandas as pd
import pytest
from conftest import face_image, jpeg_bytes, tiny_mode

from agelib import models, training
from agelib.data import sources
from agelib.training import TrainConfig


def write_photos(folder, n: int = 60) -> list[dict]:
    """``n`` face drawings in a subfolder, named nothing like UTKFace, and their label rows."""
    (folder / "photos" / "set1").mkdir(parents=True)
    rows = []
    for i in range(n):
        file = f"photos/set1/img_{i:03d}.jpg"
        (folder / file).write_bytes(jpeg_bytes(face_image(i)))
        rows.append({"file": file, "age": str(5 + i), "gender": str(i % 2) if i % 3 else "",
                     "race": ""})
    return rows


@pytest.fixture
def own_table(tmp_path, home):
    rows = write_photos(tmp_path)
    first = tmp_path / rows[0]["file"]
    (tmp_path / "photos" / "copy.jpg").write_bytes(first.read_bytes())  # same photo, same age
    (tmp_path / "photos" / "empty.jpg").write_bytes(b"")
    (tmp_path / "photos" / "text.jpg").write_text("not a picture")
    for name in ("old.jpg", "girl.jpg"):
        (tmp_path / "photos" / name).write_bytes(jpeg_bytes(face_image(900 + len(name))))
    rows += [{"file": "photos/copy.jpg", "age": rows[0]["age"], "gender": "", "race": ""},
             {"file": "photos/empty.jpg", "age": "30", "gender": "", "race": ""},
             {"file": "photos/text.jpg", "age": "30", "gender": "", "race": ""},
             {"file": "photos/gone.jpg", "age": "30", "gender": "", "race": ""},
             {"file": "photos/old.jpg", "age": "thirty", "gender": "", "race": ""},
             {"file": "photos/girl.jpg", "age": "7", "gender": "2", "race": ""}]
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_table_of_labels_is_checked_and_merged_like_a_utkface_folder(own_table):
    faces = sources.load_table(own_table)
    assert faces.real and faces.name == own_table.parent.name  # named after its folder
    assert len(faces.samples) == 60  # the copy merged into its original
    assert faces.samples.loc[faces.samples["file"] == "photos/copy.jpg", "n_files"].item() == 2
    assert faces.samples["gender"].isna().sum() == 20  # left empty: unknown, not a guess
    reasons = {s["file"]: s["reason"] for s in faces.report.skipped}
    assert reasons["photos/gone.jpg"] == "no such file"
    assert "empty file" in reasons["photos/empty.jpg"]
    assert "not an image" in reasons["photos/text.jpg"]
    assert reasons["photos/old.jpg"] == "age 'thirty' is not a whole number of years"
    assert "0 (male) or 1 (female)" in reasons["photos/girl.jpg"]
    assert faces.report.n_files == 66 and faces.report.n_duplicate_files == 1
    assert faces.images(16).shape == (60, 16, 16, 3)  # decodes and caches like UTKFace


def test_a_packed_table_keeps_its_unknown_genders_unknown(own_table, tmp_path):
    from agelib import data

    faces = sources.load_table(own_table)
    packed = data.load_pack(sources.write_faces_pack(faces, 16, tmp_path / "mine.tar"))
    assert str(packed.files["gender"].dtype) == "Int64"  # not strings after the round trip
    assert (packed.files["gender"] == 1).sum() == (faces.files["gender"] == 1).sum() > 0


def test_agelib_data_may_name_a_table_and_a_run_trains_on_it(own_table, monkeypatch, results):
    monkeypatch.setenv("AGELIB_DATA", str(own_table))
    faces = sources.load_faces(verbose=False)
    assert faces.name == own_table.parent.name and len(faces.samples) == 60
    cfg = TrainConfig(model=models.ModelConfig("test_resnet"), loss="l1", tag="own")
    result = training.train_age_model(cfg, faces, mode=tiny_mode(), device="cpu", verbose=False)
    assert result.record["data"] == faces.name  # the record says whose photos these were
    assert result.record["test_mae"] > 0


def test_a_table_without_its_columns_says_which(tmp_path, home):
    pd.DataFrame({"path": ["a.jpg"], "years": [3]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['age', 'file'\]"):
        sources.load_table(tmp_path / "t.csv")
    with pytest.raises(FileNotFoundError, match="columns file and age"):
        sources.load_table(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv' is empty: give a CSV whose first line"):
        sources.load_table(tmp_path / "empty.csv")
    pd.DataFrame({"file": ["a.jpg"], "age": [3]}).to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(ValueError, match="No usable image in the table.*a.jpg: no such file"):
        sources.load_table(tmp_path / "none.csv")
    (tmp_path / "header.csv").write_text("file,age\n")  # catches "e.g. -: no rows"
    with pytest.raises(ValueError, match="lists no photo: add one line per photo"):
        sources.load_table(tmp_path / "header.csv")


def test_a_folder_is_named_after_itself_unless_it_is_utkface(quirky_folder, home, tmp_path):
    assert sources.load_folder(quirky_folder).name == "quirky"  # not passed off as UTKFace
    utk = quirky_folder.rename(tmp_path / "UTKFace")
    assert sources.load_folder(utk).name == "UTKFace"


def test_the_data_command_checks_a_table(own_table, capsys):
    import json

    from agelib import cli

    assert cli.main(["data", str(own_table), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_files"] == 66 and report["n_used"] == 60 and len(report["skipped"]) == 5


def test_chapters_01_and_10_run_on_a_table_of_ages_only(synthetic_home, home, results, tmp_path,
                                                       monkeypatch):
    """The data chapters study gender and race too: on photos labelled with ages only they
    say there is nothing to compare, and never replace README's figures with these."""
    import shutil

    import nbformat

    from agelib import course, plots

    photos = sorted((synthetic_home / "synthetic").glob("*.jpg"))[:450]
    table = tmp_path / "ages.csv"
    pd.DataFrame({"file": [str(p) for p in photos],
                  "age": [p.name.split("_")[0] for p in photos]}).to_csv(table, index=False)
    chapters = tmp_path / "notebooks"
    chapters.mkdir()
    for name in ("01_dataset_exploration.ipynb", "10_errors_and_fairness.ipynb"):
        shutil.copy(course.notebooks_dir() / name, chapters / name)
    monkeypatch.setattr(course, "notebooks_dir", lambda: chapters)
    monkeypatch.setenv("AGELIB_DATA", str(table))
    readme_figures = {p.name: p.stat().st_mtime for p in plots.figures_dir().glob("*.png")}

    run = course.run_chapters(["01", "10"], timeout=900, save=False)

    assert [c["error"] for c in run["chapters"]] == [None, None]
    printed = {name: "".join(json.dumps(c.get("outputs", [])) for c in
                             nbformat.read(chapters / name, as_version=4).cells)
               for name in ("01_dataset_exploration.ipynb", "10_errors_and_fairness.ipynb")}
    assert "no race labels in this data" in printed["01_dataset_exploration.ipynb"]
    assert "unknown" in printed["10_errors_and_fairness.ipynb"]  # the one group there is
    assert (home / "figures-scratch" / "age_by_group.png").exists()
    assert {p.name: p.stat().st_mtime for p in plots.figures_dir().glob("*.png")} == readme_figures


def test_a_dataframe_with_missing_or_float_labels_reads_like_the_csv(tmp_path, home):
    rows = write_photos(tmp_path, n=4)
    table = pd.DataFrame({"file": [r["file"] for r in rows],
                          "age": [30.0, 41.0, 52.0, 63.0],  # floats, as pandas reads numbers
                          "gender": [0, None, 1, float("nan")],
                          "race": pd.array([1, None, 2, 4], dtype="Int64")})
    faces = sources.load_table(table, root=tmp_path, name="mine")
    assert faces.report.skipped == [] and faces.samples["age"].tolist() == [30, 41, 52, 63]
    assert faces.samples["gender"].isna().sum() == 2 and faces.samples["race"].isna().sum() == 1
    table.to_csv(tmp_path / "written.csv", index=False)  # pandas writes "30.0", "1.0", ""
    again = sources.load_table(tmp_path / "written.csv", name="mine")
    assert again.report.skipped == [] and again.samples["age"].tolist() == [30, 41, 52, 63]
    assert again.fingerprint == faces.fingerprint and again.samples["gender"].isna().sum() == 2


def test_agelib_data_may_name_the_synthetic_faces(synthetic_home, home, monkeypatch):
    from conftest import link_synthetic

    link_synthetic(home, synthetic_home)
    monkeypatch.setenv("AGELIB_DATA", "synthetic")  # as the split's error message suggests
    faces = sources.load_faces(verbose=False)
    assert faces.name == "synthetic" and not faces.real
    monkeypatch.setenv("AGELIB_DATA", " synthetic ")  # as `info` reads it: the same faces
    assert sources.load_faces(verbose=False).fingerprint == faces.fingerprint
