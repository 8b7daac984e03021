"""Every training loss of the course, and the decoders that turn model outputs into ages.

Each idea is a plain function ``loss(output, ages, ...) -> scalar``, so it can be
a fastai ``loss_func`` as it stands (fastai calls ``loss_func(pred, target)``).
Targets are always ages in years, a float tensor ``(B,)``; the loss, not the data
loader, turns them into classes, distributions or ordinal levels, so one
``DataLoaders`` serves every head. Losses are means over the samples of a batch.

Four kinds of model output, one per head (see ``agelib.models``):

``"regression"``      ``(B,)`` predicted ages (``(B, 1)`` is accepted and squeezed).
``"classification"``  ``(B, K)`` logits over the ages ``min_age .. min_age + K - 1``.
``"coral"``           ``(B, K-1)`` logits of the rank tasks "age > min_age + k", k = 0..K-2.
``"corn"``            ``(B, K-1)`` logits of the conditional tasks of CORN.

:data:`LOSSES` names every loss, :func:`loss_output_kind` says which output it
expects (so a trainer can refuse a head/loss mismatch) and :func:`get_loss`
builds one by name. The decoders (:func:`expected_age`, :func:`coral_age`, ...)
live here, next to the class conventions they share with the losses; heads and
:mod:`agelib.metrics` import them from here.

Wrong input raises ``ValueError`` saying what to fix, never a silent broadcast:
``(B, 1)`` minus ``(B,)`` is a ``(B, B)`` matrix, and its mean is a loss that
trains without complaint towards the wrong answer.
"""

from __future__ import annotations

import inspect
from functools import partial, update_wrapper
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

OUTPUT_KINDS = ("regression", "classification", "coral", "corn")


