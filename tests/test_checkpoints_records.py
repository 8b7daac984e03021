"""Checkpoints (agelib.checkpoints) and run records (agelib.records), without training.

A checkpoint must rebuild its model exactly and load only plain data; records are
the only source of reported numbers, so the report's grouping is checked by hand.
"""

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_record

import agelib
from agelib import checkpoints, models, records, settings
from agelib.checkpoints import FORMAT, load_checkpoint, save_checkpoint

TINY = "test_resnet"


def tiny_model(**overrides) -> models.AgeModel:
    """A model whose every tensor (batch-norm statistics too) differs from a fresh one."""
    torch.manual_seed(1)
    model = models.create_model(models.ModelConfig(TINY, **overrides))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) * 0.2 + (0.9 if "var" in name else -0.1))
    return model


def batch(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- checkpoints
def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_partial_one(tmp_path):
    """Catches written_whole renaming (or leaving) a half-written file after an error."""
    from agelib.files import written_whole

    target = tmp_path / "model.pt"
    target.write_text("the old checkpoint")
    with pytest.raises(OSError, match="disk full"):
        with written_whole(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "the old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.parametrize("overrides", [{"head": "regression", "hidden": 8, "age_range": (1, 90)},
                                       {"head": "coral", "num_classes": 20, "min_age": 1,
                                        "decode": "label"}])
def test_a_checkpoint_rebuilds_the_same_model(tmp_path, overrides):
    model = tiny_model(**overrides).eval()
    path = save_checkpoint(model, tmp_path / "sub" / "model.pt", train_config={"image_size": 32},
                           record={"test_mae": 7.5})
    assert path == tmp_path / "sub" / "model.pt" and path.is_file()
    assert not list(path.parent.glob("*.partial"))  # written whole, then renamed

    loaded, payload = load_checkpoint(path)
    assert not loaded.training  # ready to predict
    assert loaded.config == model.config
    assert payload["format"] == FORMAT and payload["train_config"] == {"image_size": 32}
    assert payload["record"] == {"test_mae": 7.5}
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(loaded(batch()), model(batch()))
    assert torch.equal(loaded.predict_age(batch()), model.predict_age(batch()))


def test_a_pretrained_checkpoint_loads_offline_and_still_says_pretrained(tmp_path, monkeypatch):
    model = tiny_model()
    model.config.pretrained = True  # as if it had started from ImageNet weights
    path = save_checkpoint(model, tmp_path / "model.pt")
    monkeypatch.setenv("AGELIB_SMOKE", "0")  # no fallback: a download attempt would raise
    loaded, _ = load_checkpoint(path)
    assert loaded.config.pretrained is True
    assert torch.equal(loaded.state_dict()["head.net.0.weight"],
                       model.state_dict()["head.net.0.weight"])


def test_save_checkpoint_needs_a_model_with_a_config(tmp_path):
    model = tiny_model()
    bare = models.AgeModel(model.backbone, model.head)
    with pytest.raises(ValueError, match="no config.*create_model"):
        save_checkpoint(bare, tmp_path / "model.pt")


def _touch(path):
    """What a malicious pickle would run on loading; here it only leaves a trace."""
    open(path, "w").close()
    return {}


class Payload:
    def __init__(self, trace):
        self.trace = trace

    def __reduce__(self):
        return _touch, (self.trace,)


def test_loading_refuses_pickled_objects(tmp_path):
    trace = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    good = tiny_model()
    torch.save({"format": FORMAT, "model_config": good.config.to_dict(),
                "state_dict": good.state_dict(), "extra": Payload(trace)}, path)
    with pytest.raises(ValueError, match="'evil.pt' is not a readable checkpoint"):
        load_checkpoint(path)
    assert not trace.exists(), "loading ran code from the file (weights_only was not used)"


def test_loading_a_file_that_is_not_a_checkpoint_says_so(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="'notes.pt' is not a readable checkpoint"):
        load_checkpoint(text)
    weights = tmp_path / "weights.pt"
    torch.save(tiny_model().state_dict(), weights)  # a bare state dict: readable, but no config
    with pytest.raises(ValueError, match="'weights.pt' is not an agelib checkpoint.*agelib train"):
        load_checkpoint(weights)


