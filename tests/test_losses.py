"""Losses, their targets and the decoders to ages (agelib.losses), checked against coral_pytorch."""

import math

import numpy as np
import pytest
import torch

from agelib import losses
from agelib.losses import (LOSSES, OUTPUT_KINDS, adaptive_loss, age_to_class, coral_loss,
                           coral_loss_from_levels, corn_loss, cross_entropy_loss,
                           gaussian_label_distribution, get_loss, ldl_loss, levels_from_ages,
                           loss_output_kind, mean_residue_loss, mean_variance_loss)

coral_dataset = pytest.importorskip("coral_pytorch.dataset")
coral_losses = pytest.importorskip("coral_pytorch.losses")

K = 117  # ages 0..116, the course's default head


def random_case(num_classes: int = K, batch: int = 64, seed: int = 0, min_age: int = 0):
    """Random ordinal logits (B, K-1) and ages that include both ends of the range."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, num_classes - 1, generator=g)
    classes = torch.randint(0, num_classes, (batch,), generator=g)
    classes[:2] = torch.tensor([0, num_classes - 1])  # edge labels
    return logits, classes, (classes + min_age).float()


# --------------------------------------------------------------------------- targets
def test_age_to_class_rounds_shifts_and_clips():
    ages = torch.tensor([0.0, 0.4, 0.6, 116.0, 116.4, 200.0, -3.0])
    assert age_to_class(ages, K).tolist() == [0, 0, 1, 116, 116, 116, 0]
    assert age_to_class(torch.tensor([1.0, 5.0, 80.0]), 80, min_age=1).tolist() == [0, 4, 79]
    assert age_to_class(torch.tensor([3.0]), K).dtype == torch.int64


@pytest.mark.parametrize("num_classes", [2, 5, K])
def test_levels_from_ages_equal_coral_pytorch_levels(num_classes):
    _, classes, ages = random_case(num_classes, seed=num_classes)
    expected = coral_dataset.levels_from_labelbatch(classes.tolist(), num_classes)
    got = levels_from_ages(ages, num_classes)
    assert got.shape == (64, num_classes - 1) and got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_levels_from_ages_with_min_age():
    _, classes, ages = random_case(10, seed=1, min_age=16)
    expected = coral_dataset.levels_from_labelbatch(classes.tolist(), 10)
    assert torch.equal(levels_from_ages(ages, 10, min_age=16), expected)


def test_gaussian_label_distribution_sums_to_one_and_peaks_at_the_age():
    ages = torch.tensor([0.0, 1.0, 30.0, 58.0, 116.0])
    dist = gaussian_label_distribution(ages, K, sigma=2.0)
    assert dist.shape == (5, K)
    assert torch.allclose(dist.sum(1), torch.ones(5))
    assert dist.argmax(1).tolist() == [0, 1, 30, 58, 116]
    assert (dist >= 0).all()
    # symmetric around an age away from the edges
    assert torch.allclose(dist[2, 28], dist[2, 32]) and dist[2, 29] > dist[2, 28]


def test_gaussian_label_distribution_width_follows_sigma():
    narrow = gaussian_label_distribution(torch.tensor([40.0]), K, sigma=1.0)
    wide = gaussian_label_distribution(torch.tensor([40.0]), K, sigma=5.0)
    assert narrow[0, 40] > wide[0, 40]
    ages = torch.arange(K, dtype=torch.float32)
    std = ((wide[0] * (ages - 40) ** 2).sum()).sqrt()
    assert std.item() == pytest.approx(5.0, abs=0.01)


# --------------------------------------------------------------------------- ordinal losses
@pytest.mark.parametrize("num_classes,seed", [(2, 0), (5, 1), (K, 2), (K, 3)])
def test_coral_loss_equals_coral_pytorch(num_classes, seed):
    logits, classes, ages = random_case(num_classes, seed=seed)
    levels = coral_dataset.levels_from_labelbatch(classes.tolist(), num_classes)
    expected = coral_losses.coral_loss(logits, levels)
    assert torch.allclose(coral_loss(logits, ages), expected)
    assert torch.allclose(coral_loss_from_levels(logits, levels), expected)


def test_coral_loss_with_importance_weights_and_min_age_equals_coral_pytorch():
    logits, classes, ages = random_case(20, seed=4, min_age=5)
    weights = torch.linspace(0.5, 2.0, 19)
    levels = coral_dataset.levels_from_labelbatch(classes.tolist(), 20)
    expected = coral_losses.coral_loss(logits, levels, importance_weights=weights)
    got = coral_loss(logits, ages, min_age=5, importance_weights=weights)
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("num_classes,seed", [(2, 0), (5, 1), (K, 2), (K, 3)])
def test_corn_loss_equals_coral_pytorch(num_classes, seed):
    logits, classes, ages = random_case(num_classes, seed=seed)
    expected = coral_losses.corn_loss(logits, classes, num_classes)
    assert torch.allclose(corn_loss(logits, ages), expected)


def test_corn_loss_with_all_edge_labels_and_min_age_equals_coral_pytorch():
    logits, _, _ = random_case(6, batch=4, seed=5)
    classes = torch.tensor([0, 0, 5, 5])  # no sample reaches some tasks; others use everyone
    expected = coral_losses.corn_loss(logits, classes, 6)
    assert torch.allclose(corn_loss(logits, classes.float() + 21, min_age=21), expected)


def test_corn_loss_gradient_equals_coral_pytorch():
    logits, classes, ages = random_case(12, seed=6)
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    corn_loss(ours, ages).backward()
    coral_losses.corn_loss(theirs, classes, 12).backward()
    assert torch.allclose(ours.grad, theirs.grad)


# --------------------------------------------------------------------------- decoders
@pytest.mark.parametrize("num_classes,seed", [(2, 0), (5, 1), (K, 2)])
def test_ordinal_decoders_equal_coral_pytorch(num_classes, seed):
    logits, _, _ = random_case(num_classes, seed=seed)
    corn_expected = coral_dataset.corn_label_from_logits(logits).float()
    coral_expected = coral_dataset.proba_to_label(torch.sigmoid(logits)).float()
    assert torch.equal(losses.corn_age(logits), corn_expected)
    assert torch.equal(losses.coral_age(logits), coral_expected)
    assert torch.equal(losses.corn_age(logits, 10), corn_expected + 10)
    assert torch.equal(losses.coral_age(logits, 10), coral_expected + 10)


def test_expected_ages_are_sums_of_probabilities():
    logits, _, _ = random_case(7, batch=5, seed=7)
    probs = torch.sigmoid(logits)
    assert torch.allclose(losses.coral_expected_age(logits, 3), 3 + probs.sum(1))
    assert torch.allclose(losses.corn_expected_age(logits), torch.cumprod(probs, 1).sum(1))
    # CORN's running product never increases: its decoded age is rank-consistent
    assert (torch.diff(torch.cumprod(probs, 1), dim=1) <= 0).all()


def test_expected_and_argmax_age_of_classification_logits():
    logits = torch.full((2, 5), -30.0)
    logits[0, 3] = 30.0  # sure of class 3
    logits[1, 1] = logits[1, 2] = 30.0  # torn between 1 and 2
    assert torch.allclose(losses.expected_age(logits, min_age=10), torch.tensor([13.0, 11.5]))
    assert losses.argmax_age(logits, min_age=10).tolist() == [13.0, 11.0]
    assert losses.expected_age(logits.half()).dtype == torch.float32


def test_decoder_for_each_kind():
    assert losses.decoder_for("regression")(torch.tensor([[4.0], [5.0]])).tolist() == [4.0, 5.0]
    assert losses.decoder_for("corn", min_age=1)(torch.tensor([[9.0, 9.0]])).tolist() == [3.0]
    assert losses.decoder_for("classification")(torch.zeros(1, 3)).tolist() == [1.0]
    assert set(losses.DECODERS) == set(OUTPUT_KINDS)
    with pytest.raises(ValueError, match=r"unknown output kind 'ordinal'; valid: \['regression'"):
        losses.decoder_for("ordinal")


# --------------------------------------------------------------------------- regression losses
def test_regression_losses_hand_values():
    pred, ages = torch.tensor([20.0, 33.0, 50.0]), torch.tensor([21.0, 30.0, 50.0])
    assert losses.l1_loss(pred, ages).item() == pytest.approx(4 / 3)
    assert losses.mse_loss(pred, ages).item() == pytest.approx(10 / 3)
    # e = -1, 3, 0 with s = 2: 3·1/3 + 3·9/5 + 0
    assert adaptive_loss(pred, ages).item() == pytest.approx((1 + 27 / 5) / 3)


def test_adaptive_loss_is_quadratic_near_zero_and_linear_far_away():
    s = 2.0
    zero = torch.zeros(1)
    for e in (1e-3, 1e-2):
        value = adaptive_loss(torch.tensor([e]), zero, s=s).item()
        assert value / e**2 == pytest.approx((1 + s) / s, rel=0.01)
    for e in (1e3, 1e4):
        value = adaptive_loss(torch.tensor([e]), zero, s=s).item()
        assert value / e == pytest.approx(1 + s, rel=0.01)
    # between the two: far cheaper than MSE for a 30-year error, dearer than L1 for 1 year
    assert adaptive_loss(torch.tensor([30.0]), zero) < losses.mse_loss(torch.tensor([30.0]), zero)
    assert adaptive_loss(torch.tensor([1.0]), zero) == losses.l1_loss(torch.tensor([1.0]), zero)


def test_adaptive_loss_gradient_is_finite_and_zero_at_zero_error():
    pred = torch.tensor([30.0, 31.0, 20.0], requires_grad=True)
    adaptive_loss(pred, torch.tensor([30.0, 30.0, 30.0])).backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0].item() == 0.0
    assert pred.grad[1] > 0 and pred.grad[2] < 0
    # linear far away: the pull of a 10-year error is bounded by (1 + s) / B
    assert abs(pred.grad[2].item()) < 3 / 3


def test_regression_losses_accept_b1_predictions():
    pred, ages = torch.tensor([[20.0], [33.0]]), torch.tensor([21.0, 30.0])
    for fn in (losses.l1_loss, losses.mse_loss, adaptive_loss):
        assert fn(pred, ages) == fn(pred.squeeze(1), ages)


def test_losses_are_computed_in_float32_under_mixed_precision():
    ages = torch.tensor([33.3, 7.0])
    pred = torch.tensor([30.0, 8.0], dtype=torch.bfloat16)  # a bf16 head under autocast
    loss = losses.l1_loss(pred, ages)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((3.3 + 1.0) / 2, rel=1e-6)  # 33.3 is not cast to bf16
    logits = torch.zeros(2, K, dtype=torch.bfloat16)
    assert mean_variance_loss(logits, ages).dtype == torch.float32
    assert losses.expected_age(logits).tolist() == pytest.approx([58.0, 58.0])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_and_decoders_do_not_lose_precision_under_autocast(name):
    """fastai's MixedPrecision computes the loss inside autocast, which runs matmuls in bf16."""
    kind = loss_output_kind(name)
    output = head_output(kind).detach()
    ages = torch.tensor([0.0, 1.0, 25.0, 60.0, 115.0, 116.0])
    plain = get_loss(name)(output, ages)
    decoded = losses.decoder_for(kind)(output)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(get_loss(name)(output, ages), plain, rtol=1e-5)
        assert torch.allclose(losses.decoder_for(kind)(output), decoded, rtol=1e-5)


