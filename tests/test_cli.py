"""``python -m agelib`` run as a user runs it, plus the README/notebook links it manages.

Each command starts a fresh Python (about 5 s of imports on a small CPU), so the
runs of this module are started together once and each test checks its own.
"""

import atexit
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import AGE_CONFLICT, Runs, link_synthetic, write_quirky_folder

from agelib import cli, course, settings
from agelib.data import sources, utkface

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    (base / "home").mkdir()
    return {"base": base, "home": base / "home", "quirky": write_quirky_folder(base / "quirky"),
            "pack": base / "out" / "x.tar"}


@pytest.fixture(scope="module")
def runs(workdir, request):
    env = {k: v for k, v in os.environ.items() if k not in ("AGELIB_DATA", "AGELIB_DEVICE")}
    env["AGELIB_HOME"] = str(workdir["home"])
    runs = Runs(env)
    runs.start("info", "info", "--json")
    runs.start("info-text", "info")
    runs.start("data", "data", str(workdir["quirky"]), "--json")
    runs.start("missing", "data", str(workdir["base"] / "nonexistent"))
    runs.start("links", "links")
    # the synthetic faces may be drawn while those run; `pack` reuses them instead of redrawing
    link_synthetic(workdir["home"], request.getfixturevalue("synthetic_home"))
    runs.start("data-default", "data")  # no folder: the data a run would use (here synthetic)
    runs.start("data-synthetic", "data", "synthetic", "--json")
    runs.start("pack", "pack", "--source", "synthetic", "--size", "32", "--out",
               str(workdir["pack"]))
    yield runs
    runs.stop()


def test_info_json_has_versions_device_mode_and_data(runs):
    result = runs["info"]
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info) >= {"versions", "device", "mode", "data"}
    assert info["versions"]["agelib"] and info["versions"]["torch"]
    assert info["versions"]["python"].count(".") == 2
    assert info["mode"] == ("smoke" if settings.smoke_mode() else "full")
    assert info["data"]["dataset"].startswith("synthetic")
    assert "python -m agelib download" in info["data"]["hint"]  # what to do about it
    assert info["device"] in ("cpu", "cuda", "mps")


def test_info_says_where_caches_checkpoints_and_records_go(runs, workdir):
    """Catches `info` leaving a learner to guess where training writes (the data home) and
    where their run records land."""
    lines = {line.split()[0]: line for line in runs["info-text"].stdout.splitlines() if line.strip()}
    assert str(workdir["home"]) in lines["home"] and "AGELIB_HOME" in lines["home"]
    assert "AGELIB_RESULTS" in lines["results"]


def test_data_json_matches_the_report(runs, workdir):
    result = runs["data"]
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    files, report = utkface.scan_folder(workdir["quirky"])
    utkface.deduplicate(files, report)
    expected = json.loads(report.to_json())
    assert {k: out[k] for k in expected} == expected
    assert out["n_files"] == len(files) + len(report.skipped)
    assert out["conflicting_groups"] == [{"files": list(AGE_CONFLICT), "ages": [40, 45]}]


def test_data_on_a_missing_folder_exits_2_with_advice(runs):
    result = runs["missing"]
    assert result.returncode == 2
    assert result.stderr.startswith("error: No data folder at")
    assert "python -m agelib download" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_links_prints_the_chapter_table(runs):
    result = runs["links"]
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| # | Chapter | What you will do | Open |"
    assert len(lines) == 2 + len(course.CHAPTERS)
    assert all(line.startswith(f"| {ch.file[:2]} | {ch.title} |")
               for line, ch in zip(lines[2:], course.CHAPTERS))


def test_links_say_while_the_repository_is_the_placeholder(runs):
    """Catches Colab links printed that lead nowhere, with nothing said about it."""
    placeholder = settings.REPOSITORY == "OWNER/NAME"
    assert ("lead nowhere until the course is published" in runs["links"].stderr) == placeholder


def test_data_without_a_folder_reports_the_data_a_run_would_use(runs):
    """Catches `data` demanding a folder from a learner with no real data (the course then
    runs on the synthetic faces, which `data` could not name), or `data synthetic` refused."""
    default, named = runs["data-default"], runs["data-synthetic"]
    assert default.returncode == 0 and named.returncode == 0, default.stderr + named.stderr
    assert default.stdout.startswith("DATA: SYNTHETIC faces")  # which data, first
    assert f"images used          {sources.SYNTHETIC_N}" in default.stdout
    report = json.loads(named.stdout)  # --json: the JSON alone
    assert report["n_files"] == sources.SYNTHETIC_N and report["conflicting_groups"] == []


