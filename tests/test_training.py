"""Training (agelib.training): configs, the whole recipe, schedules, model selection, repeatability.

Every run uses the session's synthetic faces, 64/32/32 train/valid/test images at
32 px and timm's tiny ``test_resnet``, so a run takes about a second on a CPU.
"""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from conftest import tiny_mode

from agelib import checkpoints, data, losses, metrics, models, records, settings, training
from agelib.training import KeepBestEpoch, TrainConfig

TINY = "test_resnet"
MODE = tiny_mode()
PAIRS = [("regression", "l1"), ("classification", "cross_entropy"), ("coral", "coral"),
         ("corn", "corn")]

with warnings.catch_warnings():  # fastai's import warns about torch.jit
    warnings.simplefilter("ignore", FutureWarning)
    from fastai.callback.core import Callback


def config(head: str = "regression", loss: str = "l1", **kwargs) -> TrainConfig:
    return TrainConfig(model=models.ModelConfig(TINY, head=head), loss=loss, **kwargs)


def train(faces, cfg: TrainConfig, mode: settings.RunMode = MODE, **kwargs):
    kwargs.setdefault("save_record", False)
    return training.train_age_model(cfg, faces, mode=mode, device="cpu", verbose=False, **kwargs)


def learner(faces, head: str = "regression", loss: str = "l1", batch_size: int = 16,
            lr: float = 1e-3, seed: int = 0):
    """A Learner built the way chapters build one, on the tiny data."""
    settings.seed_everything(seed)
    dls = data.face_dataloaders(faces, mode=MODE, size=32, batch_size=batch_size, device="cpu")
    model = models.create_model(models.ModelConfig(TINY, head=head))
    return training.make_learner(dls, model, loss, lr=lr)


def mae_column(learn) -> int:
    return list(learn.recorder.metric_names[1:-1]).index("mae")  # after train/valid loss


# --------------------------------------------------------------------------- TrainConfig
def test_train_config_rejects_an_unknown_schedule_listing_the_valid_ones():
    with pytest.raises(ValueError, match="unknown schedule 'cosine'") as err:
        config(schedule="cosine")
    assert all(s in str(err.value) for s in training.SCHEDULES)


def test_train_config_rejects_an_unknown_loss_listing_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss 'l2'") as err:
        config(loss="l2")
    assert all(name in str(err.value) for name in losses.LOSSES)


@pytest.mark.parametrize("head, loss", [("regression", "coral"), ("coral", "corn"),
                                        ("classification", "l1"), ("corn", "ldl")])
def test_train_config_rejects_a_loss_that_does_not_suit_the_head(head, loss):
    kind = losses.loss_output_kind(loss)
    with pytest.raises(ValueError, match=f"loss '{loss}' needs a {kind} head.*{head} head"):
        config(head, loss)


@pytest.mark.parametrize("field, value", [
    ("lr", 0.0), ("weight_decay", -0.1), ("warmup", 1.5), ("warmup", 1.0),
    ("augment_scale", (0.9, 0.5)), ("augment_scale", (0.0, 1.0)), ("augment_scale", (0.8, 1.2)),
    ("grayscale", 1.1), ("jitter", 1.0), ("rotate", -5.0), ("balance", -1.0),
    ("distill_alpha", -0.5), ("epochs", 0), ("batch_size", 0), ("patience", 0)])
