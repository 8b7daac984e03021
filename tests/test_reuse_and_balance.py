"""Reusing trained models (load_or_train), per-face predictions in the records,
balanced sampling by age band and resident images.

Runs use the session's synthetic faces at 32 px and timm's tiny ``test_resnet``.
"""

import numpy as np
import pytest
import torch

from conftest import tiny_mode

from agelib import data, models, records, settings, training
from agelib.data import loaders

MODE = tiny_mode()


def config(**kwargs) -> training.TrainConfig:
    return training.TrainConfig(model=models.ModelConfig("test_resnet"), loss="l1", **kwargs)


# --------------------------------------------------------------------------- load_or_train
def test_load_or_train_trains_once_then_reloads_the_same_model(synthetic_faces, results,
                                                                monkeypatch, tmp_path):
    monkeypatch.setenv(settings.REUSE_LOG, str(tmp_path / "reused"))  # as in a course run
    first = training.load_or_train(config(tag="t"), synthetic_faces, mode=MODE, device="cpu")
    assert not (tmp_path / "reused").exists()  # trained: nothing reused
    assert first.learn is not None and first.checkpoint.is_file()
    assert first.checkpoint.parent == settings.data_home() / "checkpoints"
    n_records = len(list(results.glob("*.json")))
    assert n_records == 1

    again = training.load_or_train(config(tag="t"), synthetic_faces, mode=MODE, device="cpu")
    assert again.learn is None  # not trained again
    # and a course run hears of it, with when the reused model was trained
    assert (tmp_path / "reused").read_text().splitlines() == [first.record["date"]]
    assert again.checkpoint == first.checkpoint
    assert len(list(results.glob("*.json"))) == n_records  # and not recorded twice
    assert again.record["test_mae"] == first.record["test_mae"]
    np.testing.assert_allclose(again.test_pred, first.test_pred, atol=1e-5)
    np.testing.assert_array_equal(again.test_true, first.test_true)
    assert again.test_sha1 == first.test_sha1  # whole hashes: they index faces.samples
    assert set(again.test_sha1) <= set(synthetic_faces.samples["sha1"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), first.model.cpu().eval()(x))


def test_load_or_train_trains_anew_when_any_setting_changes(synthetic_faces, results):
    a = training.cached_checkpoint(config(tag="t"), synthetic_faces, MODE)
    assert a == training.cached_checkpoint(config(tag="t"), synthetic_faces, MODE)
    assert a != training.cached_checkpoint(config(tag="t", lr=2e-3), synthetic_faces, MODE)
    assert a != training.cached_checkpoint(config(tag="t", seed=1), synthetic_faces, MODE)
    # tags and variants only label runs: chapters with the same settings share one model
    assert a == training.cached_checkpoint(config(tag="other", variant="v"), synthetic_faces, MODE)
    full = settings.RunMode("full", 32, None, None, None, 1, 16)
    assert a != training.cached_checkpoint(config(tag="t"), synthetic_faces, full)
    # one file renamed to correct its age: the same images, other labels, another model
    import dataclasses

    samples = synthetic_faces.samples.copy()
    samples.loc[samples.index[0], "age"] += 1
    relabelled = dataclasses.replace(synthetic_faces, samples=samples)
    assert relabelled.fingerprint == synthetic_faces.fingerprint  # the split stays put
    assert a != training.cached_checkpoint(config(tag="t"), relabelled, MODE)
    samples.loc[samples.index[1], "race"] = None  # an unknown label hashes too
    assert dataclasses.replace(synthetic_faces, samples=samples).labels_fingerprint


def test_a_trained_run_can_be_kept_for_load_or_train(synthetic_faces, results):
    run = training.train_age_model(config(tag="ch02"), synthetic_faces, mode=MODE, device="cpu",
                                   verbose=False, cache=True)
    assert run.checkpoint == training.cached_checkpoint(config(), synthetic_faces, MODE)
    reused = training.load_or_train(config(tag="ch09"), synthetic_faces, mode=MODE, device="cpu")
    assert reused.learn is None and reused.record["tag"] == "ch02"  # trained once, by ch02


