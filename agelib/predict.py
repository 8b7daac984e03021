"""Ages for every face in a photo, each with an interval that says how sure the model is.

One number is not an honest answer to "how old is this person?". Where the model
gives more than a number, :func:`predict_faces` also gives a central interval
that holds ``level`` (e.g. 80%) of the model's own belief:

==============================  ===================================================
models                          interval
==============================  ===================================================
classification head             quantiles of the softmax distribution over ages
CORAL / CORN head               quantiles of the distribution implied by P(age > k)
several models (an ensemble)    their averaged distribution, or, when some of them
                                are regression models, mean ± z·sd of their ages
one regression model            none: a single number carries no spread
==============================  ===================================================

These intervals describe the *model's* uncertainty, learned on UTKFace; they are
not guaranteed to hold 80% of true ages on other photos unless checked there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from . import checkpoints, faces, models, records
from .data import cache, loaders

#: What each ``FacePrediction.interval_kind`` means.
INTERVAL_KINDS = {
    "distribution": "central quantiles of the model's distribution over ages",
    "ensemble": "mean ± z·sd of the ages predicted by several models: how much they disagree, "
                "not the label noise or the error they share, so it holds fewer true ages than "
                "its level",
    "none": "a single regression model predicts one number, with no spread; pass several "
            "checkpoints (an ensemble) or use a classification/CORAL/CORN head for an interval",
}


@dataclass
class AgeEstimator:
    """A model and the side of the square images it was trained on."""

    model: models.AgeModel
    size: int
    name: str = "model"
    record: dict | None = None  # how it was trained (a checkpoint's or training's run record)


@dataclass
class FacePrediction:
    """One face: where it is, how sure the detector is, its age and the age interval."""

    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in the photo's pixels; MTCNN's
    # box as it found it, which reaches past the photo's edges when the face fills the photo
    probability: float  # the detector's confidence that this is a face
    age: float  # years: the mean of the models' own decoding (``head.to_age``)
    low: float | None  # interval holding ``level`` of the belief; None: no interval
    high: float | None
    interval_kind: str  # a key of INTERVAL_KINDS
    level: float = 0.8
    crop: Image.Image | None = field(default=None, repr=False)  # the aligned face the model saw
    distribution: np.ndarray | None = field(default=None, repr=False)  # P(age = min_age + k)
    min_age: int = 0

    def label(self) -> str:
        """``"age 34 (28-41)"``, or ``"age 34"`` without an interval."""
        text = f"age {self.age:.0f}"
        return text if self.low is None else f"{text} ({self.low:.0f}-{self.high:.0f})"

    def to_dict(self) -> dict:
        """Plain values for JSON: box, probability, age, low, high, interval_kind, level."""
        return {"box": [round(v, 1) for v in self.box],
                "probability": round(self.probability, 4), "age": round(self.age, 2),
                "low": None if self.low is None else round(self.low, 2),
                "high": None if self.high is None else round(self.high, 2),
                "interval_kind": self.interval_kind, "level": self.level}


def load_estimators(models_or_checkpoints, size: int | None = None) -> list[AgeEstimator]:
    """One or several checkpoints, models or training results as :class:`AgeEstimator`\\ s.

    A checkpoint says its own image size; a bare model needs ``size`` unless its
    config has ``img_size``; a ``TrainResult`` takes it from its record.
    """
    items = (list(models_or_checkpoints) if isinstance(models_or_checkpoints, (list, tuple))
             else [models_or_checkpoints])
    if not items:
        raise ValueError("no model given: pass a checkpoint path, a model or a list of them")
    return [_estimator(item, size) for item in items]


def caveat(estimators: list[AgeEstimator]) -> str | None:
    """What a reader of these ages must know first, when the models were trained only to
    check the code (smoke mode) or on the synthetic faces: their ages mean nothing yet."""
    weak = [(e.name, r) for e in estimators if (r := e.record) and records.checks_code_only(r)]
    if not weak:
        return None
    why = "; ".join(f"{name}: {'SMOKE mode' if r.get('mode') == 'smoke' else r.get('mode')}, "
                    f"{'real' if r.get('data_real') else 'SYNTHETIC'} faces" for name, r in weak)
    return (f"these ages are not estimates yet ({why}): a smoke run only checks that the code "
            "works. Train in full mode on real faces for ages worth reading.")


def _estimator(item, size: int | None) -> AgeEstimator:
    if isinstance(item, AgeEstimator):
        return item
    if isinstance(item, (str, Path)):
        model, payload = checkpoints.load_checkpoint(item)
        found = checkpoints.trained_size(payload, model) or size
        return AgeEstimator(model, _checked_size(found, Path(item).name), Path(item).name,
                            payload.get("record"))
    if isinstance(getattr(item, "model", None), models.AgeModel):  # a training.TrainResult
        record = getattr(item, "record", {}) or {}
        return AgeEstimator(item.model, _checked_size(size or record.get("image_size"),
                                                      "the training result"),
                            record.get("backbone", "model"), record or None)
    if isinstance(item, models.AgeModel):
        return AgeEstimator(item, _checked_size(size or item.config.img_size, "the model"),
                            item.config.backbone)
    raise ValueError(f"cannot predict with a {type(item).__name__}: pass a checkpoint path, "
                     "an AgeModel or a training result")


def _checked_size(size, what: str) -> int:
    if not size:
        raise ValueError(f"{what} does not say its image size; pass size=... (the side it "
                         "was trained at)")
    return int(size)


# --------------------------------------------------------------------------- interval maths
def age_distribution(head: torch.nn.Module, outputs: torch.Tensor) -> torch.Tensor | None:
    """``(B, K)`` probabilities of ages ``min_age .. min_age+K-1``, or None for regression."""
    outputs = outputs.float()
    if head.kind == "classification":
        return torch.softmax(outputs, dim=1)
    if head.kind == "coral":
        return ordinal_to_distribution(torch.sigmoid(outputs))
    if head.kind == "corn":  # conditional probabilities: P(> k) is their running product
        return ordinal_to_distribution(torch.cumprod(torch.sigmoid(outputs), dim=1))
    return None


def ordinal_to_distribution(p_older: torch.Tensor) -> torch.Tensor:
    """``(B, K-1)`` probabilities P(age > k) -> ``(B, K)`` probabilities P(age = k).

    P(age = k) = P(age > k-1) - P(age > k), with P(age > -1) = 1 and P(age > K-1) = 0.
    CORAL and CORN are rank-consistent (P(age > k) falls with k), so no term is
    negative; should one be (a barely trained model), it is clipped to 0 and the
    rest renormalised.

    >>> ordinal_to_distribution(torch.tensor([[0.9, 0.5, 0.2]]))
    tensor([[0.1000, 0.4000, 0.3000, 0.2000]])
    """
    ones, zeros = torch.ones_like(p_older[:, :1]), torch.zeros_like(p_older[:, :1])
    probs = (torch.cat([ones, p_older], 1) - torch.cat([p_older, zeros], 1)).clamp_min(0)
    return probs / probs.sum(dim=1, keepdim=True)


def central_interval(probs: torch.Tensor, level: float = 0.8, min_age: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ages at the ``(1-level)/2`` and ``(1+level)/2`` quantiles of each row of ``probs``.

    A discrete quantile q is the first age whose cumulative probability reaches q,
    so the interval holds at least ``level`` of the probability.

    >>> central_interval(torch.full((1, 10), 0.1), level=0.8, min_age=20)  # uniform 20..29
    (tensor([20.]), tensor([28.]))
    """
    _check_level(level)
    cdf = torch.cumsum(probs.double(), dim=1)  # (B, K)
    cdf = cdf / cdf[:, -1:]  # exactly 1 at the end, whatever the rounding
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=cdf.dtype).expand(len(cdf), 2)
    # 1e-6: float32 probabilities that should sum to exactly q may fall a hair short of it
    idx = torch.searchsorted(cdf, q.contiguous() - 1e-6).clamp_max(cdf.shape[1] - 1)  # (B, 2)
    return (min_age + idx[:, 0]).float(), (min_age + idx[:, 1]).float()


