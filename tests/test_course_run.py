"""Running the course (agelib.course.run_chapters) and README's course-run table."""

import json
import re

import nbformat
import pytest

from agelib import course, settings


#: what a chapter's kernel notes when it reuses two models trained before its run (one of them
#: undated) and one trained after the run began (by an earlier chapter of the same run)
REUSES = ("with open(os.environ['AGELIB_REUSE_LOG'], 'a') as f:\n"
          "    f.write('2020-01-01T00:00:00+00:00\\n2999-01-01T00:00:00+00:00\\n\\n')")


@pytest.fixture
def chapters(tmp_path, monkeypatch):
    """A notebooks folder with two tiny chapters named like the first two real ones."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name, source in [("00_setup.ipynb", "import os\nprint('smoke' if os.environ['AGELIB_SMOKE'] == '1' else 'full', "
                                           "os.environ.get('AGELIB_EPOCHS'))\n" + REUSES),
                         ("01_dataset_exploration.ipynb", "1 / 0")]:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / name)
    monkeypatch.setattr(course, "notebooks_dir", lambda: folder)
    monkeypatch.setenv("AGELIB_RESULTS", str(tmp_path / "results"))
    return folder


def test_run_chapters_executes_in_place_times_and_records(chapters, tmp_path):
    run = course.run_chapters(timeout=60)
    assert [c["notebook"] for c in run["chapters"]] == ["00_setup.ipynb", "01_dataset_exploration.ipynb"]
    first, second = run["chapters"]
    assert first["ok"] and first["seconds"] > 0 and first["error"] is None
    assert not second["ok"] and "ZeroDivisionError" in second["error"]
    # a chapter that reused models trained before the run is told from a first run of it
    assert (first["models_reused"], second["models_reused"]) == (2, 0)
    assert run["total_seconds"] == round(first["seconds"] + second["seconds"], 1)  # not the last one's
    executed = nbformat.read(chapters / "00_setup.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"].strip() == "smoke None"  # the mode it was asked for
    saved = list((tmp_path / "results" / "course").glob("*-smoke.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["chapters"] == run["chapters"]
    assert course.load_course_runs() == [run]


def test_run_chapters_passes_the_epoch_knob_and_records_it(chapters, tmp_path):
    run = course.run_chapters(["00"], timeout=60, epochs=3)
    executed = nbformat.read(chapters / "00_setup.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"].strip() == "smoke 3"
    assert run["epochs"] == 3 and course.load_course_runs()[0]["epochs"] == 3


def test_run_chapters_picks_chapters_by_number_and_refuses_unknown_ones(chapters):
    run = course.run_chapters(["00"], timeout=60, save=False)
    assert [c["notebook"] for c in run["chapters"]] == ["00_setup.ipynb"]
    with pytest.raises(ValueError, match="no chapter matches"):
        course.run_chapters(["42"], save=False)


def run_record(mode, seconds, device="cpu (x86_64)", date="2026-11-23T08:00:00"):
    chapters = [{"notebook": f"0{i}_x.ipynb", "seconds": s, "ok": True, "error": None,
                 "models_reused": 0} for i, s in enumerate(seconds)]
    return {"mode": mode, "device": device, "date": date, "total_seconds": sum(seconds),
            "chapters": chapters}


def test_course_table_shows_the_latest_run_of_each_mode():
    runs = [run_record("smoke", [10, 20]), run_record("smoke", [11, 21], date="2026-11-24T00:00:00"),
            run_record("full", [60, 120], device="cuda (H100)")]
    table = course.course_run_table(runs)
    assert "full mode, cuda (H100), 2026-11-23" in table and "smoke mode, cpu" in table
    assert "| 00_x.ipynb | 60 s | 11 s |" in table
    assert "**3.0 min**" in table  # full total: 180 s
    assert "2026-11-24" in table  # the later smoke run replaced the earlier one
    assert "no course run" in course.course_run_table([])
    # a later run on the synthetic faces (a learner's check, no data at hand) changes nothing
    synthetic = {**run_record("smoke", [1, 2], date="2026-11-25T00:00:00"), "data": "synthetic"}
    assert course.course_run_table(runs + [synthetic]) == table


def test_a_course_record_without_chapters_changes_nothing():
    runs = [run_record("smoke", [10, 20])]
    empty = run_record("smoke", [], device="cuda (H100)", date="2026-11-25T00:00:00")
    assert course.course_run_table(runs + [empty]) == course.course_run_table(runs)
    assert course.latest_times([empty], "smoke") is None
    assert "no course run" in course.course_run_table([empty])


def test_course_table_stitches_a_run_split_over_calls_on_one_device():
    gpu = "cuda (NVIDIA H100)"
    first = run_record("full", [30, 40], device=gpu, date="2026-11-24T10:00:00")
    second = {**run_record("full", [], device=gpu, date="2026-11-24T10:12:00"),
              "chapters": [{"notebook": "01_x.ipynb", "seconds": 50, "ok": True, "error": None,
                            "models_reused": 0},
                           {"notebook": "02_x.ipynb", "seconds": 70, "ok": True, "error": None,
                            "models_reused": 0}]}
    cpu = run_record("full", [999, 999, 999], date="2026-11-23T10:00:00")  # another device: never mixed in
    table = course.course_run_table([cpu, first, second])
    assert "| 00_x.ipynb | 30 s |" in table and "| 01_x.ipynb | 50 s |" in table  # the later 01 wins
    assert "| 02_x.ipynb | 70 s |" in table and "999" not in table
    assert "**2.5 min**" in table  # 30 + 50 + 70 s
    stitched = course.latest_times([cpu, first, second], "full")
    assert stitched["device"] == gpu and stitched["dates"] == ["2026-11-24"]


def test_a_chapter_re_run_at_another_length_is_not_stitched_into_the_course():
    course_run = run_record("full", [60, 120], device="cuda (H100)", date="2026-11-24T00:00:00")
    short = {**run_record("full", [5], device="cuda (H100)", date="2026-11-25T00:00:00"),
             "epochs": 2}
    stitched = course.latest_times([course_run, short], "full")
    assert stitched["epochs"] == [2] and stitched["total_seconds"] == 5  # the latest length only
    assert "(2/" not in course.course_run_table([course_run, short])


def test_a_cut_short_course_record_is_skipped_by_name(tmp_path):
    (tmp_path / "20261124-000000-full.json").write_text(json.dumps(run_record("full", [60])))
    (tmp_path / "20261125-000000-full.json").write_text('{"mode": "full", "dev')
    with pytest.warns(UserWarning, match="skipped 20261125-000000-full.json"):
        runs = course.load_course_runs(tmp_path)
    assert len(runs) == 1


def test_a_failed_chapters_error_is_kept_without_terminal_colours():
    coloured = "\x1b[0;31mValueError\x1b[0m: \x1b[1mno faces\x1b[0m\n"
    assert course._plain(coloured) == "ValueError: no faces"


def test_readme_course_block_is_regenerated_between_its_markers():
    text = f"intro\n{course.COURSE_START}\nold\n{course.COURSE_END}\nrest"
    out = course.readme_with_course_runs(text, [run_record("smoke", [5])])
    assert out.startswith("intro\n") and out.endswith("\nrest") and "old" not in out
    with pytest.raises(ValueError, match="markers"):
        course.readme_with_course_runs("no markers", [])


def test_the_pending_chapters_are_those_whose_latest_run_on_this_device_failed_or_never_ran(
        results, capsys, monkeypatch):
    from agelib import cli, records, settings

    here = records.device_name(settings.get_device())
    run = lambda device, mode, done, epochs=20: {  # noqa: E731
        "mode": mode, "device": device, "epochs": epochs,
        "chapters": [{"notebook": course.CHAPTERS[i].file, "ok": ok} for i, ok in done.items()]}
    runs = [run(here, "full", {0: True, 1: True, 2: False}),
            run(here, "full", {1: False, 2: True}),       # a later attempt decides
            run("cuda (another GPU)", "full", {3: True}),  # another device does not count
            run(here, "smoke", {4: True}),                 # nor does another mode
            run(here, "full", {5: True}, epochs=2),        # nor a shorter course
            {**run(here, "full", {6: True}), "data": "synthetic"}]  # nor a check on synthetic faces
    pending = course.pending_chapters(runs, here, epochs=20)
    assert "05" in pending and "05" not in course.pending_chapters(runs, here)
    assert pending[:3] == ["01", "03", "04"] and "00" not in pending and "02" not in pending
    assert "06" in pending
    assert len(pending) == len(course.CHAPTERS) - 2
    (results / "course").mkdir(parents=True)
    for i, r in enumerate(runs):
        (results / "course" / f"2026112{i}-000000-{r['mode']}.json").write_text(json.dumps(r))
    monkeypatch.delenv("AGELIB_EPOCHS", raising=False)
    assert cli.main(["course", "--full", "--pending"]) == 0  # the course's 20 epochs
    assert capsys.readouterr().out.split() == pending
    assert cli.main(["course", "--full", "--pending", "--epochs", "2"]) == 0
    assert "05" not in capsys.readouterr().out.split()


# --------------------------------------------------------------------------- dataset photos
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5"
       "ErkJggg==")  # one pixel


def figure_cell(tagged: bool):
    cell = nbformat.v4.new_code_cell(
        "from IPython.display import display\n"
        f"display({{'image/png': {PNG!r}, 'text/plain': '<Figure>'}}, raw=True)\nprint('a table')")
    if tagged:
        cell.metadata["tags"] = [course.DATASET_FACES]
    return cell


def test_tagged_cells_lose_their_pictures_and_say_why():
    nb = nbformat.v4.new_notebook(cells=[figure_cell(True), figure_cell(False)])
    for cell in nb.cells:
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": PNG}),
                        nbformat.v4.new_output("stream", text="a table\n")]
    assert course.leave_out_dataset_faces(nb) == 1
    tagged, plain = nb.cells
    assert [o.get("text") for o in tagged.outputs] == [course.LEFT_OUT, "a table\n"]
    assert "image/png" in plain.outputs[0]["data"]  # an untagged picture (a plot) stays
    assert course.leave_out_dataset_faces(nb) == 0  # and doing it again changes nothing


@pytest.mark.parametrize("real", [True, False])
def test_a_run_on_real_faces_saves_no_tagged_picture(chapters, monkeypatch, real):
    nb = nbformat.v4.new_notebook(cells=[figure_cell(True), figure_cell(False)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, chapters / "00_setup.ipynb")
    monkeypatch.setattr(course, "_real_faces", lambda env: real)
    assert course.run_chapters(["00"], timeout=60, save=False)["chapters"][0]["ok"]
    tagged, plain = nbformat.read(chapters / "00_setup.ipynb", as_version=4).cells
    pictures = [o for o in tagged.outputs if "image/png" in o.get("data", {})]
    assert (pictures == []) == real and (tagged.outputs[0].get("text") == course.LEFT_OUT) == real
    assert any("image/png" in o.get("data", {}) for o in plain.outputs)


COMMITTED = sorted((course.notebooks_dir()).glob("*.ipynb"))
SHOWS_PHOTOS = ("face_grid(", "cam_figure(shown[")  # the helpers that draw single dataset photos


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name[:2])
def test_committed_chapters_hold_no_utkface_photo(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    text = path.read_text(encoding="utf-8")
    real = "real faces:" in text  # the data banner every chapter prints first
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source, tags = "".join(cell["source"]), cell.get("metadata", {}).get("tags", [])
        if any(s in source for s in SHOWS_PHOTOS):
            assert course.DATASET_FACES in tags, f"cell {i} shows dataset photos: tag it"
        if course.DATASET_FACES in tags:
            assert "save_figure(" not in source, f"cell {i} would commit photos to figures/"
            if real:
                assert not any(t in o.get("data", {}) for o in cell.get("outputs", [])
                               for t in course.IMAGE_TYPES), f"cell {i} holds UTKFace photos"


def test_photos_are_left_out_unless_the_data_is_known_to_be_synthetic(quirky_folder, home,
                                                                       tmp_path, monkeypatch):
    from agelib.data import cache, sources

    monkeypatch.delenv("AGELIB_DATA", raising=False)  # the run's environment is what counts

    assert course._real_faces({"AGELIB_DATA": str(quirky_folder)})  # a UTKFace-style folder
    faces = sources.load_folder(quirky_folder)
    for real in (True, False):  # a pack says what it holds
        pack = cache.write_pack(faces.samples, faces.images(16), tmp_path / f"{real}.tar",
                                real=real)
        assert course._real_faces({"AGELIB_DATA": str(pack)}) == real
    assert not course._real_faces({"AGELIB_DATA": "synthetic"})
    assert not course._real_faces({})  # nothing found: the chapters use the synthetic faces
    assert course._real_faces({"AGELIB_DATA": str(tmp_path / "missing")})  # when in doubt


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name[:2])
def test_committed_chapters_say_their_mode_device_and_data_first(path):
    """A committed number must never lose its context: the first output of every chapter
    names the mode and the device, and the next line (chapter 00 excepted) the data."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    printed = ["".join("".join(o.get("text", "")) for o in c.get("outputs", [])
                       if o.get("output_type") == "stream")
               for c in nb["cells"] if c["cell_type"] == "code"]
    printed = [p for p in printed if p]
    assert printed, "committed without outputs: run it with `python -m agelib course`"
    assert re.match(r"(SMOKE|FULL) mode on \S+", printed[0]), printed[0][:120]
    if not path.name.startswith("00"):
        assert "DATA: " in printed[0], printed[0][:300]


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name[:2])
def test_every_chapter_ends_with_questions_answered_then_exercises(path):
    """fastbook's habit: a few questions to check the ideas (answers folded away), then the
    exercises, then the reading list, in that order, at the end of every chapter."""
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
             if c["cell_type"] == "markdown"]
    texts = ["".join(c["source"]) for c in cells]
    checks = [i for i, t in enumerate(texts) if t.startswith("## Check your understanding")]
    assert len(checks) == 1, "one 'Check your understanding' cell"
    questions, answers = texts[checks[0]].split("<details>")
    assert "<summary>Answers</summary>" in answers and answers.rstrip().endswith("</details>")
    asked, answered = (re.findall(r"^(\d+)\. ", t, flags=re.M) for t in (questions, answers))
    assert asked == answered == [str(n) for n in range(1, len(asked) + 1)] and len(asked) >= 4
    assert texts[checks[0] + 1].startswith("## Exercises")
    assert texts[checks[0] + 2:] == [texts[-1]] and texts[-1].startswith("## Further reading")