def test_train_config_refuses_a_setting_outside_its_range_by_name(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be .*, not "):
        TrainConfig(**{field: value})


def test_train_refuses_a_bad_warmup_in_one_line_before_any_data_loads(capsys):
    from agelib import cli

    assert cli.main(["train", "--schedule", "warmup_cosine", "--warmup", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: warmup must be a share of the steps, from 0 to below 1, not 1.5"


def test_train_config_takes_the_edges_of_each_range():
    TrainConfig(warmup=0.0, augment_scale=(1.0, 1.0), grayscale=1.0, jitter=0.0, rotate=0.0,
                balance=0.0, distill_alpha=0.0, weight_decay=0.0, epochs=1, batch_size=1,
                patience=1)


def test_train_config_takes_a_model_dict_and_gives_plain_values_back():
    cfg = TrainConfig(model={"backbone": TINY, "head": "coral"}, loss="coral")
    assert isinstance(cfg.model, models.ModelConfig) and cfg.model.head == "coral"
    d = cfg.to_dict()
    assert d["model"] == cfg.model.to_dict() and d["loss"] == "coral"
    json.dumps(d, default=list)  # plain values only (tuples become lists in a record)
    with pytest.raises(ValueError, match="unknown model config field"):
        TrainConfig(model={"backbone": TINY, "heads": "coral"})


def test_make_learner_refuses_a_mismatched_loss(synthetic_faces):
    dls = data.face_dataloaders(synthetic_faces, mode=MODE, size=32, device="cpu")
    model = models.create_model(models.ModelConfig(TINY, head="coral"))
    with pytest.raises(ValueError, match="loss 'l1' needs a regression head's output, not a coral head's"):
        training.make_learner(dls, model, "l1")


# --------------------------------------------------------------------------- the whole recipe
@pytest.mark.parametrize("head, loss", PAIRS)
def test_train_age_model_runs_every_head_and_records_what_ran(synthetic_faces, results, tmp_path,
                                                              head, loss):
    cfg = config(head, loss, tag="test")
    result = train(synthetic_faces, cfg, checkpoint=tmp_path / "model.pt", save_record=True)
    r = result.record

    assert set(records.COLUMNS) <= set(r)
    assert (r["head"], r["loss"], r["backbone"], r["tag"]) == (head, loss, TINY, "test")
    assert (r["mode"], r["epochs"], r["image_size"], r["batch_size"]) == ("smoke", 1, 32, 16)
    assert (r["data"], r["data_real"], r["pretrained"]) == ("synthetic", False, False)
    assert (r["n_train"], r["n_valid"], r["n_test"]) == (MODE.n_train, MODE.n_valid, MODE.n_test)
    assert r["config"]["epochs"] == 1 and r["config"]["image_size"] == 32  # resolved, not None
    assert r["best_epoch"] == 0 and r["params"] == models.count_parameters(result.learn.model)
    for key in ("valid_mae", "test_mae", "test_cs5"):
        assert math.isfinite(r[key]), key
    assert 0 <= r["test_cs5"] <= 1 and r["test_mae"] >= 0

    assert result.test_pred.shape == result.test_true.shape == (MODE.n_test,)
    assert np.isfinite(result.test_pred).all()
    assert r["test_mae"] == round(metrics.mae(result.test_pred, result.test_true), 3)
    assert r["test_cs5"] == round(metrics.cs_at(result.test_pred, result.test_true, 5), 4)
    flip_pred, flip_true = training.predict_ages(result.learn, result.learn.dls[2], flip=True)
    assert r["test_mae_flip"] == round(metrics.mae(flip_pred, flip_true), 3)  # mirrored, truly
    assert not np.allclose(flip_pred, result.test_pred)  # a mirror image is another view

    saved = list(results.glob("*.json"))  # the record went to AGELIB_RESULTS
    assert [p.name for p in saved] == [f"{r['id']}.json"]
    assert json.loads(saved[0].read_text()) == json.loads(json.dumps(r, default=list))

    model, payload = checkpoints.load_checkpoint(result.checkpoint)
    assert payload["record"]["test_mae"] == r["test_mae"]
    assert payload["train_config"]["image_size"] == 32 and model.config.head == head


def test_a_run_is_repeatable_with_its_seed_and_changes_with_another(synthetic_faces):
    first = train(synthetic_faces, config(seed=0))
    again = train(synthetic_faces, config(seed=0))
    other = train(synthetic_faces, config(seed=1))
    assert np.array_equal(first.test_pred, again.test_pred)
    assert first.record["test_mae"] == again.record["test_mae"]
    assert not np.allclose(first.test_pred, other.test_pred)
    # the same valid and test faces, whatever the training seed (smoke subsets included)
    assert np.array_equal(first.test_true, other.test_true)
    assert first.record["valid_mae"] != other.record["valid_mae"]


def test_the_best_validation_epoch_is_the_one_kept(synthetic_faces):
    result = train(synthetic_faces, config(epochs=3, lr=3e-3))
    # the history survives the predictions made after training
    maes = [row[mae_column(result.learn)] for row in result.learn.recorder.values]
    assert len(maes) == 3 and len(result.learn.recorder.losses) == 3 * 4  # 64 / 16 batches
    assert result.record["best_epoch"] == int(np.argmin(maes))
    assert result.record["valid_mae"] == pytest.approx(min(maes), abs=1e-3)


# --------------------------------------------------------------------------- KeepBestEpoch
class Snapshots(Callback):
    """The weights at the end of every epoch (after KeepBestEpoch has looked at them)."""

    order = KeepBestEpoch.order + 1

    def before_fit(self):
        self.states = []

    def after_epoch(self):
        self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


class SpoilEpochs(Callback):
    """Push the regression bias far off before validating the given epochs."""

    def __init__(self, epochs):
        self.epochs = set(epochs)

    def before_validate(self):
        if self.epoch in self.epochs:
            with torch.no_grad():
                self.model.head.net[-1].bias.fill_(1000.0)


def test_keep_best_epoch_restores_the_weights_of_the_best_validation_epoch(synthetic_faces):
    learn = learner(synthetic_faces)
    keep, snaps = KeepBestEpoch(), Snapshots()
    with learn.no_bar(), learn.no_logging():
        training.fit(learn, 3, 1e-3, "constant", cbs=[keep, snaps, SpoilEpochs({2})])
    maes = [row[mae_column(learn)] for row in learn.recorder.values]
    assert maes[2] > 900 and keep.best_epoch == int(np.argmin(maes)) < 2
    state = learn.model.state_dict()
    assert all(torch.equal(state[k], snaps.states[keep.best_epoch][k]) for k in state)
    assert not torch.equal(state["head.net.0.bias"], snaps.states[2]["head.net.0.bias"])
    pred, true = training.predict_ages(learn, learn.dls.valid)
    assert metrics.mae(pred, true) == pytest.approx(maes[keep.best_epoch], rel=1e-5)


def test_keep_best_epoch_stops_after_patience_epochs_without_progress(synthetic_faces):
    learn = learner(synthetic_faces)
    keep, snaps = KeepBestEpoch(patience=2), Snapshots()
    with learn.no_bar(), learn.no_logging():
        training.fit(learn, 6, 1e-3, "constant", cbs=[keep, snaps, SpoilEpochs({1, 2, 3, 4, 5})])
    assert len(learn.recorder.values) == 3 and keep.best_epoch == 0  # epochs 0, 1, 2 ran
    assert keep.epochs_run == 3  # what the run record states beside the epochs asked for
    state = learn.model.state_dict()
    assert all(torch.equal(state[k], snaps.states[0][k]) for k in state)


# --------------------------------------------------------------------------- schedules
class LearningRates(Callback):
    """The learning rate (and Adam's beta1) the torch optimizer used at each training batch."""

    def before_fit(self):
        self.lrs, self.beta1s, self.wds = [], [], []

    def after_batch(self):
        if self.training:
            groups = self.learn.opt.opt.param_groups  # torch's AdamW under fastai's wrapper
            assert len({g["lr"] for g in groups}) == 1
            self.lrs.append(groups[0]["lr"])
            self.beta1s.append(groups[0]["betas"][0])
            self.wds.append(groups[0]["weight_decay"])


def record_schedule(faces, schedule: str, epochs: int = 2, lr: float = 1e-2, **kwargs):
    learn = learner(faces, batch_size=8, lr=lr)  # 64 / 8 = 8 batches an epoch
    rates = LearningRates()
    with learn.no_bar(), learn.no_logging():
        training.fit(learn, epochs, lr, schedule, cbs=[rates], **kwargs)
    assert len(rates.lrs) == 8 * epochs
    assert set(rates.wds) == {0.05}  # AdamW's decoupled weight decay really applies
    return np.array(rates.lrs), np.array(rates.beta1s)


def cos_between(start: float, end: float, pos: np.ndarray) -> np.ndarray:
    return start + (1 + np.cos(np.pi * (1 - pos))) * (end - start) / 2


def test_warmup_cosine_warms_up_linearly_then_decays_along_a_cosine_to_zero(synthetic_faces):
    lr, warmup = 1e-2, 0.25
    lrs, _ = record_schedule(synthetic_faces, "warmup_cosine", lr=lr, warmup=warmup)
    pct = np.arange(len(lrs)) / len(lrs)  # fastai's pct_train at each batch
    expected = np.where(pct < warmup, lr * 1e-3 + (lr - lr * 1e-3) * pct / warmup,
                        lr * (1 + np.cos(np.pi * (pct - warmup) / (1 - warmup))) / 2)
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    peak = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(lr * 1e-3) and lrs[peak] == pytest.approx(lr)
    assert peak == 4  # a quarter of 16 batches
    assert (np.diff(lrs[:peak + 1]) > 0).all() and (np.diff(lrs[peak:]) < 0).all()
    assert lrs[-1] < 0.02 * lr  # last batch: almost zero


def test_one_cycle_cycles_learning_rate_and_momentum(synthetic_faces):
    lr = 1e-2
    lrs, moms = record_schedule(synthetic_faces, "one_cycle", lr=lr)
    pct = np.arange(len(lrs)) / len(lrs)
    up, down = pct / 0.25, (pct - 0.25) / 0.75
    expected = np.where(pct < 0.25, cos_between(lr / 25, lr, up), cos_between(lr, lr / 1e5, down))
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert lrs[0] == pytest.approx(lr / 25) and lrs.max() == pytest.approx(lr)
    assert lrs[-1] < 0.02 * lr  # last of 16 batches: almost zero
    assert moms[0] == pytest.approx(0.95) and moms.min() == pytest.approx(0.85)
    assert int(np.argmin(moms)) == int(np.argmax(lrs)) == 4


def test_constant_schedule_keeps_the_learning_rate(synthetic_faces):
    lrs, _ = record_schedule(synthetic_faces, "constant", epochs=1, lr=3e-3)
    assert np.allclose(lrs, 3e-3)


# --------------------------------------------------------------------------- recorded_run
def test_a_recorded_run_is_found_by_its_settings_and_nothing_else_is(synthetic_faces, results,
                                                                     monkeypatch, tmp_path):
    cfg = lambda **kw: config(**{"epochs": 1, "tag": "grid", "variant": "baseline", **kw})  # noqa: E731
    monkeypatch.setenv(settings.REUSE_LOG, str(tmp_path / "reused"))  # as in a course run
    assert training.recorded_run(cfg(), synthetic_faces, MODE, device="cpu") is None
    run = train(synthetic_faces, cfg(), save_record=True)
    found = training.recorded_run(cfg(), synthetic_faces, MODE, device="cpu")
    assert found is not None and found["id"] == run.record["id"]
    # a found run is one a chapter need not train: a course run hears of it, a miss is silent
    assert (tmp_path / "reused").read_text().splitlines() == [run.record["date"]]
    assert found["test_mae"] == run.record["test_mae"]
    for other in [cfg(seed=1), cfg(grayscale=0.2), cfg(epochs=2),
                  config(epochs=1, tag="grid", variant="another label")]:
        assert training.recorded_run(other, synthetic_faces, MODE, device="cpu") is None
    assert training.recorded_run(cfg(), synthetic_faces, settings.SMOKE, device="cpu") is None
    assert training.recorded_run(cfg(), synthetic_faces, MODE, device="meta") is None  # another device


# --------------------------------------------------------------------------- no sync per batch
def test_the_smoothed_loss_kept_on_the_device_equals_fastais(synthetic_faces):
    """LossesOnDevice changes where the smoothing runs, not its numbers."""
    ours = learner(synthetic_faces)
    assert any(isinstance(cb, training.LossesOnDevice) for cb in ours.cbs)
    with ours.no_bar(), ours.no_logging():
        ours.fit(2, 1e-3)
    theirs = learner(synthetic_faces)
    theirs.remove_cb(training.LossesOnDevice)  # fastai's own AvgSmoothLoss
    with theirs.no_bar(), theirs.no_logging():
        theirs.fit(2, 1e-3)
    assert all(isinstance(v, float) for v in ours.recorder.losses)  # on the CPU, once, at the end
    assert ours.recorder.losses == pytest.approx([float(v) for v in theirs.recorder.losses], rel=1e-5)
    assert [row[0] for row in ours.recorder.values] == pytest.approx(
        [row[0] for row in theirs.recorder.values], rel=1e-5)  # the epoch's train_loss


@pytest.mark.parametrize("head,loss", [("regression", "adaptive"), ("classification", "ldl")])
def test_validation_kept_on_the_device_gives_fastais_numbers_without_a_copy_per_batch(
        synthetic_faces, monkeypatch, head, loss):
    """The validation loss and metrics stay on the device until the epoch ends: the same
    numbers as fastai's AvgLoss and AccumMetric, which copy every batch to the CPU."""
    from fastai.metrics import AccumMetric

    ours = learner(synthetic_faces, head=head, loss=loss, batch_size=4)
    theirs = learner(synthetic_faces, head=head, loss=loss, batch_size=4)
    theirs.remove_cb(training.LossesOnDevice)  # fastai's own AvgLoss
    theirs.metrics = [AccumMetric(m.func, flatten=False, name=m.name) for m in ours.metrics]
    copies = []
    to_detach = training.Learner.to_detach
    monkeypatch.setattr(training.Learner, "to_detach",
                        lambda self, *a, **k: copies.append(1) or to_detach(self, *a, **k))
    with ours.no_bar(), ours.no_logging():
        ours_values = ours.validate()
    assert copies == [] and len(ours.dls.valid) >= 3
    with theirs.no_bar(), theirs.no_logging():
        their_values = theirs.validate()
    assert len(copies) >= 3 * len(theirs.dls.valid)  # loss, predictions, ages: every batch
    assert [float(v) for v in ours_values] == pytest.approx([float(v) for v in their_values],
                                                            rel=1e-6)


def test_a_fit_that_breaks_off_keeps_its_finished_epochs_losses_as_floats(synthetic_faces):
    class BreakInSecondEpoch(Callback):
        def after_batch(self):
            if self.epoch == 1 and self.iter == 1:
                raise RuntimeError("the session ended")

    learn = learner(synthetic_faces)
    with learn.no_bar(), learn.no_logging(), pytest.raises(RuntimeError, match="session ended"):
        learn.fit(3, 1e-3, cbs=[BreakInSecondEpoch()])
    first_epoch = learn.recorder.losses[:len(learn.dls.train)]
    assert first_epoch and all(isinstance(v, float) for v in first_epoch)


def item_calls_in_a_fit_with_the_bar(learn, monkeypatch) -> int:
    """How often a fit (progress bar on) copies a one-value tensor to the host."""
    calls = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: calls.append(1) or item(t))
    with learn.no_logging():
        learn.fit(1, 1e-3)
    monkeypatch.setattr(torch.Tensor, "item", item)
    return len(calls)


def test_the_progress_bar_reads_the_loss_only_when_it_redraws(synthetic_faces, monkeypatch):
    """fastai's bar calls smooth_loss.item() after every batch (a sync per step on a GPU);
    ours hands the bar the tensor and reads it only when the bar draws the text."""
    ours = learner(synthetic_faces, batch_size=4)
    assert isinstance(ours.progress, training.ProgressWithoutSync)  # fastai's name for the bar
    bar = ours.progress
    with ours.no_bar():
        assert not any(isinstance(cb, training.ProgressCallback) for cb in ours.cbs)
    assert ours.progress is bar and bar in ours.cbs  # the same bar back (fastai's: a new one)
    theirs = learner(synthetic_faces, batch_size=4)
    theirs.remove_cb(training.ProgressWithoutSync).add_cb(training.ProgressCallback())
    saved = (item_calls_in_a_fit_with_the_bar(theirs, monkeypatch)
             - item_calls_in_a_fit_with_the_bar(ours, monkeypatch))
    assert saved >= len(ours.dls.train) >= 8  # at least one copy per training batch
    comment = ours.progress.pbar.comment
    assert not isinstance(comment, str) and comment and len(comment)  # fastprogress 1.1, 1.0
    assert str(comment) == f"{comment}" == f"{float(ours.smooth_loss):.4f}"  # fastai's text


def test_lr_find_still_works_with_the_loss_on_the_device(synthetic_faces):
    learn = learner(synthetic_faces)
    with learn.no_bar(), learn.no_logging():
        suggestion = learn.lr_find(num_it=8, show_plot=False)
    assert 0 < suggestion.valley < 10


# --------------------------------------------------------------------------- pieces
def test_start_at_mean_sets_the_output_bias_to_the_mean_training_age():
    model = models.create_model(models.ModelConfig(TINY, hidden=8))
    hidden_bias = model.head.net[0].bias.clone()
    ages = torch.tensor([10.0, 20.0, 60.0])
    training.start_at_mean(model, ages)
    assert model.head.net[-1].bias.item() == pytest.approx(30.0)
    assert torch.equal(model.head.net[0].bias, hidden_bias)  # only the output layer


def test_train_age_model_starts_a_regression_head_at_the_train_mean(synthetic_faces, monkeypatch):
    monkeypatch.setattr(training, "fit", lambda *args, **kwargs: None)  # look before any step
    result = train(synthetic_faces, config())
    mean = result.learn.dls.train.dataset.ages.mean().item()
    assert 10 < mean < 60
    assert result.learn.model.head.net[-1].bias.item() == pytest.approx(mean, rel=1e-6)
    assert result.record["best_epoch"] == -1  # nothing trained, nothing selected


def test_raw_outputs_and_predict_ages_give_one_row_per_sample_in_order(synthetic_faces):
    learn = learner(synthetic_faces, "classification", "cross_entropy", batch_size=12)
    dl = learn.dls.valid  # 32 faces: batches of 12, 12 and 8
    out, true = training.raw_outputs(learn, dl)
    assert out.shape == (MODE.n_valid, 117) and true.shape == (MODE.n_valid,)
    assert torch.equal(true, dl.dataset.ages)

    model = learn.model.eval()
    transform = data.BatchTransform(32, train=False)
    with torch.no_grad():
        direct = model(transform(dl.dataset.images))  # every face at once, in dataset order
    torch.testing.assert_close(out, direct, rtol=1e-4, atol=1e-4)

    pred, ages = training.predict_ages(learn, dl)
    assert pred.shape == ages.shape == (MODE.n_valid,) and pred.dtype == np.float32
    np.testing.assert_allclose(pred, losses.expected_age(out).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(ages, dl.dataset.ages.numpy())

    # flip averaging: each face's age averaged with its mirror image's, still in order
    averaged, _ = training.predict_ages(learn, dl, flip=True)
    with torch.no_grad():
        mirrored = losses.expected_age(model(transform(dl.dataset.images).flip(-1)))
    np.testing.assert_allclose(averaged, (pred + mirrored.numpy()) / 2, rtol=1e-4, atol=1e-4)
    assert not np.allclose(averaged, pred)
    again, _ = training.predict_ages(learn, dl)  # the mirroring callback was for that call only
    np.testing.assert_allclose(again, pred, rtol=1e-6)


def test_train_age_model_uses_the_configs_lr_warmup_and_weight_decay(synthetic_faces):
    """Catches a run that drops its config's lr, warmup or weight decay on the way to fastai."""
    rates = LearningRates()
    lr, warmup = 2e-2, 0.5
    train(synthetic_faces, config(epochs=2, lr=lr, schedule="warmup_cosine", warmup=warmup,
                                  weight_decay=0.01), cbs=[rates])
    lrs = np.array(rates.lrs)
    assert len(lrs) == 2 * 4  # 64 faces / 16 per batch, two epochs
    assert set(rates.wds) == {0.01}
    assert lrs[0] == pytest.approx(lr * 1e-3) and lrs.max() == pytest.approx(lr)
    assert int(np.argmax(lrs)) == 4  # half of 8 batches warming up


class FirstTrainingBatch(Callback):
    """The true ages of the first training batch a fit draws."""

    def after_batch(self):
        if self.training and not hasattr(self, "ages"):
            self.ages = self.learn.yb[0].detach().clone()


def test_the_training_seed_shuffles_the_batches(synthetic_faces):
    """Catches a training seed that changes the weights but not the order the faces come in."""
    def first_batch(seed):
        seen = FirstTrainingBatch()
        train(synthetic_faces, config(seed=seed), cbs=[seen])
        return seen.ages

    first = first_batch(0)
    assert torch.equal(first, first_batch(0))
    assert not torch.equal(first, first_batch(1))


def test_a_squashed_regression_head_is_not_started_at_the_mean_age(synthetic_faces, monkeypatch):
    """Catches a sigmoid-squashed head's logit bias set to ~35 years: saturated, no gradient."""
    monkeypatch.setattr(training, "fit", lambda *args, **kwargs: None)  # look before any step
    fresh = TrainConfig(model=models.ModelConfig(TINY, age_range=(0, 116)), loss="l1")
    result = train(synthetic_faces, fresh)
    assert abs(result.learn.model.head.net[-1].bias.item()) < 5  # as initialised, not 10-60