# --------------------------------------------------------------------------- input checks
def _float32_or_wider(x: Tensor) -> Tensor:
    """Losses are computed in float32 even under mixed precision (bf16 has 8 mantissa bits)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_ages(ages: Tensor, batch: int | None = None) -> Tensor:
    """``ages`` as a float ``(B,)`` tensor, or a ValueError that says what is wrong."""
    if not torch.is_tensor(ages):
        raise ValueError(f"ages must be a torch tensor of shape (B,), got {type(ages).__name__}")
    if ages.ndim != 1:
        raise ValueError(f"ages must have shape (B,), got {tuple(ages.shape)}; targets are one "
                         "age per sample (use ages.squeeze(1) on a (B, 1) tensor)")
    if ages.numel() == 0:
        raise ValueError("ages is empty: a loss needs at least one sample")
    if batch is not None and len(ages) != batch:
        raise ValueError(f"the model output has {batch} rows but there are {len(ages)} ages")
    return ages if ages.is_floating_point() else ages.float()


def _check_range(ages: Tensor, num_classes: int, min_age: int) -> None:
    """Class-based losses need every age inside the head's range (NaN fails too).

    One host sync per batch: cheap next to a forward pass, and it turns a CUDA
    device-side assert (or a silently clipped target) into a message.
    """
    max_age = min_age + num_classes - 1
    if not bool(((ages >= min_age) & (ages <= max_age)).all()):
        raise ValueError(
            f"ages must lie in [{min_age}, {max_age}] for a head with {num_classes} classes "
            f"starting at age {min_age}; got min {ages.min().item():g}, max "
            f"{ages.max().item():g}. Give the head more classes (or another min_age), or clip "
            "the ages first on purpose (age_to_class shows how)")


def _check_logits(logits: Tensor, ages: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """2-D logits (as float32) and (B,) ages of the same batch, for the class-based losses."""
    if not torch.is_tensor(logits) or logits.ndim != 2:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ValueError(f"a {kind} loss expects (B, columns) logits, got {shape}; "
                         "a (B,) output comes from a regression head: use l1_loss, mse_loss "
                         "or adaptive_loss, or a head of the matching kind")
    min_columns = 2 if kind == "classification" else 1
    if logits.shape[1] < min_columns:
        raise ValueError(f"a {kind} loss needs at least {min_columns} logit column(s), got "
                         f"{logits.shape[1]}")
    ages = _check_ages(ages, logits.shape[0])
    return _float32_or_wider(logits), _float32_or_wider(ages)


def _check_columns(logits: Tensor, num_classes: int | None, kind: str) -> int:
    """The number of age classes K implied by the logits, checked against ``num_classes``."""
    extra = 0 if kind == "classification" else 1  # ordinal heads have K-1 columns
    k = logits.shape[1] + extra
    if num_classes is not None and k != num_classes:
        want = num_classes - extra
        raise ValueError(f"a {kind} head for {num_classes} classes has {want} logit columns, "
                         f"got {logits.shape[1]}; is this output from another kind of head?")
    return k


def _check_regression(pred: Tensor, ages: Tensor) -> tuple[Tensor, Tensor]:
    """Predictions as (B,): a (B, 1) head output is squeezed, anything wider refused."""
    if not torch.is_tensor(pred):
        raise ValueError(f"predictions must be a torch tensor, got {type(pred).__name__}")
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred.squeeze(1)  # (B, 1) -> (B,): a Linear(…, 1) head's natural shape
    if pred.ndim != 1:
        raise ValueError(f"a regression loss expects (B,) or (B, 1) predicted ages, got "
                         f"{tuple(pred.shape)}; logits of a classification, CORAL or CORN head "
                         "need a loss of that kind (see loss_output_kind)")
    ages = _check_ages(ages, pred.shape[0])
    return _float32_or_wider(pred), _float32_or_wider(ages)


# --------------------------------------------------------------------------- targets
def age_to_class(ages: Tensor, num_classes: int, min_age: int = 0) -> Tensor:
    """Class index of each age: rounded to whole years, shifted by ``min_age``, clipped.

    Clipping keeps every index valid, so an age beyond the head's range lands in
    the end class ("116 or older") instead of crashing ``gather`` with an index
    error (on a GPU, an unreadable device-side assert). That is right for
    counting a test set's faces per class, but it hides a misconfigured head,
    so the losses check the range first and raise; here the clip is deliberate.
    ``torch.round`` rounds halves to even (2.5 -> 2); UTKFace ages are whole years.

    >>> age_to_class(torch.tensor([0.0, 2.4, 2.6, 130.0, -1.0]), num_classes=117)
    tensor([  0,   2,   3, 116,   0])
    >>> age_to_class(torch.tensor([1.0, 10.0]), num_classes=5, min_age=1)
    tensor([0, 4])
    """
    classes = torch.round(ages.float()) - min_age  # (B,)
    return classes.clamp(0, num_classes - 1).long()


def _class_targets(ages: Tensor, num_classes: int, min_age: int) -> Tensor:
    """The class indices a loss trains towards: unlike :func:`age_to_class`, never clipped."""
    _check_range(ages, num_classes, min_age)
    return age_to_class(ages, num_classes, min_age)


def levels_from_ages(ages: Tensor, num_classes: int, min_age: int = 0) -> Tensor:
    """CORAL's extended binary labels: ``levels[i, k] = 1`` when class(age_i) > k.

    Equal to ``coral_pytorch.dataset.levels_from_labelbatch`` on the class indices;
    ages outside the head's range raise ``ValueError``.

    >>> levels_from_ages(torch.tensor([2.0, 1.0, 4.0]), num_classes=5)
    tensor([[1., 1., 0., 0.],
            [1., 0., 0., 0.],
            [1., 1., 1., 1.]])
    """
    ages = _check_ages(ages)
    classes = _class_targets(ages, num_classes, min_age)  # (B,)
    ranks = torch.arange(num_classes - 1, device=ages.device)  # (K-1,)
    return (classes[:, None] > ranks[None, :]).float()  # (B, K-1)


def gaussian_label_distribution(ages: Tensor, num_classes: int, sigma: float = 2.0,
                                min_age: int = 0) -> Tensor:
    """DLDL's target: a Gaussian around each age, discretised on the classes, rows sum to 1.

    Neighbouring ages look alike, so the target spreads belief over them instead
    of a one-hot spike (Gao et al., *Deep Label Distribution Learning With Label
    Ambiguity*, IEEE TIP 2017). It is centred on the age itself, not its class.

    >>> gaussian_label_distribution(torch.tensor([2.0]), num_classes=5, sigma=1.0)
    tensor([[0.0545, 0.2442, 0.4026, 0.2442, 0.0545]])
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive (a width in years), got {sigma}")
    ages = _check_ages(ages)
    _check_range(ages, num_classes, min_age)
    class_ages = min_age + torch.arange(num_classes, device=ages.device, dtype=torch.float32)
    logp = -((class_ages[None, :] - ages.float()[:, None]) ** 2) / (2 * sigma**2)  # (B, K)
    return torch.softmax(logp, dim=1)  # normalise over the K classes, without underflow