#: An author-year citation in prose: "Rothe et al. 2015", "Liu et al. (2022)", "Selvaraju et
#: al., ICCV 2017", "Cao, Mirjalili & Raschka, 2020": the first author's name and the year.
CITATION = re.compile(r"\b([A-Z][\w-]+)(?:\s+et\s+al\.|(?:,\s+[A-Z][\w-]+)*\s+&\s+[A-Z][\w-]+),?"
                      r"\s+\(?(?:[A-Z][A-Za-z]+\s+)?((?:19|20)\d\d)\b")


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name[:2])
def test_every_work_a_chapter_cites_is_in_its_reading_list(path):
    """A learner who meets "(Rothe et al. 2015)" finds the paper, in full, at the chapter's
    end: each entry of "Further reading" names its authors, title, venue and year."""
    texts = ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
             if c["cell_type"] == "markdown"]
    entries = [" ".join(e.split()) for e in re.split(r"^- ", texts[-1], flags=re.M)[1:]]
    assert entries and all(re.search(r"\*[^*]+\*.*\b(19|20)\d\d\b", e) for e in entries)
    for name, year in {m for text in texts[:-1] for m in CITATION.findall(text)}:
        assert any(name in e and year in e for e in entries), f"{name} {year} is not listed"


def test_the_kernels_get_the_users_paths_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGELIB_DATA", "my-data")  # relative to where the user typed it
    monkeypatch.setenv("AGELIB_RESULTS", "~/runs")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    env = course.kernel_env(full=True, epochs=3)
    assert env["AGELIB_DATA"] == str(tmp_path / "my-data")
    assert env["AGELIB_RESULTS"] == str(tmp_path / "me" / "runs")
    assert (env["AGELIB_SMOKE"], env["AGELIB_EPOCHS"]) == ("0", "3") and "MPLBACKEND" not in env
    monkeypatch.setenv("AGELIB_DATA", "synthetic")  # a name, not a path
    assert course.kernel_env(full=False)["AGELIB_DATA"] == "synthetic"


