"""Near-copies: one photo saved twice with different bytes (agelib.data.nearcopies)."""

import io

import numpy as np
import pandas as pd
import pytest
from conftest import face_image
from PIL import Image, ImageEnhance

from agelib import data
from agelib.data import nearcopies


class Stub:
    """Just what near_copies reads: a samples table and its images at a size."""

    def __init__(self, images, ages):
        self.samples = pd.DataFrame({"sha1": [f"{i:040x}" for i in range(len(images))],
                                     "age": ages})
        self._images = np.stack(images)

    def images(self, size):
        assert size == self._images.shape[1]
        return self._images


def recoded(im: Image.Image) -> np.ndarray:
    """The same photo, brightened, flattened a little and saved again as a JPEG."""
    im = ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.2)).enhance(0.9)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return np.asarray(Image.open(buf).convert("RGB"))


def photo(seed: int) -> Image.Image:
    """A 32 px stand-in for a photo: smooth random shapes, unlike any other seed's."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return coarse.resize((32, 32), Image.Resampling.BICUBIC)


def test_a_recoded_copy_is_found_and_distinct_photos_are_not():
    photos = [photo(i) for i in range(30)]
    images = [np.asarray(p) for p in photos] + [recoded(photos[7])]
    faces = Stub(images, ages=list(range(20, 50)) + [33])  # the copy says 33, not 27
    pairs = data.near_copies(faces)
    assert pairs[["sha1_a", "sha1_b"]].values.tolist() == [[f"{7:040x}", f"{30:040x}"]]
    assert pairs.loc[0, "corr"] >= nearcopies.MIN_CORR
    assert (pairs.loc[0, "age_a"], pairs.loc[0, "age_b"]) == (27, 33)


def jpeg(im: Image.Image, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_a_harsh_copy_is_paired_though_only_it_has_the_others_among_its_closest():
    base = photo(3)
    clean = [np.asarray(base), jpeg(base, 95), jpeg(base, 90)]  # closest to one another
    others = [np.asarray(photo(100 + i)) for i in range(10)]
    harsh = jpeg(Image.fromarray(recoded(base)), 20)
    faces = Stub(clean + others + [harsh], ages=[30] * 14)
    pairs = data.near_copies(faces, neighbours=2, min_corr=0.9)
    harsh_sha1 = f"{13:040x}"
    assert (pairs["sha1_b"] == harsh_sha1).sum() == 2  # the clean copies never list it
    assert len(pairs) == 3 + 2 and not pairs.duplicated(["sha1_a", "sha1_b"]).any()


def test_leaked_test_faces_are_those_with_a_copy_on_the_other_side():
    pairs = pd.DataFrame({"sha1_a": ["a", "c", "e"], "sha1_b": ["b", "d", "f"],
                          "corr": [0.99] * 3, "age_a": [1] * 3, "age_b": [1] * 3})
    split = pd.Series({"a": "train", "b": "test", "c": "test", "d": "test",
                       "e": "test", "f": "valid"})
    assert len(data.across_splits(pairs, split)) == 2
    assert data.leaked_test_faces(pairs, split) == {"b", "e"}
    stale = split.drop("a")  # a split that does not hold "a": its pair crosses nothing
    assert data.leaked_test_faces(pairs, stale) == {"e"}


def test_thumbnails_ignore_brightness_and_refuse_odd_sizes():
    face = np.asarray(face_image(3, size=32))
    brighter = np.clip(face.astype(int) + 40, 0, 255).astype(np.uint8)
    a, b = nearcopies.thumbnails(np.stack([face, brighter]))
    assert a @ b > 0.99
    with pytest.raises(ValueError, match="multiple of 16"):
        nearcopies.thumbnails(np.zeros((1, 24, 24, 3), np.uint8))
