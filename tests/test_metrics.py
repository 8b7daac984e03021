"""MAE, cumulative scores, group tables and fastai metrics (agelib.metrics)."""

import types
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from agelib import losses, metrics, plots
from agelib.metrics import age_band_mae, cs_at, cs_curve, errors_by_group, mae

PRED = [20.0, 30.0, 41.0, 60.0, 3.0]
TRUE = [21.0, 30.0, 45.0, 70.0, 2.5]  # errors 1, 0, 4, 10, 0.5


# --------------------------------------------------------------------------- MAE and CS
def test_mae_and_cs_hand_values():
    assert mae(PRED, TRUE) == pytest.approx(15.5 / 5)
    assert cs_at(PRED, TRUE, k=5) == pytest.approx(4 / 5)
    assert cs_at(PRED, TRUE, k=0) == pytest.approx(1 / 5)
    assert cs_at(PRED, TRUE, k=0.5) == pytest.approx(2 / 5)  # |error| <= k counts
    assert cs_at(PRED, TRUE, k=10) == 1.0
    assert isinstance(mae(PRED, TRUE), float) and isinstance(cs_at(PRED, TRUE), float)


@pytest.mark.parametrize("convert", [
    np.array, torch.tensor, pd.Series, lambda v: torch.tensor(v).view(-1, 1),
    lambda v: torch.tensor(v, dtype=torch.bfloat16), lambda v: np.array(v)[:, None]])
def test_metrics_accept_tensors_arrays_series_and_columns(convert):
    pred, true = [20.0, 30.0, 41.0, 60.0, 3.0], [21.0, 30.0, 44.0, 70.0, 2.0]  # exact in bf16
    assert mae(convert(pred), convert(true)) == mae(pred, true) == 3.0
    assert cs_at(convert(pred), true) == cs_at(pred, convert(true)) == 0.8


def test_metrics_refuse_logits_mismatched_lengths_and_empty_input():
    with pytest.raises(ValueError, match=r"pred must be one age per sample, shape \(N,\), got "
                                         r"\(5, 117\); decode model outputs to ages first"):
        mae(torch.zeros(5, 117), torch.zeros(5))
    with pytest.raises(ValueError, match="5 predictions but 4 true ages"):
        mae(PRED, TRUE[:4])
    with pytest.raises(ValueError, match="no samples"):
        cs_at([], [])
    with pytest.raises(ValueError, match="k must be >= 0"):
        cs_at(PRED, TRUE, k=-1)


def test_cs_curve_is_monotone_reaches_one_and_matches_cs_at():
    rng = np.random.default_rng(0)
    true = rng.integers(1, 100, 500).astype(float)
    pred = true + rng.normal(0, 6, 500)
    curve = cs_curve(pred, true, max_k=40)
    assert curve.shape == (41,)
    assert (np.diff(curve) >= 0).all()
    assert curve[-1] == 1.0  # errors of N(0, 6) over 500 faces stay far below 40
    for k in (0, 5, 17):
        assert curve[k] == cs_at(pred, true, k)
    assert cs_curve(PRED, TRUE, max_k=10).tolist() == [0.2, 0.6, 0.6, 0.6, 0.8, 0.8, 0.8, 0.8,
                                                       0.8, 0.8, 1.0]


# --------------------------------------------------------------------------- group tables
def test_errors_by_group_values():
    table = pd.DataFrame({"pred": PRED, "age": TRUE, "race": [0, 0, 1, 1, 2]})
    out = errors_by_group(table, "pred", "age", "race")
    assert list(out.columns) == ["n", "MAE", "CS@5"] and out.index.name == "race"
    assert out["n"].tolist() == [2, 2, 1]
    assert out["MAE"].tolist() == pytest.approx([0.5, 7.0, 0.5])
    assert out["CS@5"].tolist() == pytest.approx([1.0, 0.5, 1.0])
    # each group's MAE is its own faces' MAE, and the n-weighted mean is the overall MAE
    assert (out["n"] * out["MAE"]).sum() / out["n"].sum() == pytest.approx(mae(PRED, TRUE))


