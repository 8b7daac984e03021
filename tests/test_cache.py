"""Decode-once caches and packs (agelib.data.cache)."""

import io
import tarfile
import warnings

import numpy as np
import torch
import pandas as pd
import pytest
from conftest import ODD_MODES, face_image, odd_mode_image
from PIL import Image

from agelib import data
from agelib.data import cache, sources

SIZES = [(48, 48), (60, 40), (40, 72)]  # square, landscape, portrait


def originals():
    return [face_image(i, 1).resize(size) for i, size in enumerate(SIZES)]


def opener(images):
    return lambda i: images[i].copy()  # build_cache closes what it opens


def never_open(i):
    raise AssertionError(f"image {i} was decoded again instead of read from the cache")


def test_build_cache_is_square_resize_of_each_original(tmp_path):
    images = originals()
    out = cache.build_cache(["a", "b", "c"], opener(images), 32, tmp_path)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    for got, im in zip(out, images):
        np.testing.assert_array_equal(got, np.asarray(cache.square_resize(im.copy(), 32)))


def test_a_cache_that_fails_halfway_leaves_no_file_behind(tmp_path):
    images = originals()

    def broken(i):
        if i == 1:
            raise OSError("image file is truncated")
        return images[i].copy()

    with pytest.raises(OSError, match="truncated"):
        cache.build_cache(["a", "b", "c"], broken, 32, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half-written cache, no temporary file


def test_build_cache_reuses_its_file_without_decoding(tmp_path):
    first = np.array(cache.build_cache(["a", "b", "c"], opener(originals()), 32, tmp_path))
    again = cache.build_cache(["a", "b", "c"], never_open, 32, tmp_path)
    np.testing.assert_array_equal(again, first)
    assert [p.name for p in tmp_path.iterdir()] == [cache.cache_key(["a", "b", "c"], 32) + ".npy"]


def test_build_cache_is_keyed_by_ids_and_size(tmp_path):
    cache.build_cache(["a", "b", "c"], opener(originals()), 32, tmp_path)
    with pytest.raises(AssertionError, match="decoded again"):
        cache.build_cache(["a", "b", "c"], never_open, 24, tmp_path)
    with pytest.raises(AssertionError, match="decoded again"):
        cache.build_cache(["a", "b", "x"], never_open, 32, tmp_path)
    with pytest.raises(AssertionError, match="decoded again"):  # same ids, other copy
        cache.build_cache(["a", "b", "c"], never_open, 32, tmp_path, source="a pack")


def test_a_folder_and_its_pack_do_not_share_decoded_pixels(quirky_faces, tmp_path, home):
    # the pack keeps the files' content hashes but holds re-encoded (WebP) pixels
    pack = data.load_pack(cache.write_pack(quirky_faces.samples, quirky_faces.images(32),
                                           tmp_path / "faces.tar", quality=10))
    from_pack = np.array(pack.images(32))
    assert not np.array_equal(np.array(quirky_faces.images(32)), from_pack)
    assert len(list((home / "cache").glob("*.npy"))) == 2


def test_build_cache_turns_odd_modes_into_rgb(quirky_folder, tmp_path):
    names = list(ODD_MODES)
    out = cache.build_cache(names, lambda i: Image.open(quirky_folder / names[i]), 24, tmp_path)
    assert out.shape == (len(names), 24, 24, 3) and out.dtype == np.uint8
    assert all(out[i].std() > 5 for i in range(len(names)))  # a picture, not a flat fill


@pytest.mark.parametrize("mode", sorted(set(ODD_MODES.values())))
def test_to_rgb_gives_8_bit_rgb(mode):
    im = cache.to_rgb(odd_mode_image(face_image(3), mode))
    assert im.mode == "RGB" and im.size == (48, 48)


def test_to_rgb_lays_transparent_pixels_on_grey():
    rgb = np.asarray(cache.to_rgb(odd_mode_image(face_image(3), "RGBA")))
    assert (rgb[:, :23] == 128).all()  # the transparent left half
    np.testing.assert_array_equal(rgb[:, 24:], np.asarray(face_image(3))[:, 24:])


def test_to_rgb_stretches_16_bit_grey_to_the_full_range():
    rgb = np.asarray(cache.to_rgb(odd_mode_image(face_image(3), "I;16")))
    assert rgb.min() == 0 and rgb.max() == 255
    assert (rgb[..., 0] == rgb[..., 1]).all()


# --------------------------------------------------------------------------- packs
@pytest.fixture
def quirky_faces(quirky_folder, home):
    return sources.load_folder(quirky_folder)


def test_pack_round_trip_keeps_the_table_and_the_images(quirky_faces, tmp_path):
    images = np.array(quirky_faces.images(32))
    path = cache.write_pack(quirky_faces.samples, images, tmp_path / "packs" / "faces.tar")
    pack = cache.Pack(path)
    pd.testing.assert_frame_equal(pack.samples, quirky_faces.samples)
    back = np.stack([np.asarray(pack.open(s)) for s in pack.samples["sha1"]])
    assert back.shape == images.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - images).mean() < 6  # WebP at quality 80 is lossy, slightly
    assert not list((tmp_path / "packs").glob("*.partial"))
    assert pack.info["quality"] == 80 and pack.info["format"] == "WebP"
    with tarfile.open(path) as tar:  # one member for all images: no per-file headers and padding
        assert len(tar.getmembers()) == 5  # info, table, ids, offsets, images