@pytest.mark.parametrize("change", ["init", "cbs"])
def test_a_run_changed_outside_its_settings_is_not_cached(synthetic_faces, results, change):
    """Catches chapter 07's exercise (zeroed position embeddings) replacing chapter 09's model."""
    extra = {"init": lambda m: None} if change == "init" else {"cbs": [training.KeepBestEpoch()]}
    with pytest.raises(ValueError, match="Drop cache=True"):
        training.train_age_model(config(), synthetic_faces, mode=MODE, device="cpu",
                                 verbose=False, cache=True, **extra)
    assert not training.cached_checkpoint(config(), synthetic_faces, MODE).exists()


def test_a_broken_cached_checkpoint_is_retrained_with_a_warning(synthetic_faces, results):
    path = training.cached_checkpoint(config(tag="b"), synthetic_faces, MODE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="retraining"):
        run = training.load_or_train(config(tag="b"), synthetic_faces, mode=MODE, device="cpu")
    assert run.learn is not None


# --------------------------------------------------------------------------- predictions
def test_every_record_keeps_its_per_face_test_predictions(synthetic_faces, results):
    run = training.train_age_model(config(), synthetic_faces, mode=MODE, device="cpu",
                                   verbose=False)
    table = records.load_records()
    assert len(table) == 1
    preds = records.load_predictions(table.iloc[0])
    assert list(preds.columns) == ["sha1", "age", "pred"]
    assert len(preds) == run.record["n_test"] == len(run.test_pred)
    np.testing.assert_allclose(preds["pred"], run.test_pred, atol=0.006)
    # the keys join back to the faces and their labels
    labels = synthetic_faces.samples.assign(key=synthetic_faces.samples["sha1"].str[:12])
    joined = preds.merge(labels, left_on="sha1", right_on="key")
    assert len(joined) == len(preds)
    np.testing.assert_allclose(joined["age_x"], joined["age_y"])


def test_a_record_without_predictions_says_so(results):
    with pytest.raises(FileNotFoundError, match="no per-face predictions"):
        records.load_predictions({"id": "old-run"})


# --------------------------------------------------------------------------- balance
def test_balance_weights_equalise_the_age_bands():
    ages = torch.tensor([5.0] * 80 + [25.0] * 15 + [85.0] * 5)
    assert loaders.balance_weights(ages, 0) is None
    w = loaders.balance_weights(ages, 1.0)
    share = [float(w[ages == a].sum() / w.sum()) for a in (5.0, 25.0, 85.0)]
    assert share == pytest.approx([1 / 3] * 3)
    half = loaders.balance_weights(ages, 0.5)
    old_share = float(half[ages == 85.0].sum() / half.sum())
    assert 0.05 < old_share < 1 / 3  # between as-is and fully balanced


def test_balanced_loader_draws_rare_old_faces_more_often(synthetic_faces):
    plain = data.face_dataloaders(synthetic_faces, mode=MODE, size=32, device="cpu")
    balanced = data.face_dataloaders(synthetic_faces, mode=MODE, size=32, device="cpu",
                                     balance=1.0)
    assert plain.train.weights is None and balanced.train.weights is not None
    assert balanced.valid.weights is None  # evaluation sees every face once

    def old_share(dl, epochs=20):
        ages = torch.cat([y for _ in range(epochs) for _, y in dl.train])
        return float((ages >= 60).float().mean())

    assert old_share(balanced) > old_share(plain)


def test_balance_is_a_train_config_setting(synthetic_faces, results):
    run = training.train_age_model(config(balance=1.0), synthetic_faces, mode=MODE,
                                   device="cpu", verbose=False)
    assert run.record["config"]["balance"] == 1.0


