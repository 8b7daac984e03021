"""Decode once: a uint8 image cache and a compact pack to carry the dataset around.

Decoding and resizing 20k JPEGs costs more than a small model's training step,
so doing it every epoch makes the GPU wait. The cache decodes every distinct
image once into one ``(N, S, S, 3)`` uint8 array, saved as ``.npy`` so it can
be memory-mapped on the CPU or moved whole onto a GPU as a single tensor.

A *pack* is the same dataset as one ``.tar`` holding the samples table and every
image as WebP, concatenated into one member with an index of offsets (one tar
member per image would add about 15 MB of headers and padding to 38 MB of images):
about 38 MiB for UTKFace at 128 px, small enough to copy to a machine that has no
access to the original folder.
"""

from __future__ import annotations

import gzip
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

from ..files import written_whole
from .utkface import read_files_table

PACK_TABLE = "samples.csv.gz"
PACK_INFO = "pack.json"
PACK_FILES = "files.csv.gz"  # every labelled file of the original folder, copies included
PACK_IDS = "images.txt"  # the sha1 of each stored image, in order: the samples, then left-out copies
PACK_IMAGES = "images.webp.bin"  # every image's WebP bytes, one after another, in that order
PACK_OFFSETS = "offsets.npy"  # where each image starts and ends in PACK_IMAGES (N + 1 numbers)


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


def square_resize(im: Image.Image, size: int, draft: bool = False) -> Image.Image:
    """Upright (as its EXIF orientation says), centre-cropped to a square and resized, as
    the aligned UTKFace crops expect; inference turns photos upright the same way.

    ``draft``: decode a JPEG not yet loaded at a reduced scale when far larger than
    needed. It changes the image object for good, so only for images the caller opened
    for this alone (the cache's), never someone else's.
    """
    if draft and im.format == "JPEG":
        im.draft("RGB", (size, size))
    im = ImageOps.exif_transpose(im)
    return ImageOps.fit(to_rgb(im), (size, size), Image.Resampling.BICUBIC)


#: bumped when decoding changes (2: photos turned upright by their EXIF orientation), so a
#: cache built by an older agelib is not reused
PIPELINE = 2


def cache_key(ids: list[str], size: int, source: str = "") -> str:
    """Stable name for the cache of these images at this size, decoded from ``source``.

    The source matters: a pack keeps the original files' content hashes but holds
    re-encoded pixels, so the folder and its pack must not share a cache.
    """
    digest = hashlib.sha1(f"{source}\n{size}\n{PIPELINE}\n".encode()
                          + "\n".join(ids).encode()).hexdigest()
    return f"faces-{size}px-{len(ids)}-{digest[:12]}"


def build_cache(ids: list[str], open_image: Callable[[int], Image.Image], size: int,
                cache_dir: str | Path, workers: int | None = None,
                source: str = "") -> np.ndarray:
    """Decode ``len(ids)`` images once into a ``(N, size, size, 3)`` uint8 array on disk.

    ``open_image(i)`` returns image ``i``; ``ids`` (content hashes) and ``source``
    (which copy of the data they are read from) name the cache, so asking again for
    the same images and size just memory-maps the saved file.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{cache_key(ids, size, source)}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    # an image that cannot be read, or Ctrl-C: no gigabyte left behind, no half a cache
    with written_whole(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(ids), size, size, 3))

        def fill(i: int) -> None:
            with open_image(i) as im:
                out[i] = np.asarray(square_resize(im, size, draft=True))

        try:
            with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
                list(pool.map(fill, range(len(ids))))
            out.flush()
        finally:
            del out  # the map is closed before the file is renamed or removed
    return np.load(path, mmap_mode="r")


def write_pack(samples: pd.DataFrame, images: np.ndarray, path: str | Path,
               quality: int = 80, name: str = "UTKFace", real: bool = True,
               files: pd.DataFrame | None = None, report: dict | None = None,
               extra: dict[str, np.ndarray] | None = None) -> Path:
    """Save a samples table and its cached images as one ``.tar`` (WebP images).

    ``name`` and ``real`` travel inside the pack, so synthetic faces can never
    come back labelled as real ones. ``files`` (every labelled file, copies
    included), the scan's ``report`` and ``extra`` images (sha1 -> pixels: the
    copies left out of ``samples``, such as images whose names disagree on the
    age) travel too, so that a chapter about the data reads the same from a pack.
    """
    if len(samples) != len(images):
        raise ValueError(f"{len(samples)} samples but {len(images)} images")
    path = Path(path)
    extra = extra or {}
    ids = list(samples["sha1"]) + list(extra)
    blobs = [_webp(pixels, quality) for pixels in [*images, *extra.values()]]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    index = io.BytesIO()
    np.save(index, offsets)
    with written_whole(path) as tmp, tarfile.open(tmp, "w") as tar:
        info = {"name": name, "real": real, "size": int(images.shape[1]), "n": len(samples),
                "format": "WebP", "quality": int(quality), "report": report}
        _add_bytes(tar, PACK_INFO, json.dumps(info).encode())
        _add_bytes(tar, PACK_TABLE, _gzip_csv(samples))
        if files is not None:
            _add_bytes(tar, PACK_FILES, _gzip_csv(files))
        _add_bytes(tar, PACK_IDS, "\n".join(ids).encode())
        _add_bytes(tar, PACK_OFFSETS, index.getvalue())
        _add_bytes(tar, PACK_IMAGES, b"".join(blobs))
    return path


def _webp(pixels: np.ndarray, quality: int) -> bytes:
    """One image as WebP (``method=4``: mid-way in its speed/size trade, 0 fast .. 6 small)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue()