def test_a_faces_pack_carries_the_file_table_the_report_and_the_left_out_copies(quirky_faces,
                                                                              tmp_path):
    path = sources.write_faces_pack(quirky_faces, 24, tmp_path / "faces.tar")
    faces = data.load_pack(path)
    assert faces.report == quirky_faces.report  # what the original folder held, not the pack
    pd.testing.assert_frame_equal(faces.files, quirky_faces.files)
    conflicts = data.duplicate_groups(faces.files).query("age_conflict")
    assert len(conflicts) == 1
    (left_out,) = set(faces.files["sha1"]) - set(faces.samples["sha1"])
    assert faces.open_image(left_out).size == (24, 24)  # chapters 01 and 10 show these faces
    assert "SYNTHETIC" not in faces.banner() and "duplicate files merged" in faces.banner()


def test_a_pack_in_the_old_one_file_per_image_layout_says_to_make_it_again(quirky_faces, tmp_path):
    old = tmp_path / "old.tar"
    with tarfile.open(old, "w") as tar:
        for name, text in [(cache.PACK_INFO, '{"name": "UTKFace", "real": true}'),
                           ("samples.csv", quirky_faces.samples.to_csv(index=False))]:
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    with pytest.raises(ValueError, match="older agelib.*python -m agelib pack"):
        cache.Pack(old)


def test_write_pack_refuses_a_table_and_images_of_different_lengths(quirky_faces, tmp_path):
    images = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="16 samples but 3 images"):
        cache.write_pack(quirky_faces.samples, images, tmp_path / "x.tar")


def test_pack_refuses_a_file_that_is_not_a_pack(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ValueError, match="not an agelib pack"):
        cache.Pack(junk)
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        tar.add(junk, arcname="readme.txt")
    with pytest.raises(ValueError, match="not an agelib pack"):
        cache.Pack(other)


def test_pack_that_is_missing_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m agelib pack"):
        cache.Pack(tmp_path / "missing.tar")


def test_load_faces_reads_a_pack(quirky_faces, tmp_path, home):
    path = cache.write_pack(quirky_faces.samples, quirky_faces.images(32), tmp_path / "faces.tar")
    for faces in (data.load_faces(path, verbose=False), data.load_pack(path)):
        assert faces.real and faces.files is None
        assert faces.name == "UTKFace (32 px WebP pack)"  # never passed off as the original files
        pd.testing.assert_frame_equal(faces.samples, quirky_faces.samples)
        assert faces.report.n_used == len(quirky_faces.samples)
        assert faces.open_image(faces.samples.sha1[0]).size == (32, 32)
        images = faces.images(16)
        assert images.shape == (len(faces.samples), 16, 16, 3)
        split = faces.split(seed=0)
        assert set(split.index) == set(faces.samples.sha1)


def test_a_pack_used_above_its_size_says_the_faces_are_upscaled(quirky_faces, tmp_path, home):
    path = cache.write_pack(quirky_faces.samples, quirky_faces.images(32), tmp_path / "faces.tar")
    faces = data.load_pack(path)
    assert faces.stored_size == 32 and quirky_faces.stored_size is None  # the folder: originals
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at or below its size: not a word
        faces.images(32)
        faces.images(16)
    with pytest.warns(UserWarning, match="holds 32 px faces: at 64 px every one is upscaled"):
        assert faces.images(64).shape[1:] == (64, 64, 3)


def test_a_synthetic_pack_stays_synthetic_whatever_its_name(quirky_faces, tmp_path):
    path = cache.write_pack(quirky_faces.samples, quirky_faces.images(16),
                            tmp_path / "UTKFace-16px.tar", name="synthetic", real=False)
    faces = data.load_pack(path)
    assert not faces.real and faces.name == "synthetic (16 px WebP pack)"
    assert "SYNTHETIC" in faces.banner()


class PackImages(torch.utils.data.Dataset):
    """The raw pixels of a pack's images, in a given order (what a DataLoader worker reads)."""

    def __init__(self, faces, sha1s):
        self.faces, self.sha1s = faces, sha1s

    def __len__(self):
        return len(self.sha1s)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(self.faces.open_image(self.sha1s[i]).convert("RGB")))


