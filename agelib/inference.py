"""Using a trained model: ages for images, and scores on any labelled folder."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import checkpoints, metrics, models, records, settings
from .data import cache, loaders, sources, utkface


@torch.no_grad()
def predict_ages(model: models.AgeModel, images: np.ndarray | torch.Tensor, size: int | None = None,
                 batch_size: int = 64, device=None) -> np.ndarray:
    """Ages for uint8 ``(N, H, W, 3)`` images (or a list of them, of any sizes), cropped,
    resized and normalised as in evaluation.

    ``size``: the image side the model was trained at; by default the size it was built for
    (``config.img_size``: transformers and hybrids), which a CNN's config leaves unset.
    (:func:`agelib.training.predict_ages` is the other one: a fastai ``Learner`` on batches.)
    """
    size = size or getattr(getattr(model, "config", None), "img_size", None)
    if not size:
        raise ValueError("give size: the image side this model was trained at (a CNN's "
                         "config does not say it; a checkpoint's record does)")
    device = torch.device(device) if device else settings.get_device()
    if torch.is_tensor(images):
        images = images.cpu().numpy()
    if not (isinstance(images, np.ndarray) and images.shape[1:3] == (size, size)):
        images = np.stack([_fitted(im, size) for im in images])  # as evaluation crops them
    pixels = torch.as_tensor(images).permute(0, 3, 1, 2)  # (N, 3, H, W)
    transform = loaders.BatchTransform(size, train=False).to(device)
    with _borrowed(model, device):
        out = [model.head.to_age(model(transform(pixels[i:i + batch_size].to(device)))).float().cpu()
               for i in range(0, len(pixels), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


@contextmanager
def _borrowed(model: torch.nn.Module, device: torch.device):
    """``model`` on ``device`` in eval mode for a while, then back where and as it was: a
    notebook that checks a model halfway through training must not find it moved to
    another device or with dropout switched off."""
    home = next(model.parameters(), torch.empty(0)).device
    training = model.training
    model.to(device).eval()
    try:
        yield model
    finally:
        model.to(home).train(training)


def evaluate_folder(checkpoint: str | Path, folder: str | Path, batch_size: int = 64,
                    device=None) -> dict:
    """n, MAE and CS@5 of a checkpoint on every labelled image of a UTKFace-style folder,
    or of a CSV table of your own photos (:func:`agelib.data.load_table`).

    A folder's ages are read from its file names and every labelled file counts; a table's
    photos are deduplicated as for training. Files that cannot be read are listed under
    ``skipped`` rather than failing the whole evaluation.
    """
    model, payload = checkpoints.load_checkpoint(checkpoint)
    size = checkpoints.trained_size(payload, model)
    if not size:
        raise ValueError(f"'{Path(checkpoint).name}' does not say its image size (a CNN saved "
                         "without its train_config or record): save it with "
                         "save_checkpoint(model, path, train_config=...)")
    if str(folder).lower().endswith(".csv"):
        faces = sources.load_table(folder)
        images = np.stack([_fitted(faces.open_image(s), size) for s in faces.samples["sha1"]])
        true, skipped, used = faces.samples["age"], faces.report.skipped, faces.samples
    else:
        folder = utkface.image_folder(folder)
        files, report = utkface.scan_folder(folder)
        images = np.stack([_read(folder / name, size) for name in files["file"]])
        true, skipped, used = files["age"], report.skipped, utkface.deduplicate(files)
    pred = predict_ages(model, images, size, batch_size, device)
    true = true.to_numpy(dtype=np.float32)
    scores = {"n": int(len(true)), "mae": round(metrics.mae(pred, true), 4),
              "cs5": round(metrics.cs_at(pred, true, 5), 4), "skipped": skipped}
    notes = _score_notes(Path(checkpoint).name, payload.get("record") or {}, used["sha1"])
    if notes:
        scores["note"] = " ".join(notes)
    return scores


def _score_notes(name: str, record: dict, sha1s) -> list[str]:
    """What a reader of a score must know first: that the model was trained only to check
    the code (a smoke run, or the synthetic faces), or on these very photos."""
    notes = []
    if records.checks_code_only(record):
        faces = "real" if record.get("data_real") else "SYNTHETIC"
        notes.append(f"'{name}' was trained in {str(record.get('mode')).upper()} mode on {faces} "
                     "faces: this score checks only that the code works, not how well the "
                     "method does. Train in full mode on real faces for a score worth reading.")
    if record.get("data_fingerprint") == sources.image_fingerprint(sha1s):
        notes.append(f"These are the photos '{name}' was trained on: the score mixes its "
                     "training faces with its test faces, so it flatters the model. Its "
                     f"test-split score is in its record: test MAE {record.get('test_mae')}.")
    return notes


def _fitted(image, size: int) -> np.ndarray:
    """One uint8 ``(H, W, 3)`` image at ``size``: centre-cropped and resized as the training
    cache does (a stretch would squash a face that is not square)."""
    image = np.asarray(image, dtype=np.uint8)
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(cache.square_resize(Image.fromarray(image), size))


def _read(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(cache.square_resize(im, size, draft=True))