# --------------------------------------------------------------------------- classification losses
def test_cross_entropy_matches_torch_on_rounded_classes():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, K, generator=g)
    ages = torch.tensor([0.0, 1.2, 5.7, 30.0, 44.5, 80.0, 99.0, 116.0])
    expected = torch.nn.functional.cross_entropy(logits, torch.round(ages).long())
    assert torch.allclose(cross_entropy_loss(logits, ages), expected)
    part, part_ages = logits[1:7, :100], ages[1:7]  # ages 1..100 on a head starting at 1
    shifted = torch.nn.functional.cross_entropy(part, torch.round(part_ages).long() - 1)
    assert torch.allclose(cross_entropy_loss(part, part_ages, min_age=1), shifted)


def test_ldl_loss_is_zero_for_the_target_and_positive_otherwise():
    ages = torch.tensor([3.0, 40.0, 116.0])
    target = gaussian_label_distribution(ages, K, sigma=2.0)
    perfect = target.clamp_min(1e-30).log()  # log 0 = -inf would make 0 · inf = nan
    assert ldl_loss(perfect, ages).item() == pytest.approx(0.0, abs=1e-5)
    assert ldl_loss(torch.zeros(3, K), ages) > 1.0
    # one-hot logits on the right age still pay for ignoring the neighbours
    one_hot = torch.full((3, K), -20.0).scatter(1, torch.tensor([[3], [40], [116]]), 20.0)
    assert ldl_loss(one_hot, ages) > 1.0