def test_resident_images_stay_put_on_the_cpu(synthetic_faces):
    dls = data.face_dataloaders(synthetic_faces, mode=MODE, size=32, device="cpu")
    assert dls.train.dataset.images.device.type == "cpu"
    x, y = dls.train.one_batch()
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32


# --------------------------------------------------------------------------- the hybrid's levers
def test_three_stage_recipe_and_distillation_run_from_the_config(synthetic_faces, results,
                                                                 monkeypatch):
    from dataclasses import replace

    from agelib import distill, hybrid

    flips = []  # what the config's distill_flip made of each teacher pass
    teacher_ages = distill.teacher_ages
    monkeypatch.setattr(distill, "teacher_ages",
                        lambda *args: flips.append(args[-1]) or teacher_ages(*args))

    base = training.TrainConfig(model=models.named_config("hybrid_atto", img_size=32),
                                loss="adaptive", tag="t")
    cnn_cfg, vit_cfg = hybrid.part_configs(base.model)
    cnn = training.load_or_train(replace(base, model=cnn_cfg, loss="adaptive"), synthetic_faces,
                                 mode=MODE, device="cpu")
    vit = training.load_or_train(replace(base, model=vit_cfg, loss="adaptive"), synthetic_faces,
                                 mode=MODE, device="cpu")
    staged = replace(base, init_from={"cnn": cnn.checkpoint.name, "vit": vit.checkpoint.name},
                     distill_from=cnn.checkpoint.name, distill_alpha=0.5, distill_flip=False)
    run = training.train_age_model(staged, synthetic_faces, mode=MODE, device="cpu", verbose=False)
    assert flips and not any(flips) and run.record["config"]["distill_flip"] is False
    assert run.record["config"]["init_from"] == {"cnn": cnn.checkpoint.name,
                                                 "vit": vit.checkpoint.name}
    assert "/" not in run.record["config"]["distill_from"]  # names, not machine paths
    assert np.isfinite(run.record["test_mae"])
    report = run.record["init_report"]  # what the start did: everything but the head, copied
    assert report["copied"] > 50 and report["backbone_left_at_init"] == []


def test_the_levers_refuse_wrong_settings():
    with pytest.raises(ValueError, match="needs a hybrid model, not test_resnet"):
        training.TrainConfig(model=models.ModelConfig("test_resnet"), init_from={"cnn": "x.pt"})
    with pytest.raises(ValueError, match="'cnn' and/or 'vit'"):
        training.TrainConfig(model=models.named_config("hybrid_atto"), init_from={"teacher": "x"})
    with pytest.raises(ValueError, match="distill_alpha"):
        training.TrainConfig(distill_alpha=-1)
    assert training.checkpoint_path("a.pt") == settings.data_home() / "checkpoints" / "a.pt"


def test_a_run_whose_model_changed_while_building_is_found_again(synthetic_faces, results,
                                                                  monkeypatch):
    """Building may change the model config (offline, smoke mode switches pretrained off):
    the record says what ran, and asking for the same settings again finds that run."""
    monkeypatch.setenv("AGELIB_SMOKE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def asked():
        return training.TrainConfig(model=models.ModelConfig("test_resnet", pretrained=True),
                                    loss="l1", tag="t")

    cfg = asked()
    with pytest.warns(UserWarning):
        first = training.load_or_train(cfg, synthetic_faces, mode=MODE, device="cpu")
    assert first.record["config"]["model"]["pretrained"] is False  # what ran
    assert first.record["requested_config"]["model"]["pretrained"] is True  # what was asked
    assert cfg.model.pretrained  # the caller's config is left as asked
    again = training.load_or_train(cfg, synthetic_faces, mode=MODE, device="cpu")
    assert again.learn is None and again.checkpoint == first.checkpoint  # not trained again
    assert training.recorded_run(asked(), synthetic_faces, MODE, device="cpu")["id"] == \
        first.record["id"]