# --------------------------------------------------------------------------- regression
def l1_loss(pred: Tensor, ages: Tensor) -> Tensor:
    """Mean absolute error in years: the loss that is the metric.

    >>> l1_loss(torch.tensor([20.0, 33.0]), torch.tensor([21.0, 30.0]))
    tensor(2.)
    """
    pred, ages = _check_regression(pred, ages)
    return (pred - ages).abs().mean()


def mse_loss(pred: Tensor, ages: Tensor) -> Tensor:
    """Mean squared error in years²: smooth, but one badly labelled face dominates it.

    >>> mse_loss(torch.tensor([20.0, 33.0]), torch.tensor([21.0, 30.0]))
    tensor(5.)
    """
    pred, ages = _check_regression(pred, ages)
    return ((pred - ages) ** 2).mean()


def adaptive_loss(pred: Tensor, ages: Tensor, s: float = 2.0) -> Tensor:
    """Mean of ``(1 + s) e² / (|e| + s)`` with ``e = pred - ages``: quadratic near 0, linear far.

    For ``|e| << s`` it is ``(1 + s)/s · e²`` (smooth gradients near the answer, like
    MSE); for ``|e| >> s`` it grows like ``(1 + s)|e|``: its gradient is bounded by
    ``1 + s`` (3 at s = 2), so a mislabelled face pulls with a bounded force, as under L1
    and unlike MSE, though up to ``1 + s`` times L1's. ``s`` (years) sets where one
    turns into the other. The robust regression loss of Maroun, Bekhouche and
    Dornaika, *Integrating ConvNeXt and Vision Transformers for Enhancing Facial Age
    Estimation* (CVIU 2025, arXiv 2511.00123), written as the course defines it.

    >>> adaptive_loss(torch.tensor([20.0, 32.0]), torch.tensor([20.0, 30.0]))  # (0 + 3·4/4) / 2
    tensor(1.5000)
    """
    if s <= 0:
        raise ValueError(f"s must be positive (years), got {s}")
    pred, ages = _check_regression(pred, ages)
    e = pred - ages  # (B,)
    return ((1 + s) * e**2 / (e.abs() + s)).mean()


# --------------------------------------------------------------------------- classification
def cross_entropy_loss(logits: Tensor, ages: Tensor, min_age: int = 0,
                       num_classes: int | None = None) -> Tensor:
    """Softmax cross-entropy on the age classes: every wrong age is equally wrong.

    ``num_classes``, when given, is checked against the logits' columns.

    >>> cross_entropy_loss(torch.log(torch.tensor([[0.25, 0.5, 0.25]])), torch.tensor([1.0]))
    tensor(0.6931)
    """
    logits, ages = _check_logits(logits, ages, "classification")
    k = _check_columns(logits, num_classes, "classification")
    return F.cross_entropy(logits, _class_targets(ages, k, min_age))


def ldl_loss(logits: Tensor, ages: Tensor, sigma: float = 2.0, min_age: int = 0,
             num_classes: int | None = None) -> Tensor:
    """DLDL: ``KL(target || softmax(logits))`` with a Gaussian target of width ``sigma`` years.

    Zero exactly when the predicted distribution is the target. Gao et al., *Deep
    Label Distribution Learning With Label Ambiguity*, IEEE TIP 2017.

    >>> target = gaussian_label_distribution(torch.tensor([3.0]), 8, sigma=1.0)
    >>> round(ldl_loss(target.log(), torch.tensor([3.0]), sigma=1.0).item(), 6)
    0.0
    """
    logits, ages = _check_logits(logits, ages, "classification")
    k = _check_columns(logits, num_classes, "classification")
    target = gaussian_label_distribution(ages, k, sigma, min_age)  # (B, K)
    # batchmean: sum over classes, mean over samples (the true KL; "mean" would divide by K)
    return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")


