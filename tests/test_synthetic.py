"""Tests for the synthetic face generator (agelib.data.synthetic).

The generator is the course's fallback dataset, so these tests check what the
rest of the course relies on: determinism, UTKFace-compatible file names,
cheap idempotent caching, and an age signal that a model can actually learn.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agelib.data import synthetic

NAME_RE = re.compile(r"^\d+_[01]_[0-4]_2017\d{13}\.jpg\.chip\.jpg$")


def _pixels(age: int, gender: int, race: int, seed: int, size: int = 48) -> np.ndarray:
    img = synthetic.render_face(age, gender, race, np.random.default_rng(seed), size=size)
    return np.asarray(img)


def _jpgs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".jpg.chip.jpg"))


def _labels_from_names(paths: list[Path]) -> list[tuple[int, int, int]]:
    """Parse like a UTKFace loader would, in timestamp (= generation) order."""
    parts = sorted((p.name.split("_") for p in paths), key=lambda s: s[3])
    return [(int(a), int(g), int(r)) for a, g, r, _ in parts]


# ----------------------------------------------------------------------------- render_face
def test_same_seed_gives_identical_pixels() -> None:
    assert np.array_equal(_pixels(40, 1, 2, seed=7), _pixels(40, 1, 2, seed=7))


def test_different_seed_gives_different_pixels() -> None:
    assert not np.array_equal(_pixels(40, 1, 2, seed=7), _pixels(40, 1, 2, seed=8))


@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_face_is_rgb_of_requested_size(size: int) -> None:
    img = synthetic.render_face(25, 0, 0, np.random.default_rng(0), size=size)
    assert img.mode == "RGB" and img.size == (size, size)


@pytest.mark.parametrize("bad", [dict(age=-1), dict(gender=2), dict(race=5), dict(size=8)])
def test_render_face_rejects_invalid_labels(bad: dict) -> None:
    args = dict(age=30, gender=0, race=0, size=64) | bad
    with pytest.raises(ValueError):
        synthetic.render_face(args["age"], args["gender"], args["race"], np.random.default_rng(0), args["size"])


# ----------------------------------------------------------------------------- sample_labels
def test_sample_labels_is_skewed_like_utkface() -> None:
    labels = np.array(synthetic.sample_labels(20_000, np.random.default_rng(0)))
    ages, genders, races = labels.T
    assert ages.min() >= 1 and ages.max() <= 100
    assert set(genders) == {0, 1} and set(races) == {0, 1, 2, 3, 4}
    assert ((ages >= 20) & (ages <= 35)).mean() > 0.3  # the big bump
    assert (ages <= 4).mean() > 0.05  # many babies
    assert 0 < (ages > 80).mean() < 0.05  # thin tail
    freqs = np.bincount(races, minlength=5) / len(races)
    assert np.allclose(freqs, synthetic.RACE_PROBS, atol=0.02)


def test_sample_labels_is_deterministic() -> None:
    a = synthetic.sample_labels(50, np.random.default_rng(3))
    assert a == synthetic.sample_labels(50, np.random.default_rng(3))
    assert all(isinstance(v, int) for triple in a for v in triple)


# ----------------------------------------------------------------------------- write_synthetic_faces
def test_file_names_match_utkface_and_labels(tmp_path: Path) -> None:
    n, seed = 40, 3
    folder = synthetic.write_synthetic_faces(tmp_path / "faces", n=n, seed=seed, size=48)
    paths = _jpgs(folder)
    names = [p.name for p in paths]
    assert len(names) == n == len(set(names))
    assert all(NAME_RE.match(name) for name in names)
    assert _labels_from_names(paths) == synthetic.sample_labels(n, np.random.default_rng(seed))


def test_written_images_decode_as_rgb(tmp_path: Path) -> None:
    folder = synthetic.write_synthetic_faces(tmp_path, n=12, seed=1, size=64)
    for path in _jpgs(folder):
        with Image.open(path) as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)


def test_writing_is_deterministic(tmp_path: Path) -> None:
    a = synthetic.write_synthetic_faces(tmp_path / "a", n=10, seed=5, size=48)
    b = synthetic.write_synthetic_faces(tmp_path / "b", n=10, seed=5, size=48)
    assert [p.name for p in _jpgs(a)] == [p.name for p in _jpgs(b)]
    for pa, pb in zip(_jpgs(a), _jpgs(b)):
        assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))


def test_second_call_does_not_rewrite(tmp_path: Path) -> None:
    folder = synthetic.write_synthetic_faces(tmp_path, n=15, seed=2, size=32)
    old = 1_000_000_000  # set an old mtime, so a rewrite could not go unnoticed
    for p in _jpgs(folder):
        os.utime(p, (old, old))
    synthetic.write_synthetic_faces(tmp_path, n=15, seed=2, size=32)
    assert all(p.stat().st_mtime == old for p in _jpgs(folder))


def test_other_parameters_regenerate_and_keep_foreign_files(tmp_path: Path) -> None:
    foreign = tmp_path / "25_0_0_20170116174525125.jpg.chip.jpg"  # e.g. a real photo
    foreign.write_bytes(b"not ours")
    synthetic.write_synthetic_faces(tmp_path, n=15, seed=2, size=32)
    old_names = {p.name for p in _jpgs(tmp_path)} - {foreign.name}
    synthetic.write_synthetic_faces(tmp_path, n=10, seed=9, size=32)
    marker = json.loads((tmp_path / synthetic.MARKER_NAME).read_text())
    new_names = {p.name for p in _jpgs(tmp_path)} - {foreign.name}
    assert marker["seed"] == 9 and marker["complete"] and set(marker["files"]) == new_names
    assert len(new_names) == 10 and not (old_names & new_names)
    assert foreign.read_bytes() == b"not ours"


def test_missing_file_triggers_regeneration(tmp_path: Path) -> None:
    synthetic.write_synthetic_faces(tmp_path, n=8, seed=4, size=32)
    victim = _jpgs(tmp_path)[3]
    victim.unlink()
    synthetic.write_synthetic_faces(tmp_path, n=8, seed=4, size=32)
    assert victim.exists() and len(_jpgs(tmp_path)) == 8


# ----------------------------------------------------------------------------- learnability
def test_age_is_learnable_from_pixels() -> None:
    """A linear model on raw grayscale pixels must clearly beat predicting the mean."""
    n, n_train, size, seed = 600, 450, 32, 1
    labels = synthetic.sample_labels(n, np.random.default_rng(seed))
    x = np.stack([
        np.asarray(synthetic.render_face(a, g, r, np.random.default_rng([seed, i]), size).convert("L"),
                   dtype=np.float64).ravel() / 255.0
        for i, (a, g, r) in enumerate(labels)
    ])
    y = np.array([a for a, _, _ in labels], dtype=np.float64)
    x_mean, y_mean = x[:n_train].mean(0), y[:n_train].mean()
    a = x[:n_train] - x_mean
    # Ridge regression in its dual form (450 x 450 system): cheap with 1024 features.
    coef = a.T @ np.linalg.solve(a @ a.T + 3.0 * np.eye(n_train), y[:n_train] - y_mean)
    pred = (x[n_train:] - x_mean) @ coef + y_mean
    mae_model = np.abs(pred - y[n_train:]).mean()
    mae_mean = np.abs(y_mean - y[n_train:]).mean()
    assert mae_model < 0.8 * mae_mean, (mae_model, mae_mean)


def test_another_size_regenerates(tmp_path: Path) -> None:
    """Catches faces of an old size reused when another size is asked for."""
    synthetic.write_synthetic_faces(tmp_path, n=4, seed=1, size=32)
    synthetic.write_synthetic_faces(tmp_path, n=4, seed=1, size=48)
    assert {Image.open(p).size for p in _jpgs(tmp_path)} == {(48, 48)}


def test_a_synthetic_folder_stays_synthetic_wherever_it_is_and_whatever_its_name(
        tmp_path: Path, home) -> None:
    """Catches synthetic faces passed off as real data when read as an ordinary folder."""
    from agelib.data import sources

    folder = synthetic.write_synthetic_faces(tmp_path / "UTKFace", n=6, seed=0, size=32)
    for faces in (sources.load_folder(folder), sources.load_faces(folder, verbose=False)):
        assert not faces.real and faces.name == "synthetic"
        assert "SYNTHETIC" in faces.banner()