def test_ldl_loss_is_the_kl_divergence_averaged_over_samples():
    g = torch.Generator().manual_seed(1)
    logits, ages = torch.randn(4, 30, generator=g), torch.tensor([2.0, 10.0, 17.0, 29.0])
    target = gaussian_label_distribution(ages, 30, sigma=3.0)
    logp = torch.log_softmax(logits, 1)
    kl = (torch.xlogy(target, target) - target * logp).sum(1).mean()
    assert torch.allclose(ldl_loss(logits, ages, sigma=3.0), kl)


def test_mean_variance_loss_hand_example():
    logits = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.25, 0.5, 0.25]]))  # mean 1, var 0.5
    ages = torch.tensor([1.0, 2.0])
    ce = (math.log(2) + math.log(4)) / 2
    mean_loss = (0.0 + 1.0 / 2) / 2  # (m - y)² / 2, averaged
    expected = ce + 0.2 * mean_loss + 0.05 * 0.5
    assert mean_variance_loss(logits, ages).item() == pytest.approx(expected, rel=1e-6)
    got = mean_variance_loss(logits, ages, lambda_mean=1.0, lambda_var=0.0)
    assert got.item() == pytest.approx(ce + mean_loss, rel=1e-6)
    # with min_age = 20, the class ages are 20, 21, 22: the same numbers for ages + 20
    assert torch.allclose(mean_variance_loss(logits, ages + 20, min_age=20),
                          mean_variance_loss(logits, ages))


