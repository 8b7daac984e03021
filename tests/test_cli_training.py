"""``python -m agelib train | evaluate | report`` run as a user runs them.

The data is a folder of 40 synthetic faces written for this module (AGELIB_DATA),
so the result does not depend on whether real UTKFace is configured. Each
command starts a fresh Python (about 5 s of imports), so the runs that do not
wait for a checkpoint start together, and the two that do start as soon as it exists.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from agelib import checkpoints, cli, inference, models, records
from agelib.data import synthetic
from conftest import Runs, run_record

ROOT = Path(__file__).resolve().parents[1]
N_FACES = 40


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli-training")
    faces = synthetic.write_synthetic_faces(base / "faces", n=N_FACES, seed=1, size=64)
    unlabelled = base / "unlabelled"
    unlabelled.mkdir()
    (unlabelled / "readme.txt").write_text("no faces here\n")
    (unlabelled / "photo.jpg").write_bytes((faces / next(
        p.name for p in faces.iterdir() if p.suffix == ".jpg")).read_bytes())  # no age in the name
    not_checkpoint = base / "notes.pt"
    not_checkpoint.write_text("not a checkpoint\n")
    # a valid checkpoint, so that the unlabelled folder is what the error is about
    other = checkpoints.save_checkpoint(models.create_model(backbone="test_resnet"),
                                        base / "other.pt", train_config={"image_size": 32})
    return {"base": base, "faces": faces, "unlabelled": unlabelled, "home": base / "home",
            "results": base / "results", "ck": base / "out" / "model.pt",
            "not_checkpoint": not_checkpoint, "other": other}


@pytest.fixture(scope="module")
def runs(work):
    env = {k: v for k, v in os.environ.items() if k != "AGELIB_DEVICE"}
    env.update(AGELIB_HOME=str(work["home"]), AGELIB_RESULTS=str(work["results"]),
               AGELIB_DATA=str(work["faces"]), AGELIB_SMOKE="1", HF_HUB_OFFLINE="1")
    runs = Runs(env)
    runs.start("train", "train", "--model", "resnet18", "--epochs", "1", "--image-size", "32",
               "--batch-size", "16", "--out", work["ck"])
    runs.start("not_checkpoint", "evaluate", "--checkpoint", work["not_checkpoint"],
               "--images", work["faces"])
    runs.start("missing", "evaluate", "--checkpoint", work["base"] / "missing.pt",
               "--images", work["faces"])
    runs.start("unlabelled", "evaluate", "--checkpoint", work["other"],
               "--images", work["unlabelled"])
    runs.start("bad_head", "train", "--head", "ordinal", "--epochs", "1")
    runs.start("hybrid", "train", "--model", "hybrid_atto", "--backbone-arg", "bridge=project",
               "--head", "coral", "--loss", "coral", "--epochs", "1", "--image-size", "32",
               "--batch-size", "16", "--tag", "cli-hybrid", "--variant", "strong augmentation",
               "--augment-scale", "0.6", "1.0", "--rotate", "10", "--jitter", "0.2",
               "--grayscale", "0.1", "--no-flip", "--drop-path", "0.1", "--schedule",
               "warmup_cosine", "--warmup", "0.2", "--weight-decay", "0.1",
               "--out", work["base"] / "out" / "hybrid.pt")
    yield runs
    runs.stop()


@pytest.fixture(scope="module")
def trained(runs, work):
    """The train run, done; then the runs that need its checkpoint and record are started."""
    result = runs["train"]
    assert result.returncode == 0, result.stderr
    runs.start("evaluate", "evaluate", "--checkpoint", work["ck"], "--images", work["faces"],
               "--json")
    runs.start("report", "report", "--results", work["results"], "--tag", "cli")
    return result


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr  # one line that says what is wrong...
    assert "Traceback" not in result.stderr and result.stdout == ""  # ...and no traceback
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


# --------------------------------------------------------------------------- train
def test_train_writes_a_checkpoint_and_a_run_record(trained, work):
    out = trained.stdout
    assert "SMOKE mode" in out and "at 32 px, 1 epoch(s)" in out  # what really runs
    assert f"checkpoint: {work['ck']}" in out
    assert re.search(r"resnet18 \+ regression head, l1 loss, 1 epochs on synthetic \(smoke\): "
                     r"valid MAE [\d.]+, test MAE [\d.]+", out), out
    saved = list(work["results"].glob("*-resnet18-*.json"))  # the hybrid run writes its own
    assert len(saved) == 1
    r = json.loads(saved[0].read_text())
    assert (r["backbone"], r["head"], r["loss"], r["tag"]) == ("resnet18", "regression", "l1", "cli")
    assert re.search(rf"record: \S*{re.escape(saved[0].name)}$", out, re.M)  # said where
    assert (r["epochs"], r["image_size"], r["batch_size"], r["mode"]) == (1, 32, 16, "smoke")
    assert r["n_train"] + r["n_valid"] + r["n_test"] == N_FACES  # the AGELIB_DATA folder

    model, payload = checkpoints.load_checkpoint(work["ck"])
    assert model.config.backbone == "resnet18" and model.config.pretrained is False
    assert payload["train_config"]["image_size"] == 32
    assert payload["record"]["test_mae"] == r["test_mae"]


def test_train_with_an_unknown_head_lists_the_heads(runs):
    assert_clean_error(runs["bad_head"], "unknown head 'ordinal'", *models.HEADS)


# --------------------------------------------------------------------------- evaluate
def test_evaluate_json_gives_n_mae_and_cs5_like_evaluate_folder(trained, runs, work):
    result = runs["evaluate"]
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert list(scores) == ["n", "mae", "cs5", "skipped", "note"] and scores["skipped"] == []
    assert "trained on" in scores["note"] and "These are the photos" in result.stderr
    assert "note: " in result.stderr and "mode on SYNTHETIC faces: this score" in scores["note"]
    assert scores["n"] == N_FACES
    expected = inference.evaluate_folder(work["ck"], work["faces"], device="cpu")
    assert expected["n"] == N_FACES and expected["skipped"] == []
    assert scores["mae"] == pytest.approx(expected["mae"], abs=1e-3)
    assert scores["cs5"] == pytest.approx(expected["cs5"], abs=1e-3)
    assert scores["mae"] > 0 and 0 <= scores["cs5"] <= 1


def test_evaluate_a_file_that_is_not_a_checkpoint(runs):
    assert_clean_error(runs["not_checkpoint"], "'notes.pt' is not a readable checkpoint")


def test_evaluate_a_missing_checkpoint(runs):
    assert_clean_error(runs["missing"], "No checkpoint at", "missing.pt", "agelib train")


def test_evaluate_a_folder_without_labelled_images(runs):
    assert_clean_error(runs["unlabelled"], "No usable image", "unlabelled")


# --------------------------------------------------------------------------- report
def test_report_prints_the_markdown_table_of_the_run(trained, runs, work):
    result = runs["report"]
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| tag | data | mode | model | head | loss |") and len(lines) == 3
    r = json.loads(next(work["results"].glob("*-resnet18-*.json")).read_text())
    assert lines[2].startswith("| cli | synthetic | smoke | resnet18 | regression | l1 | no | 32 | 1 | 1 |")
    assert f"| {r['test_mae']:.2f} |" in lines[2] and f"| {r['valid_mae']:.2f} |" in lines[2]
    table = records.report_table(records.load_records(work["results"]), tag="cli")
    assert result.stdout.strip() == records.to_markdown(table)


def test_report_without_records_says_so(tmp_path, capsys):
    (tmp_path / "none").mkdir()
    assert cli.main(["report", "--results", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.strip() == "_no run records yet_"
    records.save_record({"id": "r1", "tag": "ch02", "backbone": "resnet18", "mode": "smoke",
                        "test_mae": 9.0}, tmp_path / "some")
    assert cli.main(["report", "--results", str(tmp_path / "some"), "--tag", "mine"]) == 0
    assert capsys.readouterr().out.strip() == ("_no run record matches --tag mine; the 1 "
                                               "records have the tags: ch02_")


def test_train_builds_a_registered_hybrid_with_backbone_settings(runs, work):
    result = runs["hybrid"]
    assert result.returncode == 0, result.stderr
    model, payload = checkpoints.load_checkpoint(work["base"] / "out" / "hybrid.pt")
    assert model.config.backbone == "hybrid_atto" and model.config.head == "coral"
    assert model.config.backbone_args == {"bridge": "project"}
    assert model.backbone.config.bridge == "project" and model.backbone.token_grid == (1, 1)
    assert payload["record"]["backbone"] == "hybrid_atto"
    r = payload["record"]
    assert r["variant"] == "strong augmentation" and r["schedule"] == "warmup_cosine"
    c = r["config"]  # every training setting the flags name reaches the run and its record
    assert (list(c["augment_scale"]), c["rotate"], c["jitter"], c["grayscale"], c["flip"]) == (
        [0.6, 1.0], 10.0, 0.2, 0.1, False)
    assert (c["warmup"], c["weight_decay"], c["model"]["drop_path_rate"]) == (0.2, 0.1, 0.1)


# --------------------------------------------------------------------------- report --mode
def test_report_mode_keeps_only_the_runs_of_that_mode(tmp_path, capsys):
    """Catches `report --mode` being ignored (smoke numbers printed beside results)."""
    records.save_record(run_record(0, 6.0), tmp_path)
    records.save_record(run_record(0, 3.0, mode="smoke", epochs=1), tmp_path)
    assert cli.main(["report", "--results", str(tmp_path), "--mode", "full"]) == 0
    out = capsys.readouterr().out
    assert "| 6.00 |" in out and "| 3.00 |" not in out and "| smoke |" not in out