def _softmax_over_ages(logits: Tensor, min_age: int) -> tuple[Tensor, Tensor, Tensor]:
    """The softmax ``p``, the class ages ``j`` and the mean age ``Σ p_j j``, in that order.

    DEX's decoder and the mean-variance and mean-residue losses share them.
    """
    probs = logits.softmax(dim=1)  # (B, K)
    class_ages = min_age + torch.arange(logits.shape[1], device=logits.device,
                                        dtype=probs.dtype)  # (K,)
    mean = (probs * class_ages).sum(dim=1)  # not probs @ class_ages: autocast runs matmul in bf16
    return probs, class_ages, mean  # (B, K), (K,), (B,)


def mean_variance_loss(logits: Tensor, ages: Tensor, lambda_mean: float = 0.2,
                       lambda_var: float = 0.05, min_age: int = 0,
                       num_classes: int | None = None) -> Tensor:
    """Cross-entropy + ``lambda_mean`` · mean loss + ``lambda_var`` · variance loss.

    With ``p`` the softmax over the class ages ``j`` and ``m = Σ p_j j`` its mean:
    mean loss ``(m - y)² / 2`` pulls the distribution's mean onto the age ``y``;
    variance loss ``Σ p_j (j - m)²`` makes it concentrated; both averaged over the
    batch; ``L = L_softmax + λ1 L_mean + λ2 L_var``. Pan, Han, Shan and Chen,
    *Mean-Variance Loss for Deep Age Estimation from a Face*, CVPR 2018; the
    formulas and the defaults λ1 = 0.2, λ2 = 0.05 are those of the widely used
    PyTorch reimplementation (github.com/Herosan163/AgeEstimation), which a test
    reproduces.

    >>> logits = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))  # mean 1, variance 0.5
    >>> mean_variance_loss(logits, torch.tensor([2.0]))  # log 4 + 0.2·0.5 + 0.05·0.5
    tensor(1.5113)
    """
    logits, ages = _check_logits(logits, ages, "classification")
    k = _check_columns(logits, num_classes, "classification")
    ce = F.cross_entropy(logits, _class_targets(ages, k, min_age))
    probs, class_ages, mean = _softmax_over_ages(logits, min_age)
    mean_loss = ((mean - ages) ** 2 / 2).mean()
    variance = (probs * (class_ages[None, :] - mean[:, None]) ** 2).sum(1)  # (B,)
    return ce + lambda_mean * mean_loss + lambda_var * variance.mean()


def mean_residue_loss(logits: Tensor, ages: Tensor, lambda_mean: float = 0.2,
                      lambda_residue: float = 0.05, top_k: int | None = None,
                      min_age: int = 0, num_classes: int | None = None) -> Tensor:
    """Cross-entropy + ``lambda_mean`` · mean loss + ``lambda_residue`` · residue loss.

    The mean loss is the one of :func:`mean_variance_loss`. Instead of the
    variance, the residue loss is the entropy ``-Σ p_j log p_j`` of the
    probabilities *outside the top K*: the tail of the distribution is pushed
    towards zero while the few plausible ages near the top are left free to share
    belief. With ``top_k=None`` (the default) K is adaptive, per sample: the top
    is every class at least as probable as the true one, so the residue is the
    entropy over the classes strictly less probable than the true age. An integer
    ``top_k`` fixes K (the residue is over all but the K most probable classes).

    Source: Zhao, Qian, Hou and Zeng, *Adaptive Mean-Residue Loss for Robust
    Facial Age Estimation*, ICME 2022 (arXiv 2203.17156), and the authors' code
    (github.com/jacobzhaoziyuan/AMR-Loss, ``residue_loss_adaptive_K.py``): the
    adaptive top is ``p_j >= p_true``, the set is chosen without gradient, and
    the defaults λ1 = 0.2, λ2 = 0.05 are those of their FG-NET and CLAP2016 run
    scripts. Their code adds 1e-3 inside the logarithm for safety; the entropy
    here is exact, computed from ``log_softmax``, which needs no such guard. The
    fixed-K variant follows the paper's wording; its exact equation was not
    checked against the paper's text.

    >>> logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    >>> mean_residue_loss(logits, torch.tensor([2.0]))  # -log 0.3 + 0.05 · (0.2303 + 0.3219)
    tensor(1.2316)
    """
    logits, ages = _check_logits(logits, ages, "classification")
    k = _check_columns(logits, num_classes, "classification")
    classes = _class_targets(ages, k, min_age)  # (B,)
    ce = F.cross_entropy(logits, classes)
    probs, _, mean = _softmax_over_ages(logits, min_age)
    mean_loss = ((mean - ages) ** 2 / 2).mean()
    with torch.no_grad():  # which classes count as "the tail" is a choice, not a gradient path
        if top_k is None:
            p_true = probs.gather(1, classes[:, None])  # (B, 1)
            tail = probs < p_true  # (B, K)
        else:
            if not 1 <= top_k <= k:
                raise ValueError(f"top_k must be between 1 and the {k} classes, got {top_k}")
            top = probs.topk(top_k, dim=1).indices  # (B, top_k)
            tail = torch.ones_like(probs, dtype=torch.bool).scatter_(1, top, False)
    entropy = -(probs * F.log_softmax(logits, dim=1) * tail).sum(1)  # (B,)
    return ce + lambda_mean * mean_loss + lambda_residue * entropy.mean()