def test_mean_variance_loss_equals_the_reference_implementation():
    """The widely used PyTorch version of Pan et al. (Herosan163/AgeEstimation), inlined."""
    g = torch.Generator().manual_seed(2)
    logits, ages = torch.randn(16, 70, generator=g), torch.randint(0, 70, (16,)).float()
    p = torch.softmax(logits, 1)
    a = torch.arange(70, dtype=torch.float32)
    mean = (p * a).sum(1)
    mean_loss = ((mean - ages) ** 2).mean() / 2.0
    variance_loss = (p * (a[None, :] - mean[:, None]) ** 2).sum(1).mean()
    ce = torch.nn.functional.cross_entropy(logits, ages.long())
    expected = ce + 0.2 * mean_loss + 0.05 * variance_loss
    assert torch.allclose(mean_variance_loss(logits, ages), expected)


def test_mean_residue_loss_hand_example_adaptive_and_fixed_k():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))  # mean age 2.0
    ce = -math.log(0.3)
    tail_adaptive = -(0.1 * math.log(0.1) + 0.2 * math.log(0.2))  # less probable than 0.3
    got = mean_residue_loss(logits, torch.tensor([2.0]))
    assert got.item() == pytest.approx(ce + 0.05 * tail_adaptive, rel=1e-6)
    tail_top1 = tail_adaptive - 0.3 * math.log(0.3)  # all but the single most probable class
    got = mean_residue_loss(logits, torch.tensor([2.0]), top_k=1, lambda_residue=1.0)
    assert got.item() == pytest.approx(ce + tail_top1, rel=1e-6)
    # the mean term: m = 2, y = 3
    got = mean_residue_loss(logits, torch.tensor([3.0]), lambda_residue=0.0, lambda_mean=1.0)
    assert got.item() == pytest.approx(-math.log(0.4) + 0.5, rel=1e-6)


