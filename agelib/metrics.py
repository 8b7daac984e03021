"""How good an age estimate is: MAE and cumulative scores, overall and per group.

Every metric is defined once, here, and always averaged over *samples*. The
mean of per-batch MAEs is not the MAE: a last batch of 3 faces would weigh as
much as a full batch of 128. So the fastai metrics (:func:`fastai_metrics`)
gather every prediction of the validation set first and compute once.

Functions take predicted and true ages as tensors, arrays, lists or Series;
model outputs are turned into ages first with a decoder from :mod:`agelib.losses`
(``expected_age``, ``coral_age``, ...).
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

# The age bands that tables and figures group by: infants, children, teenagers,
# then decades, and everyone from 80 up (UTKFace's oldest is 116).
AGE_BANDS = (0, 3, 13, 20, 30, 40, 50, 60, 70, 80, 117)


def band_labels(edges: Sequence[int] = AGE_BANDS) -> list[str]:
    """Readable names for age bands: ``['0-2', '3-12', ...]``.

    >>> band_labels((0, 3, 13, 117))
    ['0-2', '3-12', '13+']
    """
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-2], edges[1:-1])]
    return labels + [f"{edges[-2]}+"]


def age_band(ages, edges: Sequence[int] = AGE_BANDS) -> np.ndarray:
    """The band label of each age, for grouping tables by age."""
    labels = np.array(band_labels(edges))
    return labels[np.digitize(np.asarray(ages), edges[1:-1])]


def _as_ages(values, name: str) -> np.ndarray:
    """Ages as a float64 ``(N,)`` array; a ``(N, 1)`` column is flattened, wider is refused."""
    if torch.is_tensor(values):
        values = values.detach().to("cpu", torch.float64).numpy()
    ages = np.asarray(values, dtype=np.float64)
    if ages.ndim == 2 and ages.shape[1] == 1:
        ages = ages[:, 0]
    if ages.ndim != 1:
        raise ValueError(f"{name} must be one age per sample, shape (N,), got {ages.shape}; "
                         "decode model outputs to ages first, e.g. losses.expected_age(logits)")
    return ages


def _abs_errors(pred, true) -> np.ndarray:
    pred, true = _as_ages(pred, "pred"), _as_ages(true, "true")
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predictions but {len(true)} true ages")
    if len(pred) == 0:
        raise ValueError("no samples: a metric over zero faces is undefined")
    return np.abs(pred - true)  # (N,)


def mae(pred, true) -> float:
    """Mean absolute error in years, over samples.

    >>> mae([20, 30, 41], [21, 30, 45])
    1.6666666666666667
    """
    return float(_abs_errors(pred, true).mean())


def cs_at(pred, true, k: float = 5) -> float:
    """Cumulative score: the share of faces whose error is at most ``k`` years.

    Errors are not rounded first: a prediction 5.4 years off does not count at k = 5.

    >>> cs_at([20, 30, 41, 60], [21, 30, 45, 70], k=5)
    0.75
    """
    if k < 0:
        raise ValueError(f"k must be >= 0 years, got {k}")
    return float((_abs_errors(pred, true) <= k).mean())


def cs_curve(pred, true, max_k: int = 20) -> np.ndarray:
    """Cumulative scores for k = 0, 1, ..., ``max_k`` years: ``(max_k + 1,)``.

    Non-decreasing in k, and 1 from the largest error on.

    >>> cs_curve([20, 30, 41, 60], [21, 30, 45, 70], max_k=5)
    array([0.25, 0.5 , 0.5 , 0.5 , 0.75, 0.75])
    """
    if max_k < 0:
        raise ValueError(f"max_k must be >= 0, got {max_k}")
    errors = _abs_errors(pred, true)  # (N,)
    ks = np.arange(max_k + 1)  # (max_k + 1,)
    return (errors[:, None] <= ks[None, :]).mean(axis=0)


def errors_by_group(table: pd.DataFrame, pred_col: str, true_col: str, group_col: str,
                    k: float = 5) -> pd.DataFrame:
    """``n``, ``MAE`` and ``CS@k`` per value of ``group_col`` (age band, gender, race, ...).

    Each group's numbers are averaged over its own faces. A missing group value
    gets its own row (NaN) instead of silently vanishing, and the categories of a
    categorical column all appear, in their order, with ``n = 0`` when empty.

    >>> t = pd.DataFrame({"pred": [20, 30, 41, 60], "age": [21, 30, 45, 70],
    ...                   "gender": ["f", "m", "f", "m"]})
    >>> errors_by_group(t, "pred", "age", "gender")  # doctest: +NORMALIZE_WHITESPACE
            n  MAE  CS@5
    gender
    f       2  2.5   1.0
    m       2  5.0   0.5
    """
    missing = [c for c in (pred_col, true_col, group_col) if c not in table.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the table; it has {list(table.columns)}")
    errors = _abs_errors(table[pred_col].to_numpy(), table[true_col].to_numpy())
    frame = pd.DataFrame({"group": table[group_col].reset_index(drop=True),  # keeps categories
                          "error": errors, "within": errors <= k})
    groups = frame.groupby("group", dropna=False, observed=False, sort=True)
    out = pd.DataFrame({"n": groups.size(), "MAE": groups["error"].mean(),
                        f"CS@{k:g}": groups["within"].mean()})
    out.index.name = group_col
    return out


def age_band_mae(pred, true, edges: Sequence[int] = AGE_BANDS, k: float = 5) -> pd.DataFrame:
    """:func:`errors_by_group` by band of the *true* age, bands in age order.

    >>> age_band_mae([1, 5, 14, 40], [2, 5, 15, 50],
    ...              edges=(0, 3, 13, 117))  # doctest: +NORMALIZE_WHITESPACE
              n  MAE  CS@5
    age band
    0-2       1  1.0   1.0
    3-12      1  0.0   1.0
    13+       2  5.5   0.5
    """
    pred, true = _as_ages(pred, "pred"), _as_ages(true, "true")
    bands = pd.Categorical(age_band(true, edges), categories=band_labels(edges),
                           ordered=True)  # '3-12' sorts before '13-19', not after
    table = pd.DataFrame({"pred": pred, "true": true, "age band": bands})
    return errors_by_group(table, "pred", "true", "age band", k)


def seed_noise(std: float, n: int, m: int = 1, level: float = 0.95) -> tuple[float, float]:
    """How far a variant's mean MAE over ``m`` seeds may stray from a baseline's mean over
    ``n`` seeds (sample std ``std``) by seed noise alone: ``(spread, critical)``.

    ``spread`` is the standard deviation of that difference, ``std * sqrt(1/m + 1/n)``
    (one new run: ``sqrt(1 + 1/n)``), and ``critical`` Student's t at ``level``, two-sided,
    with the baseline's ``n - 1`` degrees of freedom; a difference beyond
    ``critical * spread`` is more than noise. Taking the spread of the variant's seeds
    from the baseline's assumes a change of settings does not change how much seeds matter.

    >>> spread, critical = seed_noise(0.1, n=3)
    >>> round(spread, 4), round(critical, 2)
    (0.1155, 4.3)
    """
    from scipy import stats

    if n < 2 or m < 1:
        raise ValueError(f"a noise band needs a baseline of 2 or more seeds and a variant of "
                         f"1 or more, not n={n}, m={m}")
    return float(std) * (1 / m + 1 / n) ** 0.5, float(stats.t.ppf(0.5 + level / 2, n - 1))


def fastai_metrics(decode: Callable[[torch.Tensor], torch.Tensor], k: int = 5) -> list:
    """fastai metrics ``mae`` and ``cs5`` that decode model outputs to ages with ``decode``.

    Each is an ``AccumMetric``: it keeps every validation prediction and computes
    once, over samples, at the end of the epoch, never as a mean of batch means.
    ``decode`` is e.g. ``losses.expected_age`` or ``losses.decoder_for("coral")``.
    Unlike fastai's, they keep the predictions on the model's device until then:
    fastai copies each batch's to the CPU, a wait for the GPU per batch.
    """
    with warnings.catch_warnings():  # fastai's import warns about torch.jit; not ours to fix
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script")
        from fastai.metrics import AccumMetric

    class KeptOnDevice(AccumMetric):
        """fastai's ``AccumMetric`` without its copy to the CPU per batch."""

        def accum_values(self, preds, targs, learn=None):
            self.preds.append(preds.detach())
            self.targs.append(targs.detach())

    def mae_of_outputs(outputs: torch.Tensor, ages: torch.Tensor) -> float:
        return mae(decode(outputs), ages)

    def cs_of_outputs(outputs: torch.Tensor, ages: torch.Tensor) -> float:
        return cs_at(decode(outputs), ages, k)

    # (B, K) logits must reach decode whole, not flattened to (B*K,): accum_values above
    # keeps them so; flatten=False says the same to fastai's own, should it ever run
    return [KeptOnDevice(mae_of_outputs, flatten=False, name="mae"),
            KeptOnDevice(cs_of_outputs, flatten=False, name=f"cs{k}")]