def test_a_bare_name_is_found_where_train_out_writes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AGELIB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    stored = tmp_path / "home" / "checkpoints" / "mine.pt"
    save_checkpoint(tiny_model(), stored)
    assert load_checkpoint("mine.pt")[0].config == tiny_model().config
    save_checkpoint(tiny_model(), tmp_path / "mine.pt")  # one in the current folder comes first
    assert checkpoints.find_checkpoint("mine.pt") == Path("mine.pt")


def test_loading_a_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint at .*missing.pt.*--out"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint either


def test_a_misspelt_checkpoint_name_is_answered_with_the_folder_and_close_names(
        tmp_path, monkeypatch):
    """Catches a typo answered with a placeholder folder ("<data home>") and no hint."""
    monkeypatch.setenv("AGELIB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tiny_model(), tmp_path / "home" / "checkpoints" / "coral.pt")
    with pytest.raises(FileNotFoundError) as err:
        checkpoints.find_checkpoint("corall.pt")
    assert str(tmp_path / "home" / "checkpoints") in str(err.value)
    assert "Did you mean coral.pt?" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        checkpoints.find_checkpoint("zebra.pt")
    assert "Did you mean" not in str(err.value)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    path = save_checkpoint(tiny_model(head="classification", num_classes=20), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["num_classes"] = 30  # the config no longer matches the weights
    torch.save(payload, path)
    with pytest.raises(ValueError, match="'m.pt': the weights do not fit the saved config"):
        load_checkpoint(path)
    payload["model_config"] = {**payload["model_config"], "num_classes": 20, "colour": "red"}
    torch.save(payload, path)
    with pytest.raises(ValueError, match="unknown model config field"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- records
def record(seed: int = 0, test_mae: float = 6.0, date: str = "2025-01-01T00:00:00+00:00",
           **overrides) -> dict:
    """A run record as ``records.make_record`` writes it (the fields reports use)."""
    r = {"id": f"run-{seed}-{test_mae}-{date[:10]}", "tag": "ch02", "backbone": "resnet18",
         "head": "regression", "loss": "l1", "pretrained": False, "data": "synthetic",
         "mode": "smoke", "epochs": 1, "image_size": 64, "seed": seed, "params": 11_000_000,
         "valid_mae": test_mae + 0.5, "test_mae": test_mae, "test_cs5": 0.4, "device": "cpu (x)",
         "seconds": 3.0, "date": date, "config": {"model": {"age_range": (1.0, 90.0)}}}
    r.update(overrides)
    assert set(records.COLUMNS) <= set(r)
    return r


def test_records_round_trip_through_json_files(tmp_path):
    first, second = record(0, 6.0, np_value=np.float32(0.5)), record(1, 8.0)
    for r in (first, second):
        records.save_record(r, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(
        f"{r['id']}.json" for r in (first, second))
    table = records.load_records(tmp_path)
    assert len(table) == 2 and set(records.COLUMNS) <= set(table.columns)
    row = table.set_index("seed").loc[1]
    assert row["test_mae"] == 8.0 and row["backbone"] == "resnet18"
    saved = json.loads((tmp_path / f"{first['id']}.json").read_text())
    assert saved["np_value"] == 0.5 and saved["config"]["model"]["age_range"] == [1.0, 90.0]


def test_save_record_goes_to_agelib_results_and_refuses_what_json_cannot_hold(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("AGELIB_RESULTS", str(tmp_path / "results"))
    assert records.results_dir() == tmp_path / "results"
    path = records.save_record(record())
    assert path.parent == tmp_path / "results" and path.is_file()
    with pytest.raises(TypeError, match="cannot store"):
        records.save_record(record(seed=5, bad=object()))


def test_load_records_of_a_missing_folder_is_an_empty_table(tmp_path):
    table = records.load_records(tmp_path / "nothing-here")
    assert table.empty and list(table.columns) == records.COLUMNS
    assert records.report_table(table).empty
    assert "no run records yet" in records.to_markdown(records.report_table(table))


def test_report_table_keeps_runs_of_one_setting_on_two_devices_apart():
    table = pd.DataFrame([record(0, 6.0), record(1, 8.0),
                          record(2, 5.0, device="cuda (NVIDIA H200)")])  # a GPU seed, in bf16
    report = records.report_table(table)
    assert sorted(zip(report["device"], report["runs"])) == [("cpu (x)", 2),
                                                             ("cuda (NVIDIA H200)", 1)]


def test_report_table_averages_seeds_and_keeps_the_latest_run_of_each_seed():
    table = pd.DataFrame([
        record(0, 9.0, "2025-01-01T00:00:00+00:00"),  # replaced by the re-run below
        record(0, 6.0, "2025-01-02T00:00:00+00:00"),
        record(1, 11.0, "2025-01-01T12:00:00+00:00"),
        record(2, 7.0, "2025-01-01T06:00:00+00:00"),
        record(0, 4.0, "2025-01-01T00:00:00+00:00", backbone="vit_small"),  # another model
        record(0, 5.0, "2025-01-01T00:00:00+00:00", tag="ch03"),  # another chapter
    ])
    report = records.report_table(table)
    assert len(report) == 3
    row = report[(report.backbone == "resnet18") & (report.tag == "ch02")].iloc[0]
    assert row["runs"] == 3
    assert row["test_mae"] == pytest.approx(8.0)  # the mean of 6, 11, 7 (not their median, 7)
    assert row["test_mae_std"] == pytest.approx(7 ** 0.5)  # sample std of 6, 11, 7
    assert row["valid_mae"] == pytest.approx(8.5) and row["date"] == "2025-01-02T00:00:00+00:00"
    vit = report[report.backbone == "vit_small"].iloc[0]
    assert vit["runs"] == 1 and math.isnan(vit["test_mae_std"])

    every = records.report_table(table, latest_only=False)
    assert every[(every.backbone == "resnet18") & (every.tag == "ch02")].iloc[0]["runs"] == 4

    only = records.report_table(table, tag="ch03")
    assert len(only) == 1 and only.iloc[0]["test_mae"] == 5.0


def test_per_seed_pairs_runs_by_seed_and_keeps_the_latest_of_each():
    table = pd.DataFrame([
        record(0, 9.0, "2025-01-02T00:00:00+00:00", variant="from scratch"),
        record(0, 7.0, "2025-01-01T00:00:00+00:00", variant="from scratch"),  # older: dropped
        record(1, 8.0, "2025-01-01T00:00:00+00:00", variant="from scratch"),
        record(0, 6.0, "2025-01-03T00:00:00+00:00", variant="three-stage"),  # seed 0 only
        record(0, 5.0, "2025-01-01T00:00:00+00:00", variant="three-stage", tag="ch03"),
    ])
    seeds = records.per_seed(table, tag="ch02")
    assert list(seeds.columns) == [0, 1]
    assert seeds.loc[("resnet18", "from scratch")].tolist() == [9.0, 8.0]
    assert seeds.loc[("resnet18", "three-stage"), 0] == 6.0  # not ch03's 5.0
    assert math.isnan(seeds.loc[("resnet18", "three-stage"), 1])
    assert records.per_seed(table, tag="nothing").empty


def test_to_markdown_shows_one_line_per_setting_with_mean_and_std():
    table = pd.DataFrame([record(0, 6.0), record(1, 8.0), record(0, 4.0, backbone="vit_small",
                                                                 pretrained=True)])
    text = records.to_markdown(records.report_table(table))
    lines = text.splitlines()
    assert lines[0].startswith("| tag | data | mode | model |") and set(lines[1]) == {"|", "-"}
    assert len(lines) == 4
    resnet = next(line for line in lines if "resnet18" in line)
    cells = [c.strip() for c in resnet.strip("|").split("|")][1:]  # after the tag
    assert cells[:9] == ["synthetic", "smoke", "resnet18", "regression", "l1", "no", "64", "1", "2"]
    assert cells[9] == "7.00 ± 1.41" and cells[10] == "0.400" and cells[12] == "7.50"
    assert cells[11] == "–"  # these records have no flip-averaged score: a dash, not a zero
    vit = next(line for line in lines if "vit_small" in line)
    assert "| yes |" in vit and "| 4.00 |" in vit and "±" not in vit  # one run: no spread
    flips = records.to_markdown(records.report_table(pd.DataFrame(
        [record(0, 6.0, test_mae_flip=5.0), record(1, 8.0, test_mae_flip=7.0)])))
    assert "| 7.00 ± 1.41 | 0.400 | 6.00 | 7.50 |" in flips  # flip-averaged: the seeds' mean
    variant = records.to_markdown(records.report_table(pd.DataFrame([record(0, 6.0, variant="no flips")])))
    assert "| resnet18 (no flips) |" in variant  # a run's variant names what it changed
    assert records.to_markdown(records.report_table(pd.DataFrame(columns=records.COLUMNS))) == \
        "_no run records yet_"


def test_runs_of_one_backbone_with_other_settings_are_other_models():
    small = record(0, 9.0, "2025-01-02T00:00:00+00:00")
    small["config"]["model"]["backbone_args"] = {"depth": 2, "embed_dim": 80}
    report = records.report_table(pd.DataFrame([record(0, 6.0), small]))
    assert len(report) == 2  # not one run replacing the other as a re-run of the same model
    text = records.to_markdown(report)
    assert "| resnet18 |" in text and "| resnet18 [depth=2, embed_dim=80] |" in text


def test_runs_told_apart_only_by_their_recipe_are_not_seeds_of_one_setting():
    def run(seed, mae, lr, **config):
        return record(seed, mae, config={"lr": lr, "model": {}, **config})

    sweep = records.report_table(pd.DataFrame([run(0, 6.0, 1e-3), run(1, 20.0, 1e-2)]))
    assert sorted(sweep["test_mae"]) == [6.0, 20.0] and set(sweep["runs"]) == {1}
    text = records.to_markdown(sweep)
    assert "| resnet18 · lr=0.001 |" in text and "| resnet18 · lr=0.01 |" in text
    # a field an older record lacks counts as its default; speed switches are not the recipe
    old = record(0, 6.0, config={"model": {}})
    new = record(1, 8.0, config={"model": {"drop_rate": 0.0}, "balance": 0.0, "compile": True})
    same = records.report_table(pd.DataFrame([old, new]))
    assert same["runs"].tolist() == [2] and same["recipe_note"].tolist() == [""]
    # stages started from a checkpoint of their own seed are seeds of one setting
    staged = [record(s, 6.0 + s, config={"model": {}, "init_from": {"cnn": f"cnn-s{s}.pt"}})
              for s in (0, 1)]
    assert records.report_table(pd.DataFrame(staged))["runs"].tolist() == [2]


def test_per_seed_refuses_to_pair_runs_of_different_settings():
    table = pd.DataFrame([record(0, 6.0), record(0, 9.0, loss="mse")])
    with pytest.raises(ValueError, match="resnet18 .no variant. with one seed differ in loss"):
        records.per_seed(table, tag="ch02")


def test_an_undated_record_counts_as_the_older_one():
    undated = record(0, 9.0)
    undated.pop("date")
    report = records.report_table(pd.DataFrame([record(0, 6.0), undated]))
    assert report["test_mae"].tolist() == [6.0]


def test_code_version_names_agelibs_version_and_the_commit():
    version = records.code_version()
    # "0.1.0", or from a git checkout "0.1.0+1a2b3c4" ("+1a2b3c4.dirty" with edits)
    assert re.fullmatch(re.escape(agelib.__version__) + r"(\+[0-9a-f]{4,40}(\.dirty)?)?", version)


def test_code_version_of_a_checkout_that_is_not_installed_still_names_the_version(monkeypatch):
    """Catches "unknown+<commit>" in the records of a run from a checkout on PYTHONPATH (the
    lent GPU's way), which then could not say which release of agelib made them."""
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert records.code_version().split("+")[0] == agelib.__version__


def test_the_package_and_pyproject_give_one_version():
    """Catches a release that bumps one of the two: records, exports and `info` read the
    package's, pip reads pyproject.toml's."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    # a regex, not tomllib: the course supports Python 3.10, which has none
    assert re.findall(r'^version = "([^"]+)"', pyproject, flags=re.M) == [agelib.__version__]


def test_two_records_with_the_same_id_are_both_kept(tmp_path):
    from agelib import records

    first = records.save_record(record(test_mae=1.0, id="same"), tmp_path)
    second = records.save_record(record(test_mae=2.0, id="same"), tmp_path)
    assert first != second and len(list(tmp_path.glob("*.json"))) == 2
    assert sorted(records.load_records(tmp_path)["test_mae"]) == [1.0, 2.0]


def test_running_a_chapter_does_not_make_the_code_dirty(tmp_path, monkeypatch):
    """Only the library counts: a chapter rewrites its notebook and adds records as it runs."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "agelib").mkdir()
    (tmp_path / "agelib" / "x.py").write_text("a = 1\n")
    (tmp_path / "notebook.ipynb").write_text("{}\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    monkeypatch.setattr(records.settings, "repo_root", lambda: tmp_path)
    (tmp_path / "notebook.ipynb").write_text('{"outputs": 1}\n')
    assert not records.code_version().endswith(".dirty")
    (tmp_path / "agelib" / "x.py").write_text("a = 2\n")
    assert records.code_version().endswith(".dirty")


def test_same_budget_keeps_each_familys_plain_run_at_one_size_and_length():
    rows = [record(0, 6.0, tag="ch02"), record(0, 6.5, tag="ch02", loss="mse"),
            record(0, 7.0, tag="ch05", backbone="vit_tiny"),
            record(0, 7.5, tag="ch05", backbone="vit_tiny", variant="regularised"),
            record(0, 5.0, tag="ch06", backbone="convnext_tiny"),
            record(0, 4.0, tag="ch06", backbone="efficientnet_lite0", pretrained=True),
            record(0, 5.5, tag="ch07", backbone="hybrid_paper"),
            record(0, 3.0, tag="ch07", backbone="hybrid_paper", epochs=2),
            record(0, 3.5, tag="ch07", backbone="hybrid_paper", image_size=128)]
    report = records.report_table(pd.DataFrame(rows))
    kept = records.same_budget(report, "synthetic", "smoke", 64, 1)
    assert kept["backbone"].tolist() == ["convnext_tiny", "hybrid_paper", "resnet18", "vit_tiny"]
    assert kept["test_mae"].is_monotonic_increasing
    six = records.same_budget(report, "synthetic", "smoke", 64, 1, tags=("ch02", "ch05", "ch06"))
    assert "hybrid_paper" not in set(six["backbone"])
    assert records.same_budget(report.iloc[:0], "synthetic", "smoke", 64, 1).empty
    with pytest.raises(ValueError, match="add it to records.FAMILY_RUNS"):
        records.same_budget(report, "synthetic", "smoke", 64, 1, tags=("ch02", "ch04"))


def test_a_bad_record_is_skipped_by_name_and_a_missing_folder_is_an_error(tmp_path, capsys):
    from agelib import cli

    records.save_record(record(0, 6.0), tmp_path)
    (tmp_path / "cut-short.json").write_text('{"tag": "ch02",\n')
    (tmp_path / "a-list.json").write_text("[1, 2]")
    (tmp_path / "notes.json").write_text('{"note": "scratch"}')  # JSON, but not a run record
    with pytest.warns(UserWarning) as caught:
        found = records.load_records(tmp_path)
    said = " ".join(str(w.message) for w in caught)
    assert len(found) == 1 and "skipped cut-short.json" in said and "skipped a-list.json" in said
    assert "skipped notes.json: not a run record (it has no backbone, mode, tag, test_mae)" in said
    with pytest.warns(UserWarning):
        assert cli.main(["report", "--results", str(tmp_path)]) == 0
    assert "6.00" in capsys.readouterr().out
    assert cli.main(["report", "--results", str(tmp_path / "typo")]) == 2
    assert "no results folder at" in capsys.readouterr().err


# --------------------------------------------------------------------------- records
def test_readme_results_show_only_full_runs_on_real_faces():
    """Catches readme_results dropping the `data_real` filter (synthetic full runs reach README)
    or the `mode == "full"` filter (smoke runs reach README)."""
    table = pd.DataFrame([
        run_record(0, 6.0),
        run_record(0, 3.0, backbone="vit_small", data="synthetic", data_real=False),  # a check run
        run_record(0, 2.0, backbone="convnext_atto", mode="smoke", epochs=1),  # proves the code runs
    ])
    block = records.readme_results(table)
    rows = [line for line in block.splitlines() if line.startswith("| ch02")]
    assert len(rows) == 1 and "| resnet18 |" in rows[0] and "| 6.00 |" in rows[0]
    assert "vit_small" not in block and "convnext_atto" not in block


def test_readme_results_without_a_full_run_count_the_smoke_records():
    """Catches the 'no full run yet' message counting every record (here 3) as smoke."""
    table = pd.DataFrame([run_record(0, 6.0, mode="smoke"), run_record(1, 7.0, mode="smoke"),
                          run_record(0, 5.0, data="synthetic", data_real=False)])
    assert "The 2 smoke-mode records" in records.readme_results(table)


def test_report_rows_come_best_test_mae_first_within_a_tag_with_cs5_averaged_over_seeds():
    """Catches rows sorted worst first, sorted by validation MAE, and CS@5 aggregated by max
    (each was caught before only by README's committed-records check, whose advice,
    `report --write-readme`, would have written the bug into README)."""
    table = pd.DataFrame([
        run_record(0, 8.0, tag="a", valid_mae=5.0, test_cs5=0.2),
        run_record(1, 6.0, tag="a", valid_mae=5.2, test_cs5=0.6),  # x: test 7.0, valid 5.1, CS@5 0.4
        run_record(0, 4.0, tag="a", backbone="vit_small", valid_mae=9.0, test_cs5=0.7),  # y: test 4
        run_record(0, 1.0, tag="b", backbone="convnext_atto"),
    ])
    report = records.report_table(table)
    assert list(zip(report["tag"], report["backbone"])) == [
        ("a", "vit_small"), ("a", "resnet18"), ("b", "convnext_atto")]
    x = report[report["backbone"] == "resnet18"].iloc[0]
    assert (x["test_mae"], x["test_cs5"], x["runs"]) == pytest.approx((7.0, 0.4, 2))


def test_saving_many_records_with_one_id_keeps_every_one(tmp_path):
    """Catches `while path.exists()` -> `if`: the third run of an ablation grid started in
    the same second overwrote the second one's record."""
    paths = [records.save_record(run_record(0, mae, id="same"), tmp_path) for mae in (1.0, 2.0, 3.0)]
    assert len(set(paths)) == 3 and len(list(tmp_path.glob("*.json"))) == 3
    assert sorted(records.load_records(tmp_path)["test_mae"]) == [1.0, 2.0, 3.0]


def test_a_re_run_saved_in_the_same_second_replaces_the_older_run(tmp_path):
    """Two runs of one setting and seed with the same id and date (an ablation grid re-run
    within a second): the one saved later is the re-run, whatever the file names' order."""
    for mae in (9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5):  # -2 ... -10
        records.save_record(run_record(0, mae, id="same"), tmp_path)
    report = records.report_table(records.load_records(tmp_path))
    assert (len(report), report["test_mae"].iloc[0]) == (1, 0.5)


def test_make_record_scores_validation_and_test_on_their_own_faces():
    """Catches make_record swapping the validation and test scores, or their face counts
    (test_training's tiny mode has as many validation as test faces: 32 and 32)."""
    model = SimpleNamespace(backbone="resnet18", head="regression", pretrained=False)
    config = SimpleNamespace(model=model, tag="t", variant="", loss="l1", seed=0, split_seed=0,
                             lr=1e-3, schedule="one_cycle", to_dict=lambda: {"model": {}})
    faces = SimpleNamespace(name="UTKFace", real=True, fingerprint="abc")
    valid = (np.array([12.0, 20.0, 30.0]), np.array([10.0, 20.0, 30.0]))  # MAE 2/3
    test = (np.array([10.0, 26.0, 30.0, 40.0, 50.0]),  # one face 6 years off: MAE 1.2, CS@5 0.8
            np.array([10.0, 20.0, 30.0, 40.0, 50.0]))
    r = records.make_record(config, faces, settings.FULL, "cpu", epochs=20, image_size=64,
                            batch_size=128, best_epoch=19, seconds=12.34, params=10, n_train=7,
                            valid=valid, test=test, test_flip=test[1])
    assert (r["n_train"], r["n_valid"], r["n_test"]) == (7, 3, 5)
    assert (r["valid_mae"], r["test_mae"], r["test_cs5"]) == (0.667, 1.2, 0.8)
    assert r["test_mae_flip"] == 0.0 and r["epochs_run"] == 20 and r["seconds"] == 12.3


# --------------------------------------------------------------------------- checkpoints
def test_extra_values_come_back_with_the_weights(tmp_path):
    """Catches ``extra`` not written: test predictions kept with a model are not lost."""
    extra = {"test_pred": [31.5, 8.0], "test_sha1": ["ab12", "cd34"]}
    path = checkpoints.save_checkpoint(tiny_model(), tmp_path / "m.pt", extra=extra)
    assert checkpoints.load_checkpoint(path)[1]["extra"] == extra


def test_trained_size_reads_the_train_config_then_the_record_then_the_model_config(tmp_path):
    """Catches train config ignored and the model's config read first."""
    vit_like = tiny_model(img_size=32)  # a bare ViT or hybrid knows its size
    cnn = tiny_model()
    both = {"train_config": {"image_size": 48}, "record": {"image_size": 64}}
    assert checkpoints.trained_size(both, vit_like) == 48
    assert checkpoints.trained_size({"record": {"image_size": 64}}, vit_like) == 64
    assert checkpoints.trained_size({"train_config": {}, "record": {}}, vit_like) == 32
    assert checkpoints.trained_size({"train_config": {}, "record": {}}, cnn) is None
    path = checkpoints.save_checkpoint(cnn, tmp_path / "m.pt", train_config={"image_size": 40})
    model, payload = checkpoints.load_checkpoint(path)
    assert checkpoints.trained_size(payload, model) == 40


def test_a_bare_state_dict_is_not_an_agelib_checkpoint(tmp_path):
    """Catches is_checkpoint true for any dict: only files with the format marker count."""
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert not checkpoints.is_checkpoint(tmp_path / "weights.pt")
    assert checkpoints.is_checkpoint(checkpoints.save_checkpoint(model, tmp_path / "m.pt"))


def test_a_dot_slash_name_means_the_current_folder(home):
    """Catches ``./NAME`` read as a bare name: ``train --out ./mine.pt`` must write here,
    not into <data home>/checkpoints, while a bare ``mine.pt`` goes there."""
    assert checkpoints.checkpoint_path("./mine.pt") == Path("mine.pt")
    assert checkpoints.checkpoint_path(".\\mine.pt") == Path(".\\mine.pt")
    assert checkpoints.checkpoint_path("mine.pt") == home / "checkpoints" / "mine.pt"


def test_a_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path):
    """Catches missing tensors not reported: a ValueError that names the tensor, not
    torch's RuntimeError from load_state_dict."""
    path = checkpoints.save_checkpoint(tiny_model(head="classification",
                                                             num_classes=20), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["head.net.0.bias"]
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"'m.pt': the weights do not fit.*1 missing "
                                         r"\(e\.g\. head\.net\.0\.bias\)"):
        checkpoints.load_checkpoint(path)


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """Catches writing straight to the real name: a full disk or an interrupt during a
    save must not destroy the checkpoint that was there."""
    model = tiny_model()
    path = checkpoints.save_checkpoint(model, tmp_path / "best.pt", record={"test_mae": 5.0})

    def crash(obj, f, *args, **kwargs):  # half the bytes reach the disk, then it is full
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoints.save_checkpoint(model, path, record={"test_mae": 4.0})
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(path)[1]["record"] == {"test_mae": 5.0}


def test_make_record_counts_cs5_at_five_years_and_states_an_early_stop():
    """Catches CS@5 computed at another threshold (errors of 4 years count, 6 do not) and
    ``epochs_run`` ignored: a run stopped early must not claim the epochs it was asked for."""
    model = SimpleNamespace(backbone="resnet18", head="regression", pretrained=False)
    config = SimpleNamespace(model=model, tag="t", variant="", loss="l1", seed=0, split_seed=0,
                             lr=1e-3, schedule="one_cycle", to_dict=lambda: {"model": {}})
    faces = SimpleNamespace(name="UTKFace", real=True, fingerprint="abc")
    true = np.array([10.0, 20.0, 30.0, 40.0])
    test = (true + np.array([0.0, 4.0, -4.0, 6.0]), true)  # 3 of 4 within 5 years, 1 within 3
    r = records.make_record(config, faces, settings.FULL, "cpu", epochs=20, image_size=64,
                            batch_size=128, best_epoch=5, seconds=1.0, params=10, n_train=7,
                            valid=test, test=test, epochs_run=8)
    assert r["test_cs5"] == 0.75
    assert (r["epochs"], r["epochs_run"], r["best_epoch"]) == (20, 8, 5)
    assert r["test_mae_flip"] is None  # no flip-averaged score was measured


def test_a_record_saved_under_a_taken_id_takes_its_file_name_as_id(tmp_path):
    """Catches save_record renaming the file but not the id inside it: reports and
    load_predictions find a run's predictions by the id its record states."""
    records.save_record(record(test_mae=1.0, id="same"), tmp_path)
    second = record(test_mae=2.0, id="same")
    path = records.save_record(second, tmp_path, predictions=pd.DataFrame({"sha1": ["a"]}))
    assert path.stem == "same-2" and second["id"] == "same-2"
    assert json.loads(path.read_text())["id"] == "same-2"
    assert second["predictions"] == "predictions/same-2.csv"


def test_predictions_table_shortens_sha1s_and_rounds_ages_to_a_tenth():
    table = records.predictions_table(["0123456789abcdef0123"], [31.26], [30.12345])
    assert table["sha1"].tolist() == ["0123456789ab"]  # SHA1_CHARS = 12
    assert table["age"].tolist() == [pytest.approx(31.3)]
    assert table["pred"].tolist() == [pytest.approx(30.123)]


def test_replace_block_needs_both_markers():
    with pytest.raises(ValueError, match="needs the markers <s> and <e>"):
        records.replace_block("text <s> without its end", "<s>", "<e>", "new")
    with pytest.raises(ValueError, match="needs the markers"):
        records.replace_block("text <e> without its start", "<s>", "<e>", "new")


def tampered_checkpoint(tmp_path, change) -> Path:
    """A saved checkpoint whose payload ``change`` edited in place: damage a test can name."""
    path = checkpoints.save_checkpoint(tiny_model(), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


def test_a_checkpoint_with_an_extra_tensor_is_refused_naming_it(tmp_path):
    """Catches unexpected tensors not reported: a ValueError naming the stray tensor, not
    torch's RuntimeError from load_state_dict."""
    path = tampered_checkpoint(tmp_path, lambda p: p["state_dict"].update(
        {"head.stray": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"the weights do not fit.*1 unexpected "
                                         r"\(e\.g\. head\.stray\)"):
        checkpoints.load_checkpoint(path)


def test_a_checkpoint_without_weights_is_called_damaged(tmp_path):
    path = tampered_checkpoint(tmp_path, lambda p: p.pop("state_dict"))
    with pytest.raises(ValueError, match="'m.pt' is a damaged agelib checkpoint: it has no "
                                         "state_dict"):
        checkpoints.load_checkpoint(path)


def test_a_checkpoint_saved_before_extra_existed_loads_with_an_empty_extra(tmp_path):
    """Older checkpoints have no "extra": callers read payload["extra"] without a guard."""
    path = tampered_checkpoint(tmp_path, lambda p: p.pop("extra"))
    assert checkpoints.load_checkpoint(path)[1]["extra"] == {}


def test_an_onnx_file_given_as_a_checkpoint_is_named_an_export(tmp_path):
    """Catches the ONNX check skipped: the learner should hear "exported ONNX model", not
    the generic "not a readable checkpoint"."""
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07onnx bytes")
    with pytest.raises(ValueError, match="'m.onnx' is an exported ONNX model, not a checkpoint"):
        checkpoints.load_checkpoint(tmp_path / "m.onnx")