def test_mean_residue_loss_equals_the_authors_algorithm():
    """The authors' residue_loss_adaptive_K.py, inlined without its 1e-3 log guard.

    Softmax probabilities of finite logits are never 0, so p log p is safe here.
    """
    g = torch.Generator().manual_seed(3)
    logits = (2 * torch.randn(32, 70, generator=g)).requires_grad_()
    ages = torch.randint(0, 70, (32,), generator=g).float()
    p = torch.softmax(logits, 1)
    a = torch.arange(70, dtype=torch.float32)
    mean_loss = (((p * a).sum(1) - ages) ** 2).mean() / 2.0
    prob_gt = p.gather(1, ages.long()[:, None])
    tail = (p < prob_gt).float().detach()
    residue = -(tail * p * p.log()).sum(1).mean()
    ce = torch.nn.functional.cross_entropy(logits, ages.long())
    expected = ce + 0.2 * mean_loss + 0.05 * residue
    ours_logits = logits.detach().clone().requires_grad_()
    ours = mean_residue_loss(ours_logits, ages)
    assert torch.allclose(ours, expected)
    expected.backward()
    ours.backward()
    assert torch.allclose(ours_logits.grad, logits.grad, atol=1e-6)


# --------------------------------------------------------------------------- the registry
def test_every_loss_is_registered_with_an_output_kind():
    assert set(LOSSES) == set(losses.LOSS_OUTPUT_KINDS)
    assert set(losses.LOSS_OUTPUT_KINDS.values()) == set(OUTPUT_KINDS)
    assert loss_output_kind("coral") == "coral"
    assert loss_output_kind("l1") == "regression"


def head_output(kind: str, batch: int = 6, num_classes: int = K) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    columns = {"regression": 1, "classification": num_classes}.get(kind, num_classes - 1)
    out = torch.randn(batch, columns, generator=g)
    if kind == "regression":
        out = 40 + 10 * out.squeeze(1)  # (B,) ages
    return out.requires_grad_()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_runs_forward_and_backward(name):
    output = head_output(loss_output_kind(name))
    ages = torch.tensor([0.0, 1.0, 25.0, 60.0, 115.0, 116.0])
    loss = get_loss(name)(output, ages)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert output.grad is not None and torch.isfinite(output.grad).all()
    assert output.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_refuses_another_kind_of_output(name):
    kind = loss_output_kind(name)
    wrong = "classification" if kind == "regression" else "regression"
    with pytest.raises(ValueError):
        get_loss(name)(head_output(wrong).detach(), torch.full((6,), 30.0))


def test_get_loss_fixes_settings():
    pred, ages = torch.tensor([35.0]), torch.tensor([30.0])
    assert get_loss("adaptive", s=5.0)(pred, ages) == adaptive_loss(pred, ages, s=5.0)
    assert get_loss("adaptive")(pred, ages) == adaptive_loss(pred, ages)


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown loss 'huber'; valid:") as info:
        get_loss("huber")
    for name in LOSSES:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="unknown loss 'Coral'; valid:"):
        loss_output_kind("Coral")


def test_unknown_loss_setting_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"loss 'ldl' has no setting\(s\) \['sigmaa'\]; "
                                         r"valid: \['sigma', 'min_age', 'num_classes'\]"):
        get_loss("ldl", sigmaa=3.0)


# --------------------------------------------------------------------------- wrong input
def test_regression_loss_refuses_logits_and_mismatched_batches():
    with pytest.raises(ValueError, match=r"expects \(B,\) or \(B, 1\) predicted ages, "
                                         r"got \(4, 117\)"):
        losses.l1_loss(torch.zeros(4, K), torch.zeros(4))
    with pytest.raises(ValueError, match="output has 4 rows but there are 3 ages"):
        losses.mse_loss(torch.zeros(4, 1), torch.zeros(3))