def _gzip_csv(table: pd.DataFrame) -> bytes:
    """A table as gzip'd CSV; ``mtime=0`` so the same table always packs to the same bytes."""
    return gzip.compress(table.to_csv(index=False).encode(), mtime=0)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class Pack:
    """Read access to a pack written by :func:`write_pack`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        tar, names = self._open_tar()
        with tar:  # the tar's index is read once; images are then read by offset (_read)
            self.info = json.load(tar.extractfile(PACK_INFO))
            self.samples = pd.read_csv(tar.extractfile(PACK_TABLE), compression="gzip",
                                       dtype={"sha1": str, "file": str})
            offsets = tar.extractfile(PACK_OFFSETS).read()
            self._base = tar.getmember(PACK_IMAGES).offset_data  # images' bytes start here
            ids = tar.extractfile(PACK_IDS).read().decode().split("\n")
            self.files = None  # every labelled file of the original folder, when it was packed
            if PACK_FILES in names:
                self.files = read_files_table(gzip.open(tar.extractfile(PACK_FILES)))
        self._offsets = np.load(io.BytesIO(offsets))
        #: tells packs apart whose images differ (another size, quality or set of faces)
        self.signature = hashlib.sha1(offsets + json.dumps(self.info).encode()).hexdigest()[:12]
        self._row = {sha1: i for i, sha1 in enumerate(ids)}
        self._file, self._pid = open(self.path, "rb"), os.getpid()
        for column in ("gender", "race"):
            if column in self.samples:
                self.samples[column] = self.samples[column].astype("Int64")
        self._lock = threading.Lock()  # the seek-and-read fallback must not interleave

    def close(self) -> None:
        """Close the file the images are read from (a closed pack reads no more images)."""
        if (file := getattr(self, "_file", None)) is not None:
            file.close()

    def __del__(self) -> None:  # a pack lives as long as its Faces: close with it, quietly
        self.close()

    def _open_tar(self) -> tuple[tarfile.TarFile, set[str]]:
        """The pack's tar and its member names; an error that says how to make a pack again
        when the file is missing, is no pack, or lacks members this agelib reads."""
        if not self.path.is_file():
            raise FileNotFoundError(f"No pack at '{self.path}'. Make one with "
                                    "`python -m agelib pack`.")
        try:
            tar = tarfile.open(self.path, "r")
            names = set(tar.getnames())
        except tarfile.TarError as err:
            raise ValueError(f"'{self.path.name}' is not an agelib pack ({err}); "
                             "make one with `python -m agelib pack`.") from None
        if PACK_INFO not in names:
            tar.close()
            raise ValueError(f"'{self.path.name}' is not an agelib pack (no {PACK_INFO}); "
                             "make one with `python -m agelib pack`.")
        if not {PACK_TABLE, PACK_IDS, PACK_OFFSETS, PACK_IMAGES} <= names:
            tar.close()
            raise ValueError(f"'{self.path.name}' was written by an older agelib; make it again "
                             "with `python -m agelib pack`.")
        return tar, names

    def _read(self, start: int, size: int) -> bytes:
        """``size`` bytes of the images at ``start``, safe from threads and from forked
        DataLoader workers: forked processes share one file offset, so a seek in one
        would move another's read (and hand it some other image's bytes)."""
        if hasattr(os, "pread"):  # reads at an offset, touching no shared position
            return os.pread(self._file.fileno(), size, self._base + start)
        with self._lock:  # no pread (Windows): one handle per process
            if self._pid != os.getpid():
                self._file, self._pid = open(self.path, "rb"), os.getpid()
            self._file.seek(self._base + start)
            return self._file.read(size)

    def open(self, sha1: str) -> Image.Image:
        """The stored image of this content hash (a sample or a left-out copy), still encoded:
        Pillow decodes it when the pixels are asked for."""
        i = self._row[sha1]
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return Image.open(io.BytesIO(self._read(start, end - start)))