def test_pack_writes_a_loadable_pack(runs, workdir):
    result = runs["pack"]
    assert result.returncode == 0, result.stderr
    assert "x.tar: 2000 images at 32 px" in result.stdout
    faces = sources.load_pack(workdir["pack"])
    assert len(faces.samples) == sources.SYNTHETIC_N and faces.samples["sha1"].is_unique
    assert not faces.real and faces.name.startswith("synthetic")  # provenance travels inside the pack
    assert faces.open_image(faces.samples["sha1"].iloc[0]).size == (32, 32)
    assert not list(workdir["pack"].parent.glob("*.partial"))
    # `data` reports on a pack as on a folder: it is a valid AGELIB_DATA
    assert cli.main(["data", str(workdir["pack"]), "--json"]) == 0
    # packing that pack again would encode every face a second time: refused, nothing written
    again = workdir["pack"].parent / "again.tar"
    assert cli.main(["pack", "--source", str(workdir["pack"]), "--out", str(again)]) == 2
    assert not again.exists()


@pytest.mark.parametrize("value", ["synthetic", " synthetic "])
def test_pack_takes_the_synthetic_faces_from_agelib_data_too(tmp_path, monkeypatch, capsys,
                                                             value):
    """AGELIB_DATA=synthetic names the synthetic faces for pack as for every other command
    (catches ' synthetic ', which load_faces and info accept, looked up as a path here)."""
    monkeypatch.setenv("AGELIB_DATA", value)
    asked = []

    def fake_load_faces(source=None, verbose=True):
        asked.append(source)
        raise RuntimeError("stop here: the data was found")

    monkeypatch.setattr(sources, "load_faces", fake_load_faces)
    assert cli.main(["pack", "--size", "16", "--out", str(tmp_path / "s.tar")]) == 2
    assert "the data was found" in capsys.readouterr().err and asked == [None]


def test_bad_arguments_are_refused_by_argparse():
    with pytest.raises(SystemExit) as exit_:
        cli.main(["nonsense"])
    assert exit_.value.code == 2


# --------------------------------------------------------------------------- environment_info
def test_environment_info_names_a_folder_or_the_problem(quirky_folder, monkeypatch, home):
    monkeypatch.setenv("AGELIB_DATA", str(quirky_folder))
    assert cli.environment_info()["data"] == {"dataset": "UTKFace folder", "location": "quirky"}
    monkeypatch.setenv("AGELIB_DATA", str(quirky_folder / "gone"))
    data = cli.environment_info()["data"]
    assert data["dataset"] == "missing" and "AGELIB_DATA" in data["error"]
    (home / "empty").mkdir()
    monkeypatch.setenv("AGELIB_DATA", str(home / "empty"))
    data = cli.environment_info()["data"]
    assert data["location"] == "empty" and "holds no image" in data["error"]