def test_ages_must_be_one_per_sample():
    with pytest.raises(ValueError, match=r"ages must have shape \(B,\), got \(4, 1\)"):
        losses.l1_loss(torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="ages must be a torch tensor"):
        losses.l1_loss(torch.zeros(2), [1.0, 2.0])
    with pytest.raises(ValueError, match="ages is empty"):
        cross_entropy_loss(torch.zeros(0, 5), torch.zeros(0))


def test_classification_losses_refuse_1d_outputs():
    with pytest.raises(ValueError, match=r"expects \(B, columns\) logits, got \(4,\)"):
        cross_entropy_loss(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="a coral loss expects"):
        coral_loss(torch.zeros(4), torch.zeros(4))


def test_ages_outside_the_head_range_raise_with_the_fix():
    with pytest.raises(ValueError, match=r"ages must lie in \[0, 99\] for a head with 100 "
                                         r"classes starting at age 0; got min 3, max 116"):
        cross_entropy_loss(torch.zeros(2, 100), torch.tensor([3.0, 116.0]))
    with pytest.raises(ValueError, match=r"lie in \[1, 116\]"):
        coral_loss(torch.zeros(2, 115), torch.tensor([0.0, 5.0]), min_age=1)
    with pytest.raises(ValueError, match="lie in"):
        corn_loss(torch.zeros(2, 116), torch.tensor([float("nan"), 5.0]))
    with pytest.raises(ValueError, match="lie in"):
        levels_from_ages(torch.tensor([5.0]), num_classes=5)


def test_num_classes_must_match_the_logit_columns():
    with pytest.raises(ValueError, match="a classification head for 117 classes has 117 logit "
                                         "columns, got 116"):
        cross_entropy_loss(torch.zeros(2, 116), torch.tensor([3.0, 4.0]), num_classes=117)
    with pytest.raises(ValueError, match="a coral head for 117 classes has 116 logit columns, "
                                         "got 117"):
        coral_loss(torch.zeros(2, 117), torch.tensor([3.0, 4.0]), num_classes=117)
    with pytest.raises(ValueError, match=r"logits \(2, 4\) and levels \(2, 3\)"):
        coral_loss_from_levels(torch.zeros(2, 4), torch.zeros(2, 3))


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="sigma must be positive"):
        ldl_loss(torch.zeros(1, 5), torch.tensor([2.0]), sigma=0.0)
    with pytest.raises(ValueError, match="s must be positive"):
        adaptive_loss(torch.zeros(1), torch.zeros(1), s=-1.0)
    with pytest.raises(ValueError, match="top_k must be between 1 and the 5 classes, got 6"):
        mean_residue_loss(torch.zeros(1, 5), torch.tensor([2.0]), top_k=6)