def test_errors_by_group_keeps_missing_values_and_empty_categories():
    gender = pd.Series(pd.array([0, 1, None, 1, 0], dtype="Int64"))
    table = pd.DataFrame({"pred": PRED, "age": TRUE, "gender": gender})
    out = errors_by_group(table, "pred", "age", "gender", k=1)
    assert out["n"].sum() == 5  # the face of unknown gender is not dropped
    assert list(out.columns) == ["n", "MAE", "CS@1"]
    assert out["n"].tolist() == [2, 2, 1]
    band = pd.Categorical(["a", "a", "c", "c", "a"], categories=["a", "b", "c"])
    out = errors_by_group(table.assign(band=band), "pred", "age", "band")
    assert out.index.tolist() == ["a", "b", "c"]
    assert out["n"].tolist() == [3, 0, 2] and np.isnan(out.loc["b", "MAE"])


def test_errors_by_group_names_missing_columns():
    with pytest.raises(ValueError, match=r"column\(s\) \['gender'\] not in the table; it has "
                                         r"\['pred', 'age'\]"):
        errors_by_group(pd.DataFrame({"pred": [1], "age": [2]}), "pred", "age", "gender")


def test_age_band_mae_uses_true_ages_and_band_order():
    out = age_band_mae(PRED, TRUE)
    assert out.index.tolist() == plots.band_labels(plots.AGE_BANDS)  # '3-12' before '13-19'
    assert out["n"].tolist() == [1, 0, 0, 1, 1, 1, 0, 0, 1, 0]  # by true age: 2.5 is in 0-2
    assert out.loc["0-2", "MAE"] == 0.5 and out.loc["70-79", "MAE"] == 10.0


def test_age_band_mae_hand_values():
    out = age_band_mae([2.0, 10.0, 0.0, 70.0], [1.0, 12.0, 14.0, 14.0], edges=(0, 3, 13, 117))
    assert out["n"].tolist() == [1, 1, 2]  # bands of the *true* ages
    assert out["MAE"].tolist() == pytest.approx([1.0, 2.0, 35.0])
    assert out["CS@5"].tolist() == pytest.approx([1.0, 1.0, 0.0])


# --------------------------------------------------------------------------- fastai
def fake_learn(pred: torch.Tensor, y: torch.Tensor):
    """The three attributes AccumMetric.accumulate reads from a Learner."""
    from fastai.torch_core import to_detach
    return types.SimpleNamespace(pred=pred, y=y, to_detach=to_detach)


def test_per_batch_mean_is_biased_and_accum_metric_is_per_sample():
    true = torch.tensor([20.0, 30.0, 40.0, 50.0])
    pred = torch.tensor([20.0, 30.0, 40.0, 58.0])  # one bad face, alone in the last batch
    batches = [(pred[:3], true[:3]), (pred[3:], true[3:])]  # sizes 3 and 1
    per_batch = np.mean([mae(p, t) for p, t in batches])
    per_sample = mae(pred, true)
    assert per_batch == 4.0 and per_sample == 2.0  # the mean of batch means doubles the MAE

    mae_metric, cs_metric = metrics.fastai_metrics(losses.regression_age)
    assert (mae_metric.name, cs_metric.name) == ("mae", "cs5")
    for metric in (mae_metric, cs_metric):
        metric.reset()
        for p, t in batches:
            metric.accumulate(fake_learn(p[:, None], t))  # a (B, 1) regression head
    assert mae_metric.value == per_sample
    assert cs_metric.value == 0.75


def test_the_fastai_cs_metric_uses_its_own_k():
    _, cs3 = metrics.fastai_metrics(losses.regression_age, k=3)
    cs3.reset()
    cs3.accumulate(fake_learn(torch.tensor([[20.0], [30.0], [44.0], [58.0]]),
                              torch.tensor([20.0, 30.0, 40.0, 50.0])))  # errors 0, 0, 4, 8
    assert (cs3.name, cs3.value) == ("cs3", 0.5)  # CS@5 would say 0.75


def test_fastai_metrics_decode_logits_whole():
    logits = torch.full((5, 117), -20.0)
    logits[torch.arange(5), torch.tensor([20, 30, 41, 60, 3])] = 20.0
    mae_metric, cs_metric = metrics.fastai_metrics(losses.argmax_age)
    for metric in (mae_metric, cs_metric):
        metric.reset()
        metric.accumulate(fake_learn(logits[:2], torch.tensor(TRUE[:2])))
        metric.accumulate(fake_learn(logits[2:], torch.tensor(TRUE[2:])))
    assert mae_metric.value == pytest.approx(mae(PRED, TRUE))
    assert cs_metric.value == pytest.approx(cs_at(PRED, TRUE))