# --------------------------------------------------------------------------- ordinal
def _binary_log_likelihood(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-task log-likelihood of 0/1 ``labels`` under ``σ(logits)``, shape of ``logits``.

    ``log σ(x)`` for a 1, ``log(1 - σ(x)) = log σ(x) - x`` for a 0: stable for large ``|x|``,
    where ``log(1 - sigmoid(x))`` would be ``log 0``.
    """
    log_p = F.logsigmoid(logits)
    return log_p * labels + (log_p - logits) * (1 - labels)


def coral_loss_from_levels(logits: Tensor, levels: Tensor,
                           importance_weights: Tensor | None = None) -> Tensor:
    """CORAL's loss on extended binary labels, as ``coral_pytorch.losses.coral_loss``.

    The summed binary cross-entropy of the K-1 rank tasks, averaged over samples.
    Cao, Mirjalili and Raschka, *Rank Consistent Ordinal Regression for Neural
    Networks with Application to Age Estimation*, Pattern Recognition Letters 2020.

    >>> levels = torch.tensor([[1., 1., 0., 0.], [1., 0., 0., 0.], [1., 1., 1., 1.]])
    >>> logits = torch.tensor([[2.1, 1.8, -2.1, -1.8], [1.9, -1., -1.5, -1.3],
    ...                        [1.9, 1.8, 1.7, 1.6]])
    >>> coral_loss_from_levels(logits, levels)
    tensor(0.6920)
    """
    if logits.shape != levels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and levels {tuple(levels.shape)} must "
                         "have the same shape (B, K-1)")
    logits = _float32_or_wider(logits)
    levels = levels.to(logits.dtype)
    term = _binary_log_likelihood(logits, levels)  # (B, K-1)
    if importance_weights is not None:
        term = term * importance_weights  # (B, K-1) * (K-1,)
    return -term.sum(dim=1).mean()


def coral_loss(logits: Tensor, ages: Tensor, min_age: int = 0,
               num_classes: int | None = None,
               importance_weights: Tensor | None = None) -> Tensor:
    """CORAL loss from ages: ``K = logits.shape[1] + 1`` classes starting at ``min_age``.

    >>> logits = torch.tensor([[2.1, 1.8, -2.1, -1.8], [1.9, -1., -1.5, -1.3],
    ...                        [1.9, 1.8, 1.7, 1.6]])
    >>> coral_loss(logits, torch.tensor([2.0, 1.0, 4.0]))  # the same as coral_pytorch's example
    tensor(0.6920)
    """
    logits, ages = _check_logits(logits, ages, "coral")
    k = _check_columns(logits, num_classes, "coral")
    return coral_loss_from_levels(logits, levels_from_ages(ages, k, min_age), importance_weights)


def corn_loss(logits: Tensor, ages: Tensor, min_age: int = 0,
              num_classes: int | None = None) -> Tensor:
    """CORN loss, as ``coral_pytorch.losses.corn_loss`` with ``num_classes = columns + 1``.

    Task k asks "age class > k?" only of the samples whose class is >= k (those
    already past rank k-1), so the K-1 outputs estimate conditional probabilities
    and their running product is rank-consistent (Shi, Cao and Raschka, *Deep Neural
    Networks for Rank-Consistent Ordinal Regression Based On Conditional
    Probabilities*, Pattern Analysis and Applications, 2023). As in coral_pytorch, the
    summed binary cross-entropy is divided by the number of (sample, task) pairs used,
    not by the batch size.

    >>> logits = torch.tensor([[2.0, -1.0, -3.0], [3.0, 2.0, -2.0]])
    >>> corn_loss(logits, torch.tensor([1.0, 3.0]))  # coral_pytorch gives the same
    tensor(0.5485)
    """
    logits, ages = _check_logits(logits, ages, "corn")
    k = _check_columns(logits, num_classes, "corn")
    classes = _class_targets(ages, k, min_age)  # (B,)
    ranks = torch.arange(k - 1, device=logits.device)  # (K-1,)
    used = classes[:, None] >= ranks[None, :]  # (B, K-1): sample i takes part in task k
    labels = (classes[:, None] > ranks[None, :]).float()  # (B, K-1)
    term = _binary_log_likelihood(logits, labels)  # (B, K-1)
    return -(term * used).sum() / used.sum()  # task 0 uses every sample: never 0/0


# --------------------------------------------------------------------------- decoding to ages
def regression_age(pred: Tensor) -> Tensor:
    """A regression head's output as ``(B,)`` ages (a ``(B, 1)`` output is squeezed).

    >>> regression_age(torch.tensor([[31.5], [8.0]]))
    tensor([31.5000,  8.0000])
    """
    return pred.squeeze(1) if pred.ndim == 2 and pred.shape[1] == 1 else pred


def expected_age(logits: Tensor, min_age: int = 0) -> Tensor:
    """The softmax-weighted mean age (DEX, Rothe et al. 2015): smoother than the argmax.

    >>> expected_age(torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.0, 0.5, 0.5]])), min_age=10)
    tensor([11.0000, 11.5000])
    """
    return _softmax_over_ages(_float32_or_wider(logits), min_age)[2]  # (B,)


def argmax_age(logits: Tensor, min_age: int = 0) -> Tensor:
    """The most probable age class, as a float age.

    >>> argmax_age(torch.tensor([[0.1, 2.0, 0.3]]), min_age=10)
    tensor([11.])
    """
    return (min_age + logits.argmax(dim=1)).float()


def coral_age(logits: Tensor, min_age: int = 0) -> Tensor:
    """CORAL's prediction: ``min_age`` + the number of rank tasks with probability > 0.5.

    The same count as ``coral_pytorch.dataset.proba_to_label(torch.sigmoid(logits))``.

    >>> coral_age(torch.tensor([[3.0, 1.0, -0.5, -2.0]]), min_age=20)
    tensor([22.])
    """
    return (min_age + (torch.sigmoid(_float32_or_wider(logits)) > 0.5).sum(dim=1)).float()


def coral_expected_age(logits: Tensor, min_age: int = 0) -> Tensor:
    """``min_age`` + Σ P(age > min_age + k): the expected age under CORAL's probabilities.

    >>> coral_expected_age(torch.tensor([[0.0, 0.0]]))  # 0.5 + 0.5
    tensor([1.])
    """
    return min_age + torch.sigmoid(_float32_or_wider(logits)).sum(dim=1)


def _corn_probabilities(logits: Tensor) -> Tensor:
    """P(age class > k) for each k: the running product of the conditional probabilities."""
    return torch.cumprod(torch.sigmoid(_float32_or_wider(logits)), dim=1)  # (B, K-1)


def corn_age(logits: Tensor, min_age: int = 0) -> Tensor:
    """CORN's prediction: ``min_age`` + the number of ranks with P(class > k) > 0.5.

    The same count as ``coral_pytorch.dataset.corn_label_from_logits``.

    >>> corn_age(torch.tensor([[14.152, -6.1942, 0.47710, 0.96850],
    ...                        [65.667, 0.303, 11.500, -4.524]]))
    tensor([1., 3.])
    """
    return (min_age + (_corn_probabilities(logits) > 0.5).sum(dim=1)).float()


def corn_expected_age(logits: Tensor, min_age: int = 0) -> Tensor:
    """``min_age`` + Σ P(class > k): the expected age under CORN's probabilities.

    >>> corn_expected_age(torch.tensor([[0.0, 0.0]]))  # 0.5 + 0.5 · 0.5
    tensor([0.7500])
    """
    return min_age + _corn_probabilities(logits).sum(dim=1)


#: The rule of each kind's paper for turning outputs into an age (ordinal heads count the
#: "older than k" answers). The heads themselves decode by ``ModelConfig.decode``, whose
#: default, "expected", sums probabilities instead (see :func:`coral_expected_age`).
DECODERS: dict[str, Callable[..., Tensor]] = {
    "regression": regression_age,
    "classification": expected_age,
    "coral": coral_age,
    "corn": corn_age,
}


def _check_kind(kind: str) -> None:
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r}; valid: {list(OUTPUT_KINDS)}")


def decoder_for(kind: str, min_age: int = 0) -> Callable[[Tensor], Tensor]:
    """The default ``outputs -> ages`` function of an output kind, e.g. for metrics.

    >>> decoder_for("coral", min_age=1)(torch.tensor([[5.0, -5.0]]))
    tensor([2.])
    """
    _check_kind(kind)
    if kind == "regression":
        return regression_age
    return partial(DECODERS[kind], min_age=min_age)


# --------------------------------------------------------------------------- registry
#: Every loss by name. Pick one with :func:`get_loss`; :data:`LOSS_OUTPUT_KINDS` says
#: which head output each one expects.
LOSSES: dict[str, Callable[..., Tensor]] = {
    "l1": l1_loss,
    "mse": mse_loss,
    "adaptive": adaptive_loss,
    "cross_entropy": cross_entropy_loss,
    "ldl": ldl_loss,
    "mean_variance": mean_variance_loss,
    "mean_residue": mean_residue_loss,
    "coral": coral_loss,
    "corn": corn_loss,
}

LOSS_OUTPUT_KINDS: dict[str, str] = {
    "l1": "regression", "mse": "regression", "adaptive": "regression",
    "cross_entropy": "classification", "ldl": "classification",
    "mean_variance": "classification", "mean_residue": "classification",
    "coral": "coral", "corn": "corn",
}


def _check_name(name: str) -> None:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")


def loss_output_kind(name: str) -> str:
    """The kind of head output a loss expects, one of :data:`OUTPUT_KINDS`.

    >>> loss_output_kind("mean_variance")
    'classification'
    """
    _check_name(name)
    return LOSS_OUTPUT_KINDS[name]


def get_loss(name: str, head: torch.nn.Module | None = None,
             **kwargs) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss called ``name`` with its settings fixed: ``loss(output, ages) -> scalar``.

    Unknown names and unknown settings raise ``ValueError`` now, listing the valid
    ones, rather than a ``TypeError`` at the first batch or a silent default.

    ``head``: the model's head, in your own training loop. The loss then checks that
    it suits the head's output and takes the head's ``min_age``: a classification or
    ordinal loss whose ``min_age`` differs from its head's trains without complaint
    towards ages shifted by the difference.

    >>> loss = get_loss("adaptive", s=1.0)
    >>> loss(torch.tensor([3.0]), torch.tensor([0.0]))  # 2·9/4
    tensor(4.5000)
    >>> loss.__name__
    'adaptive_loss'
    """
    _check_name(name)
    if head is not None:
        kind = getattr(head, "kind", "regression")
        if LOSS_OUTPUT_KINDS[name] != kind:
            raise ValueError(f"loss {name!r} needs a {LOSS_OUTPUT_KINDS[name]} head's output, "
                             f"not a {kind} head's")
        head_min = getattr(head, "min_age", None)  # None: a hand-made head that does not say
        if kind != "regression" and head_min is not None:
            if kwargs.get("min_age", head_min) != head_min:
                raise ValueError(f"min_age={kwargs['min_age']} disagrees with the head's "
                                 f"min_age={head_min}: leave it out, the head's is used")
            kwargs["min_age"] = head_min
    fn = LOSSES[name]
    settings = list(inspect.signature(fn).parameters)[2:]  # after (output, ages)
    unknown = sorted(set(kwargs) - set(settings))
    if unknown:
        raise ValueError(f"loss {name!r} has no setting(s) {unknown}; valid: {settings}")
    return update_wrapper(partial(fn, **kwargs), fn)

