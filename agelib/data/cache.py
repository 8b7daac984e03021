"""Decode once: a uint8 image cache and a compact pack to carry the dataset around.

Decoding and resizing 20k JPEGs costs more than a small model's training step,
so doing it every epoch makes the GPU wait. The cache decodes every distinct
image once into one ``(N, S, S, 3)`` uint8 array, saved as ``.npy`` so it can
be memory-mapped on the CPU or moved whole onto a GPU as a single tensor.

A *pack* is the same dataset as one ``.tar`` of small WebP images plus the
samples table (about 40 MB for UTKFace at 128 px): small enough to copy to a
machine that has no access to the original folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

PACK_TABLE = "samples.csv"
PACK_INFO = "pack.json"


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: grayscale, palette, CMYK, 16-bit and RGBA all work.

    Transparent pixels are laid on mid-grey rather than on whatever colour hides behind them.
    """
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit/float grayscale: rescale
        arr = np.asarray(im, dtype=np.float32)
        span = float(arr.max() - arr.min()) or 1.0
        return Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def square_resize(im: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize, as the aligned UTKFace crops expect."""
    if im.format == "JPEG":
        im.draft("RGB", (size, size))  # decode at a reduced scale when far larger than needed
    return ImageOps.fit(to_rgb(im), (size, size), Image.Resampling.BICUBIC)


def cache_key(ids: list[str], size: int) -> str:
    """Stable name for the cache of these images at this size."""
    digest = hashlib.sha1(f"{size}\n".encode() + "\n".join(ids).encode()).hexdigest()
    return f"faces-{size}px-{len(ids)}-{digest[:12]}"


def build_cache(ids: list[str], open_image: Callable[[int], Image.Image], size: int,
                cache_dir: str | Path, workers: int | None = None) -> np.ndarray:
    """Decode ``len(ids)`` images once into a ``(N, size, size, 3)`` uint8 array on disk.

    ``open_image(i)`` returns image ``i``; ``ids`` (content hashes) name the cache,
    so asking again for the same images and size just memory-maps the saved file.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{cache_key(ids, size)}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                    shape=(len(ids), size, size, 3))

    def fill(i: int) -> None:
        with open_image(i) as im:
            out[i] = np.asarray(square_resize(im, size))

    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        list(pool.map(fill, range(len(ids))))
    out.flush()
    del out
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache behind
    return np.load(path, mmap_mode="r")


def write_pack(samples: pd.DataFrame, images: np.ndarray, path: str | Path,
               quality: int = 90, name: str = "UTKFace", real: bool = True) -> Path:
    """Save a samples table and its cached images as one ``.tar`` of WebP files.

    ``name`` and ``real`` travel inside the pack, so synthetic faces can never
    come back labelled as real ones.
    """
    if len(samples) != len(images):
        raise ValueError(f"{len(samples)} samples but {len(images)} images")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        info = {"name": name, "real": real, "size": int(images.shape[1]), "n": len(samples)}
        _add_bytes(tar, PACK_INFO, json.dumps(info).encode())
        _add_bytes(tar, PACK_TABLE, samples.to_csv(index=False).encode())
        for sha1, pixels in zip(samples["sha1"], images):
            buf = io.BytesIO()
            Image.fromarray(np.asarray(pixels)).save(buf, "WEBP", quality=quality, method=4)
            _add_bytes(tar, f"images/{sha1}.webp", buf.getvalue())
    os.replace(tmp, path)
    return path


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class Pack:
    """Read access to a pack written by :func:`write_pack`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No pack at '{self.path}'. Make one with `python -m agelib pack`.")
        try:
            self._tar = tarfile.open(self.path, "r")
            self.samples = pd.read_csv(self._tar.extractfile(PACK_TABLE),
                                       dtype={"sha1": str, "file": str})
            self.info = json.load(self._tar.extractfile(PACK_INFO))
        except (tarfile.TarError, KeyError) as err:
            raise ValueError(f"'{self.path.name}' is not an agelib pack ({err}); "
                             "make one with `python -m agelib pack`.") from None
        for column in ("gender", "race"):
            if column in self.samples:
                self.samples[column] = self.samples[column].astype("Int64")
        self._members = {m.name: m for m in self._tar.getmembers()}
        self._lock = threading.Lock()  # one file handle: reads must not interleave

    def open(self, sha1: str) -> Image.Image:
        with self._lock:
            data = self._tar.extractfile(self._members[f"images/{sha1}.webp"]).read()
        return Image.open(io.BytesIO(data))