def tiny_learner(kind: str, loss_name: str, weight: float = 1.0):
    """A fastai Learner on 4 faces reduced to one number each, valid batches of 3 and 1."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        from fastai.data.core import DataLoaders
        from fastai.data.load import DataLoader
        from fastai.learner import Learner
    x = torch.tensor([[20.0], [30.0], [40.0], [50.0]])
    y = torch.tensor([20.0, 30.0, 40.0, 58.0])
    items = list(zip(x, y))
    dls = DataLoaders(DataLoader(items, bs=2, shuffle=True), DataLoader(items, bs=3),
                      device="cpu")
    columns = {"regression": 1, "classification": 117}.get(kind, 116)
    head = nn.Linear(1, columns)
    with torch.no_grad():
        head.weight.fill_(weight)
        head.bias.zero_()
    model = nn.Sequential(head, nn.Flatten(0)) if kind == "regression" else head
    return Learner(dls, model, loss_func=losses.get_loss(loss_name),
                   metrics=metrics.fastai_metrics(losses.decoder_for(kind)))


def test_learner_validate_reports_the_per_sample_mae():
    learn = tiny_learner("regression", "l1")
    loss, mae_value, cs5 = learn.validate()
    assert mae_value == 2.0 and cs5 == 0.75  # batch means would say 4.0
    assert loss == pytest.approx(2.0)  # fastai weights its loss by batch size too


@pytest.mark.parametrize("kind,loss_name", [("regression", "adaptive"),
                                            ("classification", "mean_residue"),
                                            ("coral", "coral"), ("corn", "corn")])
def test_two_batch_fit_with_each_kind_of_head(kind, loss_name):
    learn = tiny_learner(kind, loss_name, weight=0.01)
    assert losses.loss_output_kind(loss_name) == kind
    learn.fit(1, 1e-3)
    assert learn.recorder.metric_names[-3:] == ["mae", "cs5", "time"]
    train_loss, valid_loss, mae_value, cs5 = learn.recorder.values[-1]
    assert all(np.isfinite([train_loss, valid_loss, mae_value, cs5]))
    assert 0 <= cs5 <= 1


def test_cs_by_group_counts_an_error_of_exactly_k_as_within():
    table = pd.DataFrame({"pred": [25.0, 30.0, 40.0], "true": [20.0, 30.0, 30.0],
                          "g": ["a", "a", "b"]})
    groups = errors_by_group(table, "pred", "true", "g", k=5)
    assert groups.loc["a", "CS@5"] == cs_at([25.0, 30.0], [20.0, 30.0], 5) == 1.0


@pytest.mark.parametrize("m", [1, 3])
def test_seed_noise_flags_five_percent_of_null_variants(m):
    """Baseline of n = 3 seeds and variants of m seeds, all drawn from the same run-to-run
    noise: a variant lands beyond the 95% band about 5% of the time, whatever m is."""
    rng = np.random.default_rng(0)
    n, trials = 3, 40_000
    base = rng.normal(0, 1, (trials, n))
    variant = rng.normal(0, 1, (trials, m)).mean(1)
    flagged = [abs(v - b.mean()) > np.prod(metrics.seed_noise(b.std(ddof=1), n, m))
               for v, b in zip(variant, base)]
    assert 0.04 < np.mean(flagged) < 0.06
    with pytest.raises(ValueError, match="2 or more seeds"):
        metrics.seed_noise(0.1, n=1)


def test_the_reusable_modules_import_without_plotting_or_fastai():
    """Someone who wants only the losses or the metrics gets neither matplotlib nor fastai."""
    import subprocess
    import sys

    code = ("import sys, agelib.metrics, agelib.losses, agelib.models, agelib.inference; "
            "print(sorted(m for m in ('matplotlib', 'fastai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plots_and_metrics_share_one_set_of_age_bands():
    assert plots.AGE_BANDS is metrics.AGE_BANDS and plots.age_band is metrics.age_band


def test_age_band_mae_scores_cs_at_its_own_k():
    """Catches age_band_mae not passing k on: a CS@1 table scored (and named) at k = 5."""
    out = age_band_mae([2.0, 10.0, 0.0, 70.0], [1.0, 12.0, 14.0, 14.0], edges=(0, 3, 13, 117),
                       k=1)  # errors 1, 2, 14, 56
    assert list(out.columns) == ["n", "MAE", "CS@1"]
    assert out["CS@1"].tolist() == pytest.approx([1.0, 0.0, 0.0])
