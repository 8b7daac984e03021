"""Shared fixtures of agelib's tests.

The run-wide defaults (smoke mode, offline hub, scratch results) live in the root
conftest.py, so they hold for the notebooks too, however pytest is started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------- the quirky folder
#: Every irregular name of the real folder (see ../shared/data/README.md): (age, gender, race, note)
REAL_IRREGULAR = {
    "39_1_20170116174525125.jpg.chip.jpg": (39, 1, None, "race field missing"),
    "61_1_20170109142408075.jpg.chip.jpg": (61, 1, None, "race field missing"),
    "24_0_1_20170116220224657 .jpg.chip.jpg": (24, 0, 1, "stray space"),
    "14_0_0_2017011022340900.jpg.chip.jpg": (14, 0, 0, "timestamp of 16 characters"),
    "28_1_2_201701161846515488.jpg.chip.jpg": (28, 1, 2, "timestamp of 18 characters"),
    "38_0_1_201701162330572788.jpg.chip.jpg": (38, 0, 1, "timestamp of 18 characters"),
}

#: Regular names with distinct images.
GOOD = [
    "1_0_0_20170109150557335.jpg.chip.jpg",
    "8_1_4_20170109201550339.jpg.chip.jpg",
    "26_1_2_20170116184028385.jpg.chip.jpg",
    "35_0_3_20170119200519145.jpg.chip.jpg",
    "62_1_1_20170112213000137.jpg.chip.jpg",
    "85_0_0_20170111210236211.jpg.chip.jpg",
]
#: Irregular names found in the real UTKFace folder (still usable), with the expected note.
IRREGULAR = {
    "39_1_20170116174525125.jpg.chip.jpg": "race field missing",
    "24_0_1_20170116220224657 .jpg.chip.jpg": "stray space",
    "28_1_2_201701161846515488.jpg.chip.jpg": "timestamp of 18 characters",
}
#: The same bytes under two names with the same labels: one sample, n_files 2.
COPY_SAME = ("30_0_0_20170117000000001.jpg.chip.jpg", "30_0_0_20170117000000002.jpg.chip.jpg")
#: The same bytes under two names that disagree on age: left out of the samples.
AGE_CONFLICT = ("40_1_3_20170117000000003.jpg.chip.jpg", "45_1_3_20170117000000004.jpg.chip.jpg")
#: The same bytes under two names that disagree on race only: kept, race unknown (a tie).
ATTR_CONFLICT = ("50_0_1_20170117000000005.jpg.chip.jpg", "50_0_2_20170117000000006.jpg.chip.jpg")
#: Valid images in unusual Pillow modes, with good names.
ODD_MODES = {
    "20_1_0_20170117000000010.jpg.chip.jpg": "L",
    "21_1_1_20170117000000011.png": "RGBA",
    "22_0_2_20170117000000012.jpg.chip.jpg": "CMYK",
    "23_0_3_20170117000000013.png": "P",
    "24_1_4_20170117000000014.png": "I;16",
}
#: Everything that must be skipped, with a fragment of the reason it must give.
BAD = {
    "33_0_0_20170117000000020.jpg.chip.jpg": "cannot decode",  # truncated JPEG
    "34_1_0_20170117000000021.jpg.chip.jpg": "empty",  # 0 bytes
    "36_0_1_20170117000000022.jpg.chip.jpg": "not an image",  # text named .jpg
    "notes.txt": "not an image file name",
    "extra": "folder",  # a subfolder
    "photo.jpg": "found 1 field(s)",
    "130_0_0_20170101000000000.jpg.chip.jpg": "age 130",
}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, with the reason, where no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (`bash .ci/gpu test` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def face_image(seed: int, size: int = 48) -> Image.Image:
    """A small, distinct, face-like RGB drawing (never a real photo)."""
    rng = np.random.default_rng(seed)
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    im = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(im)
    skin = tuple(int(v) for v in rng.integers(90, 250, 3))
    d.ellipse([size * 0.2, size * 0.1, size * 0.8, size * 0.9], fill=skin)
    for x in (0.38, 0.62):
        d.ellipse([size * (x - 0.05), size * 0.38, size * (x + 0.05), size * 0.46],
                  fill=(20, 20, 20))
    d.line([size * 0.4, size * 0.7, size * 0.6, size * 0.7], fill=(150, 40, 40), width=2)
    noise = rng.integers(-12, 13, (size, size, 3))
    pixels = np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def odd_mode_image(rgb: Image.Image, mode: str) -> Image.Image:
    """``rgb`` in one of the unusual modes of ``ODD_MODES``."""
    if mode == "RGBA":  # left half fully transparent
        im = rgb.convert("RGBA")
        alpha = Image.new("L", im.size, 255)
        ImageDraw.Draw(alpha).rectangle([0, 0, im.width // 2 - 1, im.height], fill=0)
        im.putalpha(alpha)
        return im
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    return rgb.convert(mode)


def write_quirky_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    seed = iter(range(1000))
    for name in [*GOOD, *IRREGULAR, "130_0_0_20170101000000000.jpg.chip.jpg"]:
        (folder / name).write_bytes(jpeg_bytes(face_image(next(seed))))
    for names in (COPY_SAME, AGE_CONFLICT, ATTR_CONFLICT):
        data = jpeg_bytes(face_image(next(seed)))
        for name in names:
            (folder / name).write_bytes(data)
    for name, mode in ODD_MODES.items():
        odd_mode_image(face_image(next(seed)), mode).save(
            folder / name, "PNG" if name.endswith(".png") else "JPEG")
    whole = jpeg_bytes(face_image(next(seed)))
    (folder / "33_0_0_20170117000000020.jpg.chip.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "34_1_0_20170117000000021.jpg.chip.jpg").write_bytes(b"")
    (folder / "36_0_1_20170117000000022.jpg.chip.jpg").write_text("this is not a picture\n")
    (folder / "notes.txt").write_text("where these files came from\n")
    (folder / "extra").mkdir()
    (folder / "extra" / "2_0_0_20170117000000030.jpg.chip.jpg").write_bytes(
        jpeg_bytes(face_image(next(seed))))
    (folder / "photo.jpg").write_bytes(jpeg_bytes(face_image(next(seed))))
    return folder


@pytest.fixture
def quirky_folder(tmp_path) -> Path:
    """A small UTKFace-style folder holding every quirk the loader must survive."""
    return write_quirky_folder(tmp_path / "quirky")


# --------------------------------------------------------------------------- records
def run_record(seed=0, test_mae=6.0, date="2026-01-01T00:00:00+00:00", **overrides) -> dict:
    """A full-mode run record on real faces, with the fields reports read (as
    ``records.make_record`` writes them)."""
    r = {"id": f"run-{seed}-{test_mae}-{overrides.get('mode', 'full')}", "tag": "ch02",
         "variant": "", "backbone": "resnet18", "head": "regression", "loss": "l1",
         "pretrained": False, "data": "UTKFace", "data_real": True, "mode": "full", "epochs": 20,
         "image_size": 64, "seed": seed, "params": 11_000_000, "valid_mae": test_mae + 0.5,
         "test_mae": test_mae, "test_cs5": 0.4, "device": "cpu (x)", "seconds": 3.0,
         "date": date, "config": {"model": {}}}
    r.update(overrides)
    return r


# --------------------------------------------------------------------------- settings, data
def tiny_mode():
    """A run mode in which a training run takes about a second on a CPU (32 px, 64 faces)."""
    from agelib import settings

    return settings.RunMode("smoke", image_size=32, n_train=64, n_valid=32, n_test=32, epochs=1,
                            batch_size=16)


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """A private AGELIB_RESULTS folder."""
    path = tmp_path / "results"
    monkeypatch.setenv("AGELIB_RESULTS", str(path))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private AGELIB_HOME, so caches and splits never touch the repository's data/."""
    path = tmp_path / "agelib-home"
    path.mkdir()
    monkeypatch.setenv("AGELIB_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def real_folder() -> Path:
    """The real UTKFace folder from AGELIB_DATA (resolved like ``sources.find_data``)."""
    asked = os.environ.get("AGELIB_DATA")
    if not asked:
        pytest.skip("real UTKFace not configured: set AGELIB_DATA to the image folder")
    path = Path(asked).expanduser()
    if (path / "UTKFace").is_dir():
        path = path / "UTKFace"
    if not path.is_dir():
        pytest.skip(f"AGELIB_DATA={asked!r} is not a folder of images")
    return path


@pytest.fixture(scope="session")
def synthetic_home(tmp_path_factory) -> Path:
    """A data home in which the built-in synthetic faces were generated (once per session).

    Generating them takes several seconds; tests that need them link this
    folder into their own home (see ``synthetic_faces``) instead of redrawing.
    """
    from agelib.data import sources

    path = tmp_path_factory.mktemp("synthetic-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGELIB_HOME", str(path))
        sources.load_faces("synthetic", verbose=False)
    return path


def link_synthetic(home: Path, synthetic_home: Path) -> None:
    """Make ``home`` see the session's synthetic faces and their folder scan."""
    (home / "synthetic").symlink_to(synthetic_home / "synthetic", target_is_directory=True)
    (home / "cache").mkdir(exist_ok=True)
    for scan in (synthetic_home / "cache").glob("scan-*"):
        shutil.copy2(scan, home / "cache" / scan.name)


@pytest.fixture
def synthetic_faces(home, synthetic_home):
    """``load_faces("synthetic")`` in the private ``home`` (faces generated once per session)."""
    from agelib.data import sources

    link_synthetic(home, synthetic_home)
    return sources.load_faces("synthetic", verbose=False)


# --------------------------------------------------------------------------- CLI runs
class Runs:
    """``python -m agelib`` runs started in the background, each waited for when a test first
    needs it: the CLI tests pay the ~5 s import cost once, in parallel."""

    def __init__(self, env: dict):
        self.env, self.procs, self.done = env, {}, {}

    def start(self, key: str, *args: str) -> None:
        self.procs[key] = subprocess.Popen(
            [sys.executable, "-m", "agelib", *map(str, args)], env=self.env, cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __getitem__(self, key: str) -> subprocess.CompletedProcess:
        if key not in self.done:
            proc = self.procs[key]
            out, err = proc.communicate(timeout=300)
            self.done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        return self.done[key]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