def test_a_spaced_synthetic_names_the_synthetic_faces_for_the_course_too(tmp_path, monkeypatch):
    """Catches `course` turning AGELIB_DATA=' synthetic ' (the synthetic faces for `train`,
    `info` and load_faces) into a path under the current folder, which every chapter then
    failed to find, and recording the run as one on real faces."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGELIB_DATA", " synthetic ")
    env = course.kernel_env(full=False)
    assert env["AGELIB_DATA"].strip() == "synthetic"
    assert not course._real_faces(env)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name[:2])
def test_every_cell_has_its_own_id(path):
    """nbformat 4.5 wants an id on every cell (a cell added by hand can lack one: nbval warns
    today, and nbformat will refuse it)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    ids = [c.get("id") for c in nb["cells"]]
    assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5)
    assert None not in ids, f"cell {ids.index(None)} has no id"
    assert len(set(ids)) == len(ids), "two cells share an id"


# --------------------------------------------------------------------------- course runs
def _course_run(mode, chapters, device="cpu (x86_64)", date="2026-11-23T08:00:00", reused=0,
                **extra):
    """A course-run record; its chapters reused no earlier model unless ``reused`` says so
    (None: recorded before runs counted)."""
    counted = {} if reused is None else {"models_reused": reused}
    return {"mode": mode, "device": device, "date": date, "chapters": [
        {"notebook": name, "seconds": s, "ok": ok, "error": None if ok else "boom", **counted}
        for name, s, ok in chapters], **extra}