def interval_mass(distribution: np.ndarray, low: np.ndarray, high: np.ndarray,
                  min_age: int = 0) -> np.ndarray:
    """The probability each row of ``distribution`` (ages ``min_age``, ``min_age + 1``, ...)
    puts inside its interval ``[low, high]``: what the interval promises. Whole-year
    quantiles make it at least the level asked for, more when the belief is narrow, so a
    coverage check compares with this, not with the level (chapters 03 and 11).

    >>> interval_mass(np.array([[0.5, 0.3, 0.2]]), np.array([20.0]), np.array([21.0]), 20)
    array([0.8])
    """
    ages = min_age + np.arange(np.shape(distribution)[1])
    held = (ages >= np.asarray(low)[:, None]) & (ages <= np.asarray(high)[:, None])
    return (np.asarray(distribution) * held).sum(axis=1)


def ensemble_interval(ages: np.ndarray, level: float = 0.8
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and mean ± z·sd over the models (axis 0) of ``(M, B)`` ages.

    A normal approximation: with a handful of models, the empirical quantiles would
    just be the smallest and largest prediction. Few models make a rough sd, and the
    spread is only their disagreement (none of the error they share), so expect it to
    cover fewer true ages than ``level``. Ages are not negative, so neither the mean nor
    the interval goes below 0.

    >>> mean, low, high = ensemble_interval(np.array([[30.0], [34.0], [38.0]]), level=0.8)
    >>> mean, low.round(2), high.round(2)
    (array([34.]), array([28.87]), array([39.13]))
    """
    _check_level(level)
    ages = np.asarray(ages, dtype=np.float64)
    if ages.ndim != 2 or len(ages) < 2:
        raise ValueError(f"an ensemble interval needs (models, faces) ages from at least 2 "
                         f"models, got shape {ages.shape}")
    z = NormalDist().inv_cdf((1 + level) / 2)
    mean, sd = np.maximum(ages.mean(0), 0.0), ages.std(0, ddof=1)
    return mean, np.maximum(mean - z * sd, 0.0), mean + z * sd


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level is the share of belief the interval holds, strictly between "
                         f"0 and 1 (e.g. 0.8), not {level}")


# --------------------------------------------------------------------------- prediction
@torch.no_grad()
def _run(estimator: AgeEstimator, crops: list[Image.Image], batch_size: int = 64
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw outputs and ages of one model for the crops, prepared exactly like training data:
    the same resize as the image cache, then the evaluation transform."""
    model, size = estimator.model, estimator.size
    device = next(model.parameters()).device
    transform = loaders.BatchTransform(size, train=False).to(device)
    was_training = model.training
    model.eval()
    outs, ages = [], []
    try:
        for i in range(0, len(crops), batch_size):
            pixels = np.stack([np.asarray(cache.square_resize(c, size))
                               for c in crops[i:i + batch_size]])  # (B, S, S, 3) uint8
            out = model(transform(torch.as_tensor(pixels).permute(0, 3, 1, 2).to(device)))
            outs.append(out.float().cpu())
            ages.append(model.head.to_age(out).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs), torch.cat(ages)


class AgeEstimates(NamedTuple):
    """What :func:`estimate_ages` returns for N faces (unpack it like a tuple)."""

    ages: np.ndarray  # (N,) years
    low: np.ndarray | None  # (N,) interval ends; None when there is no interval
    high: np.ndarray | None
    interval_kind: str  # a key of INTERVAL_KINDS
    distribution: np.ndarray | None  # (N, K) P(age = min_age + k), for distribution heads


def estimate_ages(estimators: list[AgeEstimator], crops: list[Image.Image], level: float = 0.8
                  ) -> AgeEstimates:
    """Ages with intervals for aligned face crops (UTKFace images are such crops already)."""
    _check_level(level)
    if not crops:
        raise ValueError("no face crops given; detect faces first (agelib.faces.detect_faces)")
    runs = [(e.model.head, *_run(e, crops)) for e in estimators]
    # a regression head can say -1 for a baby: no age is negative, and no interval (clipped
    # at 0) may leave out the age it goes with
    ages = np.maximum(np.stack([a.numpy() for _, _, a in runs]), 0.0)  # (M, N)
    dists = [age_distribution(head, out) for head, out, _ in runs]
    ranges = {(head.min_age, d.shape[1]) if d is not None else None for (head, _, _), d
              in zip(runs, dists)}
    if None not in ranges and len(ranges) == 1:  # all give distributions over the same ages
        mixture = torch.stack(dists).mean(0)  # (N, K): the ensemble's averaged belief
        low, high = central_interval(mixture, level, min_age=next(iter(ranges))[0])
        age = ages.mean(0)  # the expected age, as evaluation scores it
        # a very skewed belief (most of it on 0-2, a long tail) can put its mean outside its
        # central interval: widened to hold the age shown, never "age 7 (0-2)"
        return AgeEstimates(age, np.minimum(low.numpy(), age), np.maximum(high.numpy(), age),
                            "distribution", mixture.numpy())
    if len(runs) >= 2:
        return AgeEstimates(*ensemble_interval(ages, level), "ensemble", None)
    return AgeEstimates(ages[0], None, None, "none", None)


def predict_faces(models_or_checkpoints, image, size: int | None = None, level: float = 0.8,
                  min_prob: float = 0.9) -> list[FacePrediction]:
    """Every face of ``image`` with its box, age and interval (an empty list: no face).

    ``models_or_checkpoints``: one or several checkpoint paths, models, training
    results or :class:`AgeEstimator`\\ s (see :func:`load_estimators`); ``image``:
    anything :func:`agelib.faces.open_photo` takes.
    """
    _check_level(level)  # before the slow part
    estimators = load_estimators(models_or_checkpoints, size)
    found = faces.detect_faces(image, min_prob=min_prob)
    if not found:
        return []
    ages, low, high, kind, dist = estimate_ages(estimators, [f.crop for f in found], level)
    min_age = estimators[0].model.head.min_age if dist is not None else 0
    return [FacePrediction(f.box, f.probability, float(ages[i]),
                           None if low is None else float(low[i]),
                           None if high is None else float(high[i]), kind, level, f.crop,
                           None if dist is None else dist[i], min_age)
            for i, f in enumerate(found)]


def predictions_table(predictions: list[FacePrediction]) -> pd.DataFrame:
    """One row per face of a photo: face number, box, detector probability, age, low, high,
    interval (a run's per-face test predictions are :func:`agelib.records.predictions_table`)."""
    columns = ["face", "x0", "y0", "x1", "y1", "probability", "age", "low", "high", "interval"]
    rows = [[i + 1, *(round(v) for v in p.box), round(p.probability, 3), round(p.age, 1),
             None if p.low is None else round(p.low, 1),
             None if p.high is None else round(p.high, 1), p.interval_kind]
            for i, p in enumerate(predictions)]
    return pd.DataFrame(rows, columns=columns)


def draw_predictions(image, predictions: list[FacePrediction]) -> Image.Image:
    """A copy of ``image`` with each face's box and ``"age 34 (28-41)"`` drawn on it."""
    photo = faces.open_photo(image).copy()
    draw = ImageDraw.Draw(photo)
    width = max(2, round(max(photo.size) / 250))
    font = _font(max(12, round(max(photo.size) / 22)))
    for p in predictions:
        x0, y0, x1, y1 = p.box
        draw.rectangle([x0, y0, x1, y1], outline=(255, 215, 0), width=width)
        text = p.label()
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y0 - (bottom - top) - 2 * width if y0 > (bottom - top) + 2 * width else y1 + width
        draw.rectangle([x0, ty, x0 + right - left + 2 * width, ty + bottom - top + 2 * width],
                       fill=(0, 0, 0))
        draw.text((x0 + width - left, ty + width - top), text, fill=(255, 215, 0), font=font)
    return photo


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()