@pytest.mark.parametrize("top_k, tail", [(1, [0, 1, 2]), (3, [0]), (4, [])])
def test_mean_residue_with_a_fixed_top_k_hand_values(top_k, tail):
    """P = (0.1, 0.2, 0.3, 0.4), true age 2: mean 2.0 (no mean loss), CE -log 0.3, and the
    residue is the entropy of the classes outside the top_k most probable."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    loss = losses.mean_residue_loss(torch.log(p)[None], torch.tensor([2.0]), top_k=top_k)
    expected = -np.log(0.3) + 0.05 * sum(-float(p[j]) * np.log(float(p[j])) for j in tail)
    assert float(loss) == pytest.approx(expected, abs=1e-5)


def test_gaussian_target_is_centred_on_the_age_not_its_class():
    target = losses.gaussian_label_distribution(torch.tensor([2.4]), num_classes=5, sigma=1.0)
    k = np.arange(5)
    expected = np.exp(-(k - 2.4) ** 2 / 2) / np.exp(-(k - 2.4) ** 2 / 2).sum()
    np.testing.assert_allclose(target[0].numpy(), expected, atol=1e-6)
    assert target[0, 3] > target[0, 1]  # 2.4 is nearer 3 than 1


def test_get_loss_takes_min_age_from_the_head_it_trains():
    from agelib import models

    head = models.ClassificationHead(8, num_classes=60, min_age=16)
    loss = losses.get_loss("cross_entropy", head=head)
    logits = torch.full((2, 60), -20.0)
    logits[0, 30 - 16], logits[1, 40 - 16] = 20.0, 20.0  # the head reads these as 30 and 40
    assert loss(logits, torch.tensor([30.0, 40.0])) < 1e-6
    assert head.to_age(logits).round().tolist() == [30.0, 40.0]
    with pytest.raises(ValueError, match="min_age=0 disagrees with the head's min_age=16"):
        losses.get_loss("cross_entropy", head=head, min_age=0)
    with pytest.raises(ValueError, match="needs a regression head's output, not a classification"):
        losses.get_loss("l1", head=head)
    hand_made = torch.nn.Linear(8, 59)  # chapter 04's independent head: no min_age to take
    hand_made.kind = "coral"
    assert losses.get_loss("coral", head=hand_made, min_age=16).keywords["min_age"] == 16


# --------------------------------------------------------------------------- decoders
def test_decoder_for_coral_and_corn_apply_each_papers_rule():
    """Catches DECODERS' coral and corn entries swapped. The same logits mean different
    ages to the two heads: CORAL counts P(age > k) > 0.5 task by task, CORN multiplies the
    conditional probabilities first (coral_pytorch's proba_to_label / corn_label_from_logits)."""
    logits = torch.tensor([[3.0, 0.2, 0.2, 0.2]])  # sigmoid: 0.953, 0.550, 0.550, 0.550
    # CORAL: all four above 0.5; CORN: running product 0.953, 0.524, 0.288, 0.158 -> two
    assert losses.decoder_for("coral", min_age=10)(logits).tolist() == [14.0]
    assert losses.decoder_for("corn", min_age=10)(logits).tolist() == [12.0]


def test_ordinal_labels_count_only_probabilities_above_one_half():
    """Catches coral_age counting P >= 0.5. A logit of exactly 0 is P = 0.5: not a "yes"
    in coral_pytorch's proba_to_label (probas > 0.5), so the count stays at min_age."""
    zero = torch.zeros(2, 3)
    assert losses.coral_age(zero, min_age=20).tolist() == [20.0, 20.0]
    assert losses.corn_age(zero, min_age=20).tolist() == [20.0, 20.0]  # 0.5, 0.25, 0.125


def test_regression_age_keeps_a_batch_of_one_a_batch():
    """Catches regression_age squeezing every axis: one face is still a (1,) batch."""
    assert losses.regression_age(torch.tensor([[31.5]])).shape == (1,)
    assert losses.decoder_for("regression")(torch.tensor([[31.5]])).tolist() == [31.5]


# --------------------------------------------------------------------------- boundaries of the checks
def test_bad_settings_raise_at_the_boundary_not_only_beyond_it():
    """s = 0 and top_k = 0 are refused too: s = 0 divides 0 by 0 at a perfect prediction
    (a NaN loss), and top_k = 0 would silently mean "the whole distribution is the tail"."""
    with pytest.raises(ValueError, match="s must be positive"):
        adaptive_loss(torch.zeros(1), torch.zeros(1), s=0.0)
    with pytest.raises(ValueError, match="top_k must be between 1 and the 5 classes, got 0"):
        mean_residue_loss(torch.zeros(1, 5), torch.tensor([2.0]), top_k=0)


def test_a_single_column_is_not_a_classification_head():
    """A (B, 1) output is a regression head's; as classification logits it has one class,
    a cross-entropy of exactly 0 whatever the model does, so it must be refused."""
    with pytest.raises(ValueError, match=r"at least 2 logit column\(s\), got 1"):
        cross_entropy_loss(torch.zeros(3, 1), torch.zeros(3))


def test_scalar_ages_are_refused_with_a_value_error():
    """A 0-d age tensor is not (B,): the shape check names it, not a TypeError from len()."""
    with pytest.raises(ValueError, match=r"ages must have shape \(B,\), got \(\)"):
        losses.l1_loss(torch.tensor([1.0]), torch.tensor(1.0))