def test_course_table_marks_a_failed_chapter():
    """Catches the table showing a failed chapter's time like a finished one's."""
    table = course.course_run_table([_course_run("smoke", [("00_x.ipynb", 10, True),
                                                           ("01_x.ipynb", 20, False)])])
    assert "| 00_x.ipynb | 10 s |" in table and "| 01_x.ipynb | 20 s (failed) |" in table


@pytest.fixture
def no_chapters(tmp_path, monkeypatch):
    """An empty notebooks folder: run_chapters writes its record without running a kernel."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(course, "notebooks_dir", lambda: folder)
    monkeypatch.delenv("AGELIB_EPOCHS", raising=False)
    return folder


@pytest.mark.parametrize("real", [True, False])
def test_a_course_run_says_which_faces_it_ran_on(no_chapters, monkeypatch, real):
    """Catches every course run recorded as on real faces: a learner's check on the synthetic
    faces then replaced the course's timings in README."""
    monkeypatch.setattr(course, "_real_faces", lambda env: real)
    run = course.run_chapters(save=False)
    assert run["data"] == ("real" if real else "synthetic")
    timed = {**run, "chapters": [{"notebook": "00_x.ipynb", "seconds": 1, "ok": True, "error": None}]}
    assert (course.latest_times([timed], "smoke") is None) == (not real)