def test_a_pack_reads_right_from_forked_dataloader_workers(synthetic_faces, tmp_path):
    # forked workers share the pack's file offset: a seek in one moved another's read
    # (images large enough that every read is a seek and a read of the file, as with 128 px)
    faces = synthetic_faces
    path = cache.write_pack(faces.samples, faces.images(128), tmp_path / "faces.tar", quality=95)
    pack = data.load_pack(path)
    sha1s = list(pack.samples["sha1"].sample(frac=1.0, random_state=0))  # a shuffled order
    expected = torch.stack([PackImages(pack, sha1s)[i] for i in range(len(sha1s))])
    with warnings.catch_warnings():  # more workers than cores, on purpose: more interleaving
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = torch.utils.data.DataLoader(PackImages(pack, sha1s), batch_size=4,
                                             num_workers=6, multiprocessing_context="fork")
        got = torch.cat(list(loader))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_two_packs_of_one_dataset_at_different_qualities_keep_their_own_pixels(
        synthetic_faces, tmp_path, home):
    faces = synthetic_faces
    sub = faces.samples.head(12).reset_index(drop=True)
    images = faces.images(32, list(sub["sha1"]))
    fine, coarse = (data.load_pack(cache.write_pack(sub, images, tmp_path / f"q{q}.tar",
                                                    quality=q, real=False, name="synthetic"))
                    for q in (95, 5))
    assert fine.name == coarse.name  # same dataset, same size: only the quality differs
    decoded = np.stack([np.asarray(coarse.open_image(s).convert("RGB")) for s in sub["sha1"]])
    assert not np.array_equal(fine.images(32), coarse.images(32))
    assert np.array_equal(coarse.images(32), decoded)  # its own pixels, not the other pack's


def test_a_photo_with_an_exif_orientation_is_cached_upright(tmp_path):
    # a portrait stored sideways with EXIF Orientation=6, as phones save them
    upright = Image.new("RGB", (100, 200), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 100, 100))  # red on top
    stored = upright.rotate(90, expand=True)  # what the file holds: red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    crop = np.asarray(cache.square_resize(Image.open(tmp_path / "phone.jpg"), 64)).astype(int)
    assert crop[5, 32, 0] > 200 and crop[58, 32, 2] > 200  # red at the top, blue at the bottom
    from agelib.data import utkface
    info = utkface.inspect_image(tmp_path / "phone.jpg")
    assert (info["width"], info["height"]) == (100, 200)  # as shown, not as stored


def test_a_cache_hands_each_id_its_own_image_whatever_the_order(tmp_path):
    """Another seed's split asks for the same images in another order: each must still get
    its own pixels (a cache keyed on the set, not the order, would swap faces and ages)."""
    colours = {"a": (255, 0, 0), "b": (0, 0, 255)}
    for ids in (["a", "b"], ["b", "a"]):
        images = cache.build_cache(ids, lambda i: Image.new("RGB", (8, 8), colours[ids[i]]),
                                   8, tmp_path)
        assert [tuple(im[0, 0]) for im in images] == [colours[i] for i in ids]


def test_the_cache_key_changes_with_the_decoding_pipeline(monkeypatch):
    before = cache.cache_key(["a"], 32)
    monkeypatch.setattr(cache, "PIPELINE", cache.PIPELINE + 1)
    assert cache.cache_key(["a"], 32) != before  # a changed resize never reuses old pixels


def test_16_bit_grey_above_black_is_stretched_without_wrapping_around():
    """Catches a 16-bit rescale that forgets the minimum, so bright pixels overflow uint8."""
    ramp = np.linspace(20_000, 60_000, 64, dtype=np.uint16).reshape(8, 8)
    rgb = np.asarray(cache.to_rgb(Image.fromarray(ramp))).astype(int)
    assert rgb.min() == 0 and rgb.max() == 255
    assert (np.diff(rgb[..., 0].ravel()) >= 0).all()  # brighter stays brighter: no wrap to 0


def test_square_resize_crops_the_centre_of_a_wide_photo_instead_of_squashing_it():
    """Catches a resize that stretches a non-square photo instead of cropping its centre."""
    wide = Image.new("RGB", (80, 40), (0, 255, 0))  # green middle square...
    wide.paste((255, 0, 0), (0, 0, 20, 40))  # ...between a red left strip
    wide.paste((0, 0, 255), (60, 0, 80, 40))  # ...and a blue right strip
    square = np.asarray(cache.square_resize(wide, 16)).astype(int)
    assert (square[..., 1] > 200).all() and (square[..., [0, 2]] < 60).all()