# --------------------------------------------------------------------------- README and notebooks
def test_readme_chapter_table_is_up_to_date():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet")
    text = readme.read_text(encoding="utf-8")
    assert course.TABLE_START in text and course.TABLE_END in text
    table = text.split(course.TABLE_START, 1)[1].split(course.TABLE_END, 1)[0].strip()
    assert table == course.chapter_table(), "run `python -m agelib links --write`"


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPOSITORY_LINE = re.compile(r'^REPOSITORY = "([^"]*)"', re.MULTILINE)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.name for nb in NOTEBOOKS])
def test_notebook_install_cell_uses_settings_repository(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    found = REPOSITORY_LINE.findall(code)
    if not found:
        pytest.skip(f"{notebook.name} has no REPOSITORY line")
    assert set(found) == {settings.REPOSITORY}, "run `python -m agelib links --write`"


def test_notebook_with_repo_rewrites_only_the_repository_line():
    nb = {"cells": [{"cell_type": "code",
                     "source": ['REPOSITORY = "old/name"  # edit\n', "x = 1\n"]},
                    {"cell_type": "markdown", "source": ['REPOSITORY = "old/name"\n']}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out = json.loads(course.notebook_with_repo(json.dumps(nb), "me/course"))
    assert out["cells"][0]["source"] == ['REPOSITORY = "me/course"  # edit\n', "x = 1\n"]
    assert out["cells"][1]["source"] == ['REPOSITORY = "old/name"\n']


def test_readme_with_table_needs_the_markers():
    with pytest.raises(ValueError, match="markers"):
        course.readme_with_table("# no table here\n")
    text = f"intro\n{course.TABLE_START}\nold\n{course.TABLE_END}\nrest\n"
    assert course.readme_with_table(text) == (
        f"intro\n{course.TABLE_START}\n{course.chapter_table()}\n{course.TABLE_END}\nrest\n")


def committed_readme() -> tuple[str, Path]:
    """README's text and the committed results folder, or a skip on a plain install.

    In a git checkout, only the records git tracks count: a learner's own runs (`train`,
    `course`, `bench --save` all write to results/) must not make README's tables "wrong".
    """
    root = settings.repo_root()
    readme = root / "README.md"
    if not readme.exists():
        pytest.skip("README.md is absent")
    return readme.read_text(encoding="utf-8"), tracked_results(root)


@functools.lru_cache(maxsize=1)
def tracked_results(root: Path) -> Path:
    """A copy of the results/ files git tracks (results/ itself outside a git checkout)."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "results"],
                            capture_output=True, text=True)
    if listed.returncode != 0:
        return root / "results"
    copy = Path(tempfile.mkdtemp(prefix="agelib-tracked-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    for name in filter(None, listed.stdout.split("\0")):
        target = copy / Path(name).relative_to("results")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return copy


def test_write_readme_refuses_records_that_are_not_the_committed_ones(tmp_path, monkeypatch,
                                                                      capsys):
    readme = ROOT / "README.md"
    before = readme.read_bytes()
    monkeypatch.setenv("AGELIB_RESULTS", str(tmp_path))  # somewhere else, by the environment
    assert cli.main(["report", "--write-readme"]) == 2
    assert "AGELIB_RESULTS points to" in capsys.readouterr().err
    assert cli.main(["report", "--write-readme", "--results", str(tmp_path)]) == 2  # empty
    assert "no run record" in capsys.readouterr().err
    assert readme.read_bytes() == before
    monkeypatch.setattr(settings, "repo_root", lambda: None)  # agelib installed, no checkout
    assert cli.main(["report", "--write-readme"]) == 2
    assert "rewrites the course's README.md" in capsys.readouterr().err


def test_readme_results_block_is_generated_from_the_committed_records():
    """README's numbers come from results/ only: regenerate and compare."""
    from agelib import records

    text, results = committed_readme()
    assert records.readme_with_results(text, records.load_records(results)) == text, (
        "README's results block differs from the records: run "
        "`python -m agelib report --write-readme`")


def test_readme_course_run_table_matches_the_course_records():
    text, results = committed_readme()
    runs = course.load_course_runs(results / "course")
    assert course.readme_with_course_runs(text, runs) == text, (
        "README's course-run table differs from the records: run "
        "`python -m agelib report --write-readme`")


def test_readme_bench_table_matches_the_saved_benches():
    from agelib import bench

    text, results = committed_readme()
    runs = bench.load_bench_runs(results / "bench")
    assert bench.readme_with_latency(bench.readme_with_bench(text, runs), runs) == text, (
        "README's bench or latency table differs from results/bench: "
        "run `python -m agelib report --write-readme`")


def test_train_writes_a_bare_out_name_where_init_and_distill_look(monkeypatch, tmp_path):
    """`--out convnext.pt` then `--init-cnn convnext.pt` must name the same file."""
    from agelib import cli, training

    monkeypatch.setenv("AGELIB_HOME", str(tmp_path))
    seen = {}

    def fake_train(config, mode, checkpoint):
        seen["checkpoint"] = checkpoint
        raise SystemExit(0)  # stop before training

    monkeypatch.setattr(training, "train_age_model", fake_train)
    for out, expected in [("convnext.pt", training.checkpoint_path("convnext.pt")),
                          ("mine/convnext.pt", Path("mine/convnext.pt")),
                          ("./convnext.pt", Path("convnext.pt"))]:  # "./": this folder
        with pytest.raises(SystemExit):
            cli.main(["train", "--model", "resnet18", "--out", out])
        assert Path(seen["checkpoint"]) == expected
    assert training.checkpoint_path("convnext.pt").parent == tmp_path / "checkpoints"


def test_train_refuses_a_misspelt_model_before_reading_any_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGELIB_DATA", str(tmp_path / "not-there"))  # data would fail later
    assert cli.main(["train", "--model", "vit-tiny"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'vit-tiny'" in err and "python -m agelib models" in err
    assert cli.main(["train", "--head", "coral"]) == 2  # the default loss is l1
    assert "losses for a coral head: coral" in capsys.readouterr().err


def test_train_finds_a_teacher_where_evaluate_would_and_refuses_a_missing_one(
        tmp_path, monkeypatch, capsys):
    """A checkpoint in the current folder is found by `--distill-from` and `--init-cnn`
    as by `evaluate --checkpoint`; one that is nowhere fails before any data is read."""
    from agelib import training

    monkeypatch.setenv("AGELIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AGELIB_DATA", str(tmp_path / "not-there"))  # data would fail later
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher.pt").write_bytes(b"")
    monkeypatch.setattr(training, "train_age_model", lambda *a, **k: (_ for _ in ()).throw(
        SystemExit(0)))  # stop before training
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "resnet18", "--distill-from", "teacher.pt"])
    assert cli.main(["train", "--model", "hybrid_atto", "--init-cnn", "absent.pt"]) == 2
    assert "No checkpoint at 'absent.pt'" in capsys.readouterr().err
    assert training.find_checkpoint("teacher.pt") == Path("teacher.pt")


# --------------------------------------------------------------------------- --out and numbers
def test_out_that_is_a_folder_or_another_kind_of_file_is_refused_before_any_work(
        tmp_path, monkeypatch, capsys):
    from agelib import checkpoints, models, training

    monkeypatch.setenv("AGELIB_DATA", str(tmp_path / "not-there"))  # any work would fail later
    monkeypatch.setattr(training, "train_age_model", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("trained")))
    (tmp_path / "folder").mkdir()
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"a photo")
    model = checkpoints.save_checkpoint(models.create_model(backbone="test_resnet"),
                                        tmp_path / "model.pt")
    cases = [(["train", "--out", str(tmp_path / "folder")], "is a folder"),
             (["train", "--out", str(photo)], "is not a checkpoint"),
             (["pack", "--source", "synthetic", "--out", str(photo)], "is not a pack"),
             (["bench", "--latency-only", "--out", str(model)], "is not a bench result")]
    for argv, why in cases:
        assert cli.main(argv) == 2, argv
        assert why in capsys.readouterr().err
    assert photo.read_bytes() == b"a photo" and checkpoints.is_checkpoint(model)  # untouched


@pytest.mark.parametrize("argv", [["train", "--epochs", "0"], ["train", "--batch-size", "-5"],
                                  ["pack", "--size", "0"], ["pack", "--quality", "500"],
                                  ["course", "--epochs", "0"], ["bench", "--size", "0"]])
def test_sizes_and_counts_below_one_are_refused_by_argparse(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and "must be" in capsys.readouterr().err


def test_a_backbone_setting_the_model_does_not_take_is_a_message(capsys):
    assert cli.main(["train", "--backbone-arg", "vit_depth=4"]) == 2  # resnet18: no vit_depth
    assert "resnet18 does not take these --backbone-arg settings" in capsys.readouterr().err


def test_info_names_asked_for_synthetic_faces_and_a_table(tmp_path, monkeypatch):
    monkeypatch.setenv("AGELIB_DATA", "synthetic")
    assert cli.environment_info()["data"]["dataset"].startswith("synthetic (asked for")
    (tmp_path / "labels.csv").write_text("file,age\n")
    monkeypatch.setenv("AGELIB_DATA", str(tmp_path / "labels.csv"))
    assert cli.environment_info()["data"] == {"dataset": "table of labelled photos",
                                              "location": "labels.csv"}


def test_a_results_folder_under_home_is_expanded(monkeypatch, tmp_path):
    from agelib import records

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AGELIB_RESULTS", "~/my-results")
    assert records.results_dir() == tmp_path / "my-results"


def test_a_warning_reads_as_one_line_and_the_format_is_given_back():
    """Outside pytest (which records warnings instead of printing them), as a user runs it."""
    import subprocess
    import sys

    code = """if True:
        import warnings
        from agelib import cli
        def warns(args):
            warnings.warn("offline: training from scratch", UserWarning)
            return 0
        cli.cmd_models = warns
        before = warnings.formatwarning
        assert cli.main(["models"]) == 0 and warnings.formatwarning is before
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "warning: offline: training from scratch\n"  # no file, no line


# --------------------------------------------------------------------------- options reach the work
def test_train_passes_every_option_to_the_training_run(tmp_path, monkeypatch):
    """Catches a CLI that ignores --seed, --lr, --pretrained, --balance, --tag or the
    --init-*/--distill-* options (or swaps --init-cnn and --init-vit)."""
    from agelib import training

    monkeypatch.chdir(tmp_path)
    for name in ("cnn.pt", "vit.pt", "teacher.pt"):
        (tmp_path / name).write_bytes(b"")  # found by name; never read before training
    seen = {}

    def fake_train(config, mode, checkpoint):
        seen["config"] = config
        raise SystemExit(0)  # stop before training

    monkeypatch.setattr(training, "train_age_model", fake_train)
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "hybrid_atto", "--seed", "7", "--lr", "0.02",
                  "--pretrained", "--balance", "0.5", "--tag", "mine", "--init-cnn", "cnn.pt",
                  "--init-vit", "vit.pt", "--distill-from", "teacher.pt",
                  "--distill-alpha", "0.3", "--backbone-arg", "vit_depth=2"])
    c = seen["config"]
    assert (c.seed, c.lr, c.model.pretrained, c.balance, c.tag) == (7, 0.02, True, 0.5, "mine")
    assert c.init_from == {"cnn": "cnn.pt", "vit": "vit.pt"}
    assert (c.distill_from, c.distill_alpha) == ("teacher.pt", 0.3)
    assert c.model.backbone_args == {"vit_depth": 2}  # a number, not the text "2"


def test_pack_passes_its_quality_and_takes_100(tmp_path, monkeypatch, capsys):
    """Catches `pack` ignoring --quality, or refusing the documented top value 100."""
    import types

    seen = {}
    monkeypatch.setattr(sources, "load_faces", lambda source=None, verbose=True:
                        types.SimpleNamespace(name="synthetic", samples=[0, 1]))

    def fake_write(faces, size, out, quality=80):
        seen.update(size=size, quality=quality)
        Path(out).write_bytes(b"")

    monkeypatch.setattr(sources, "write_faces_pack", fake_write)
    out = tmp_path / "p.tar"
    assert cli.main(["pack", "--source", "synthetic", "--size", "16", "--quality", "100",
                     "--out", str(out)]) == 0, capsys.readouterr().err
    assert seen == {"size": 16, "quality": 100}


def test_download_passes_dest_archive_and_the_default_url(tmp_path, monkeypatch):
    """Catches `download` ignoring --dest or --archive, or losing the default URL."""
    from agelib.data import download

    seen = {}
    monkeypatch.setattr(download, "download_utkface",
                        lambda dest, url=None, archive=None: seen.update(
                            dest=Path(dest), url=url, archive=archive))
    archive = str(tmp_path / "UTKFace.tar.gz")
    assert cli.main(["download", "--dest", str(tmp_path / "d"), "--archive", archive]) == 0
    assert seen == {"dest": tmp_path / "d", "url": download.URL, "archive": archive}


def test_landmarks_passes_n_and_seed(monkeypatch, capsys):
    """Catches `landmarks` ignoring --n or --seed (another sample than the one asked for)."""
    from agelib import faces

    seen = {}
    monkeypatch.setattr(sources, "load_faces", lambda source=None, verbose=True: "faces")

    def fake_measure(faces_, n=1000, seed=1, **kwargs):
        seen.update(faces=faces_, n=n, seed=seed)
        return {"data": "x", "n_found": n, "n_images": n, "seed": seed,
                "template": [[0.3, 0.3]] * 5}

    monkeypatch.setattr(faces, "measure_template", fake_measure)
    assert cli.main(["landmarks", "--n", "12", "--seed", "5"]) == 0
    assert seen == {"faces": "faces", "n": 12, "seed": 5}
    assert "on 12 of 12 images (seed 5)" in capsys.readouterr().out


def test_bench_uses_the_smoke_defaults_and_honours_its_switches(monkeypatch, tmp_path, capsys):
    """Catches `bench` swapping the smoke and full defaults, inverting --no-data-only, or
    ignoring --save."""
    from agelib import bench, data

    seen, saved = {}, []
    monkeypatch.setattr(data, "load_faces", lambda source=None, verbose=True: "faces")
    monkeypatch.setattr(bench, "run_bench", lambda **kw: seen.update(kw) or {"kind": "bench"})
    monkeypatch.setattr(bench, "save_bench", lambda result: saved.append(result) or
                        tmp_path / "b.json")
    assert settings.smoke_mode()  # the tests run in smoke mode
    assert cli.main(["bench", "--device", "cpu"]) == 0
    assert (seen["batch_size"], seen["steps"], seen["warmup"], seen["windows"],
            seen["n_images"], seen["latency_repeats"]) == (8, 2, 1, 2, 64, 3)
    assert seen["data_only"] is True and saved == []
    assert cli.main(["bench", "--device", "cpu", "--no-data-only", "--save"]) == 0
    assert seen["data_only"] is False and saved == [{"kind": "bench"}]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["bench", "--device", "cpu", "--out", "new/b.json"]) == 0
    assert f"wrote {Path('new', 'b.json')}" in capsys.readouterr().out  # where, not only the name
    assert json.loads((tmp_path / "new" / "b.json").read_text()) == {"kind": "bench"}


# --------------------------------------------------------------------------- links, on a scratch checkout
@pytest.fixture
def scratch_course(tmp_path, monkeypatch):
    """A README and two of the chapters in a scratch folder, with course.notebooks_dir on it."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (tmp_path / "README.md").write_text(f"# x\n{course.TABLE_START}\n{course.TABLE_END}\n")
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": ["import os\n", 'REPOSITORY = "old/name"  # edit\n']}
    for ch in course.CHAPTERS[:2]:
        (folder / ch.file).write_text(json.dumps({"cells": [cell], "metadata": {},
                                                  "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.setattr(course, "notebooks_dir", lambda: folder)
    return folder


def test_chapters_not_written_yet_have_no_link(scratch_course):
    """Catches a Colab link in README for every chapter, whether its notebook exists or not."""
    rows = course.chapter_table("me/course").splitlines()[2:]
    assert "Open in Colab" in rows[1] and rows[2].endswith("| coming soon |")
    assert sum("coming soon" in row for row in rows) == len(course.CHAPTERS) - 2


def test_write_links_rewrites_readme_and_notebooks_then_nothing(scratch_course, monkeypatch):
    """Catches write_links skipping the notebooks, ignoring settings.REPOSITORY, or
    rewriting (and listing) files that were already up to date."""
    monkeypatch.setattr(settings, "REPOSITORY", "me/course")
    assert course.write_links() == ["README.md", course.CHAPTERS[0].file, course.CHAPTERS[1].file]
    nb = json.loads((scratch_course / course.CHAPTERS[1].file).read_text())
    assert nb["cells"][0]["source"][1] == 'REPOSITORY = "me/course"  # edit\n'
    assert "github/me/course/blob" in (scratch_course.parent / "README.md").read_text()
    assert course.write_links() == []  # now in step: nothing written


def test_readme_with_table_needs_both_markers():
    """Catches a README with only one marker accepted (then split apart with a bare unpacking
    error, instead of the message that says which markers are needed)."""
    for text in (f"{course.TABLE_START}\nold\n", f"old\n{course.TABLE_END}\n"):
        with pytest.raises(ValueError, match="needs the markers"):
            course.readme_with_table(text)


def documented_commands() -> list[tuple[str, str]]:
    """Every ``python -m agelib ...`` that README, results/README, .ci/README and the
    chapters' prose show in code (a span may wrap over lines): (where, arguments)."""
    texts = [(name, (ROOT / name).read_text(encoding="utf-8"))
             for name in ("README.md", "results/README.md", ".ci/README.md")]
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        texts += [(path.name, "".join(c["source"])) for c in json.loads(path.read_text())["cells"]
                  if c["cell_type"] == "markdown"]
    found = set()
    for name, text in texts:
        for block, span in re.findall(r"```[a-z]*\n(.*?)```|`([^`]+)`", text, flags=re.S):
            lines = [line.split("#")[0] for line in block.splitlines()] if block else [span]
            for line in (" ".join(line.split()) for line in lines):
                if "python -m agelib" in line:
                    found.add((name, line.split("python -m agelib", 1)[1].strip()))
    return sorted(found)


def test_every_command_the_docs_show_parses():
    """Catches a renamed command or option that README or a chapter still shows: a learner's
    first copy-paste would end in `error: unrecognized arguments`."""
    import shlex

    parser = cli.build_parser()
    commands = next(a.choices for a in parser._actions if a.choices and "train" in a.choices)
    shown = documented_commands()
    assert len(shown) > 30  # the extraction finds them all, not none
    for where, args in shown:
        words = shlex.split(args)
        if len(words) <= 1 or " | " in args:  # a mention ("`python -m agelib predict`"), or
            # README's layout listing the commands: each must be one
            assert set(w for w in words if w != "|") <= set(commands), (where, args)
            continue
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{where} shows `python -m agelib {args}`, which does not parse")