@pytest.mark.parametrize("full, shell", [(True, "1"), (False, "0")])
def test_a_course_run_records_the_mode_it_was_asked_for(no_chapters, monkeypatch, full, shell):
    """Catches the record's mode taken from the shell's AGELIB_SMOKE instead of --full (the
    kernels run the mode asked for, so the record named the wrong one)."""
    monkeypatch.setenv("AGELIB_SMOKE", shell)
    monkeypatch.setattr(course, "_real_faces", lambda env: True)
    run = course.run_chapters(full=full, save=False)
    assert (run["mode"], run["epochs"]) == (("full", 20) if full else ("smoke", 1))


@pytest.mark.parametrize("full, shell", [(True, "1"), (False, "0"), (False, "")])
def test_the_kernels_run_the_mode_asked_for_whatever_the_shell_says(monkeypatch, full, shell):
    """Catches kernel_env keeping the shell's AGELIB_SMOKE for a smoke course."""
    monkeypatch.setenv("AGELIB_SMOKE", shell)
    assert course.kernel_env(full=full)["AGELIB_SMOKE"] == ("0" if full else "1")


def test_tagged_cells_lose_jpeg_and_svg_pictures_too():
    """Catches only PNG pictures left out (a JPEG or SVG of UTKFace photos was committed,
    which the dataset's licence does not allow)."""
    stream = {"output_type": "stream", "name": "stdout", "text": "a table\n"}
    cell = {"cell_type": "code", "metadata": {"tags": [course.DATASET_FACES]}, "outputs": [
        {"output_type": "display_data", "data": {"image/jpeg": "/9j/", "text/plain": "<Figure>"}},
        {"output_type": "display_data", "data": {"image/svg+xml": "<svg/>"}}, stream]}
    assert course.leave_out_dataset_faces({"cells": [cell]}) == 2
    assert [o.get("text") for o in cell["outputs"]] == [course.LEFT_OUT, "a table\n"]


def test_only_the_course_chapters_run(no_chapters):
    """Catches run_chapters executing every notebook in notebooks/ (a learner's scratch copy
    was run, timed and recorded as a chapter)."""
    (no_chapters / "my_copy_of_02.ipynb").write_text(json.dumps(
        {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert course.run_chapters(save=False)["chapters"] == []


def test_stitching_never_takes_a_chapter_from_another_device():
    """Catches latest_times mixing devices: an older CPU run's chapter that the GPU course
    never ran showed up in the GPU column (and its total)."""
    cpu = _course_run("full", [("03_x.ipynb", 999, True)], date="2026-11-23T08:00:00")
    gpu = _course_run("full", [("00_x.ipynb", 30, True)], device="cuda (H100)",
                      date="2026-11-24T08:00:00")
    stitched = course.latest_times([cpu, gpu], "full")
    assert [c["notebook"] for c in stitched["chapters"]] == ["00_x.ipynb"]
    assert stitched["total_seconds"] == 30 and "999" not in course.course_run_table([cpu, gpu])


def test_a_course_stitched_over_days_says_from_when_to_when():
    """Catches the header naming only the first day of a split course, or its days in
    hash order (a set's order), so 'from ... to ...' read backwards."""
    days = ["2026-11-21", "2026-11-22", "2026-11-23", "2026-11-24", "2026-11-25"]
    runs = [_course_run("full", [(f"0{i}_x.ipynb", 10, True)], date=f"{day}T08:00:00")
            for i, day in enumerate(days)]
    assert course.latest_times(runs[::-1], "full")["dates"] == days
    assert "full mode, cpu (x86_64), 2026-11-21 to 2026-11-25 |" in course.course_run_table(runs)


def test_course_table_lists_chapters_in_course_order():
    """Catches rows in the order the records happen to hold them (a chapter re-run first,
    or present in one mode only, jumped ahead of chapter 00)."""
    full = _course_run("full", [("01_x.ipynb", 20, True)])
    smoke = _course_run("smoke", [("01_x.ipynb", 2, True), ("00_x.ipynb", 1, True)])
    rows = [line.split(" | ")[0] for line in course.course_run_table([full, smoke]).splitlines()[2:]]
    assert rows == ["| 00_x.ipynb", "| 01_x.ipynb", "| **total**"]


def test_the_kernels_get_a_relative_agelib_home_whole(tmp_path, monkeypatch):
    """Catches AGELIB_HOME passed on as typed: the kernels run in notebooks/, where a relative
    home names another folder (caches and splits made again, or missing)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGELIB_HOME", "my-home")
    assert course.kernel_env(full=False)["AGELIB_HOME"] == str(tmp_path / "my-home")


def test_a_chapter_number_is_a_prefix_and_save_false_writes_nothing(no_chapters, tmp_path,
                                                                    monkeypatch):
    """Catches `course 0` also running chapter 10 (the number matched anywhere in the name),
    and save=False still writing a course-run record."""
    for name in ("00_setup.ipynb", "10_errors_and_fairness.ipynb"):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, no_chapters / name)
    monkeypatch.setenv("AGELIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(course, "_real_faces", lambda env: False)
    run = course.run_chapters(["0"], timeout=60, save=False)
    assert [c["notebook"] for c in run["chapters"]] == ["00_setup.ipynb"]
    assert not (tmp_path / "results").exists()


def test_note_reuse_writes_the_reused_runs_date_only_inside_a_course_run(tmp_path, monkeypatch):
    from agelib import training

    log = tmp_path / "reused"
    monkeypatch.delenv(settings.REUSE_LOG, raising=False)
    training.note_reuse({"date": "2026-12-01T10:00:00+00:00"})  # not in a course run: nothing
    assert not log.exists()
    monkeypatch.setenv(settings.REUSE_LOG, str(log))
    training.note_reuse({"date": "2026-12-01T10:00:00+00:00"})
    training.note_reuse({})
    assert log.read_text().splitlines() == ["2026-12-01T10:00:00+00:00", ""]
    import datetime as dt

    start = dt.datetime(2026, 12, 1, 11, tzinfo=dt.timezone.utc)
    assert course.trained_before(log, start) == 2
    assert course.trained_before(log, start - dt.timedelta(hours=2)) == 1  # only the undated
    assert course.trained_before(tmp_path / "none", start) == 0
    log.write_text("2026-12-01T10:00:00\n")  # no time zone: UTC's, never a TypeError
    assert course.trained_before(log, start) == 1


def test_course_table_marks_times_of_chapters_that_reused_earlier_models():
    """Catches a rerun's times shown as a first run's, and an old record (which never
    counted) shown as either; a chapter stitched from a fresh run stays unmarked."""
    warm = _course_run("smoke", [("00_x.ipynb", 10, True)], reused=3)
    cold = _course_run("smoke", [("01_x.ipynb", 20, True)], date="2026-11-24T08:00:00")
    table = course.course_run_table([warm, cold])
    assert "| 00_x.ipynb | 10 s † |" in table and "| 01_x.ipynb | 20 s |" in table
    assert "† the chapter reused models trained before its run" in table and "?" not in table
    assert "†" not in course.course_run_table([cold])
    old = _course_run("smoke", [("00_x.ipynb", 10, False)], reused=None)
    table = course.course_run_table([old])
    assert "| 00_x.ipynb | 10 s ? (failed) |" in table and "\n? recorded before" in table
    assert "†" not in table
