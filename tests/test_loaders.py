"""Datasets, batch transforms, loaders and fastai interop (agelib.data.loaders)."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from agelib import settings
from agelib.data import loaders
from agelib.data.loaders import BatchTransform, FaceDataset, FaceLoader, denormalize


def make_dataset(n: int = 10, side: int = 16, with_meta: bool = False) -> FaceDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    table = pd.DataFrame({"sha1": [f"{i:040x}" for i in range(n)], "age": np.arange(n) + 1,
                          "gender": pd.array([i % 2 if i % 3 else None for i in range(n)],
                                             dtype="Int64"),
                          "race": pd.array([i % 5 if i % 4 else None for i in range(n)],
                                           dtype="Int64")},
                         index=np.arange(100, 100 + n))
    return FaceDataset(images, table, with_meta=with_meta)


def batch(n: int = 16, side: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)


# --------------------------------------------------------------------------- FaceDataset
def test_dataset_items_are_uint8_chw_images_with_float_ages():
    ds = make_dataset()
    image, age = ds[3]
    assert len(ds) == 10
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
    assert age.dtype == torch.float32 and age.item() == 4.0
    assert ds.table.index.tolist() == list(range(10))


def test_dataset_image_is_the_hwc_array_transposed():
    ds = make_dataset()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ds[7][0].numpy(), images[7].transpose(2, 0, 1))


def test_dataset_with_meta_marks_missing_attributes_minus_one():
    ds = make_dataset(with_meta=True)
    genders = [ds[i][2].item() for i in range(len(ds))]
    races = [ds[i][3].item() for i in range(len(ds))]
    assert genders == [-1 if i % 3 == 0 else i % 2 for i in range(10)]
    assert races == [-1 if i % 4 == 0 else i % 5 for i in range(10)]
    assert ds[0][2].dtype == torch.int64


def test_dataset_refuses_images_and_table_of_different_lengths():
    with pytest.raises(ValueError, match="3 images but 2 table rows"):
        FaceDataset(np.zeros((3, 4, 4, 3), np.uint8), pd.DataFrame({"age": [1, 2],
                    "gender": [0, 1], "race": [0, 1]}))


# --------------------------------------------------------------------------- BatchTransform
def test_eval_transform_normalises_and_denormalize_inverts_it():
    x = batch()
    out = BatchTransform(32, train=False)(x)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(denormalize(out), x.float() / 255, atol=1e-5, rtol=0)
    mean = torch.tensor(loaders.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(loaders.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std)


def test_eval_transform_resizes_to_its_size():
    out = BatchTransform(24, train=False)(batch(4, 40))
    assert out.shape == (4, 3, 24, 24)


def test_eval_transform_leaves_the_input_untouched():
    x = batch()
    before = x.clone()
    BatchTransform(32, train=True)(x, torch.Generator().manual_seed(0))
    BatchTransform(32, train=False)(x)
    assert torch.equal(x, before)


def test_train_transform_is_deterministic_for_a_seeded_generator():
    t = BatchTransform(24, train=True)
    x = batch(8, 32)
    a = t(x, torch.Generator().manual_seed(1))
    b = t(x, torch.Generator().manual_seed(1))
    c = t(x, torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 24, 24)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_train_transform_without_crop_or_flip_is_the_identity():
    x = batch()
    out = BatchTransform(32, train=True, scale=(1, 1), flip=False)(
        x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, BatchTransform(32, train=False)(x), atol=1e-5, rtol=0)


def test_train_transform_flips_some_images_and_keeps_the_others():
    x = batch(32)
    plain = BatchTransform(32, train=False)(x)
    out = BatchTransform(32, train=True, scale=(1, 1))(x, torch.Generator().manual_seed(0))
    flipped = [torch.allclose(o, p.flip(-1), atol=1e-5) for o, p in zip(out, plain)]
    kept = [torch.allclose(o, p, atol=1e-5) for o, p in zip(out, plain)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image is exactly one of the two
    assert 4 <= sum(flipped) <= 28


@pytest.mark.parametrize("draw, flipped", [(0.0, True), (0.45, True), (0.55, False), (0.99, False)])
def test_train_flip_with_full_scale_equals_torch_flip(monkeypatch, draw, flipped):
    x = batch(6)
    plain = BatchTransform(32, train=True, scale=(1, 1), flip=False)(x)
    monkeypatch.setattr(torch, "rand", lambda *size, generator=None: torch.full(size, draw))
    out = BatchTransform(32, train=True, scale=(1, 1))(x)
    expected = torch.flip(plain, dims=[-1]) if flipped else plain
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_rotation_turns_the_face_and_stays_reproducible():
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 14:18, :] = 255  # a horizontal bar
    turned = BatchTransform(32, train=True, scale=(1, 1), flip=False, rotate=30)
    a = turned(x, torch.Generator().manual_seed(0))
    b = turned(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    plain = BatchTransform(32, train=False)(x)
    assert not torch.allclose(a, plain, atol=1e-3)  # the bar is no longer level
    # no rotation asked: the random stream, and so the batch, is what it always was
    same = BatchTransform(32, train=True, rotate=0)(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(same, BatchTransform(32, train=True)(x, torch.Generator().manual_seed(3)))


def test_jitter_scales_brightness_and_contrast_within_bounds():
    x = batch(64)
    t = BatchTransform(32, train=True, scale=(1, 1), flip=False, jitter=0.3)
    out = denormalize(t(x, torch.Generator().manual_seed(0)))
    plain = denormalize(BatchTransform(32, train=False)(x))
    assert out.min() >= 0 and out.max() <= 1
    ratio = out.mean(dim=(1, 2, 3)) / plain.mean(dim=(1, 2, 3))  # brightness * (mean kept by contrast)
    assert ratio.min() > 0.65 and ratio.max() < 1.35 and ratio.std() > 0.05


def pixels(out: torch.Tensor) -> torch.Tensor:
    """A transform's output back on the [0, 1] scale, unclamped (denormalize clamps)."""
    mean = torch.tensor(loaders.IMAGENET_MEAN).view(1, 3, 1, 1)
    return out * torch.tensor(loaders.IMAGENET_STD).view(1, 3, 1, 1) + mean


def test_a_grey_face_weighs_red_green_and_blue_as_luma_does():
    red = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    red[:, 0] = 255
    grey = BatchTransform(8, train=True, scale=(1, 1), flip=False, grayscale=1.0)(red)
    torch.testing.assert_close(pixels(grey), torch.full((1, 3, 8, 8), 0.299), atol=1e-4, rtol=0)


def test_the_grey_share_is_the_share_asked_for():
    x = batch(400, side=8)
    out = pixels(BatchTransform(8, train=True, scale=(1, 1), flip=False, grayscale=0.25)(
        x, torch.Generator().manual_seed(0)))
    grey = ((out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-4) & \
           ((out[:, 1] - out[:, 2]).abs().amax((1, 2)) < 1e-4)
    assert 0.15 < grey.float().mean() < 0.35


def test_rotation_turns_the_image_not_shears_it(monkeypatch):
    x = batch(2, side=16)
    plain = BatchTransform(16, train=False)(x)
    # every draw at its top: full-size crop, no shift, no flip, and a turn of +90 degrees
    monkeypatch.setattr(torch, "rand", lambda *size, generator=None: torch.ones(size))
    out = BatchTransform(16, train=True, scale=(1, 1), flip=False, rotate=90)(x)
    assert any(torch.allclose(out, torch.rot90(plain, k, (-2, -1)), atol=1e-4) for k in (1, -1))


def test_jitter_keeps_pixels_in_range_and_each_face_around_its_own_mean():
    x = batch(64)
    out = pixels(BatchTransform(32, train=True, scale=(1, 1), flip=False, jitter=0.5)(
        x, torch.Generator().manual_seed(0)))
    assert out.min() >= -1e-5 and out.max() <= 1 + 1e-5  # clamped before normalising
    black_and_white = torch.cat([torch.zeros(16, 3, 8, 8, dtype=torch.uint8),
                                 torch.full((16, 3, 8, 8), 255, dtype=torch.uint8)])
    out = pixels(BatchTransform(8, train=True, scale=(1, 1), flip=False, jitter=0.3)(
        black_and_white, torch.Generator().manual_seed(0)))
    assert out[:16].abs().max() < 1e-5  # a black face stays black: its contrast is its own


def test_balance_weights_band_ages_by_ten_years_from_each_decade_start():
    weights = loaders.balance_weights(torch.tensor([5.0, 10.0, 10.0, 15.0]), 1)
    torch.testing.assert_close(weights, torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3]))
    assert loaders.balance_weights(torch.tensor([5.0]), 0) is None


def test_train_crop_zooms_in():
    x = batch(4)
    plain = BatchTransform(32, train=False)(x)
    zoomed = BatchTransform(32, train=True, scale=(0.5, 0.5), flip=False)(
        x, torch.Generator().manual_seed(0))
    assert zoomed.shape == plain.shape
    assert not torch.allclose(zoomed, plain, atol=0.1)


# --------------------------------------------------------------------------- FaceLoader
def loader(n=10, bs=4, **kw) -> FaceLoader:
    return FaceLoader(make_dataset(n), BatchTransform(16, train=False), batch_size=bs, **kw)


def ages_of(epoch):
    return [int(a) for _, ages in epoch for a in ages]


def test_loader_length_with_and_without_drop_last():
    assert len(loader(10, 4)) == 3 and len(loader(10, 4, drop_last=True)) == 2
    assert len(loader(8, 4)) == len(loader(8, 4, drop_last=True)) == 2
    assert len(list(loader(10, 4, drop_last=True))) == 2


def test_loader_without_shuffle_yields_every_sample_once_in_order():
    dl = loader(10, 4)
    batches = list(dl)
    assert [len(ages) for _, ages in batches] == [4, 4, 2]
    assert ages_of(batches) == list(range(1, 11))
    assert batches[0][0].shape == (4, 3, 16, 16) and batches[0][0].dtype == torch.float32
    assert ages_of(dl) == list(range(1, 11))  # and again next epoch


def test_loader_shuffles_differently_each_epoch_yet_reproducibly():
    dl = loader(40, 8, shuffle=True, seed=3)
    first, second = ages_of(dl), ages_of(dl)
    assert sorted(first) == sorted(second) == list(range(1, 41))
    assert first != second
    again = loader(40, 8, shuffle=True, seed=3)
    assert [ages_of(again), ages_of(again)] == [first, second]
    assert ages_of(loader(40, 8, shuffle=True, seed=4)) != first


def test_loader_with_drop_last_and_shuffle_drops_different_samples():
    dl = loader(10, 4, shuffle=True, drop_last=True)
    epochs = [ages_of(dl) for _ in range(3)]
    assert all(len(e) == 8 and len(set(e)) == 8 for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3


def test_loader_new_changes_settings_on_a_copy():
    dl = loader(10, 4, shuffle=True, drop_last=True)
    plain = dl.new(shuffle=False, drop_last=False, bs=5)
    assert ages_of(plain) == list(range(1, 11)) and len(plain) == 2
    assert dl.shuffle and dl.drop_last and dl.bs == 4
    with pytest.raises(TypeError, match="unknown setting 'colour'"):
        dl.new(colour="red")


def test_loader_one_batch_and_to():
    dl = loader(10, 4).to("cpu")
    images, ages = dl.one_batch()
    assert images.device.type == "cpu" and ages.tolist() == [1, 2, 3, 4]


# --------------------------------------------------------------------------- fastai, end to end
@pytest.fixture
def smoke_dls(synthetic_faces):
    return loaders.face_dataloaders(synthetic_faces, mode=settings.SMOKE, device="cpu")


def test_split_tables_have_smoke_sizes_and_no_leak(synthetic_faces):
    tables = loaders.split_tables(synthetic_faces.samples, synthetic_faces.split(0), settings.SMOKE)
    assert [len(t) for _, t in tables] == [256, 64, 64]
    sha1s = [set(t["sha1"]) for _, t in tables]
    assert not (sha1s[0] & sha1s[1] or sha1s[0] & sha1s[2] or sha1s[1] & sha1s[2])
    split = synthetic_faces.split(0)
    assert all((split[t["sha1"]] == name).all() for name, t in tables)


def test_face_dataloaders_give_train_valid_test_at_smoke_sizes(smoke_dls, synthetic_faces):
    train, valid, test = smoke_dls.loaders
    assert [len(dl.dataset) for dl in (train, valid, test)] == [256, 64, 64]
    assert train.shuffle and train.drop_last and not valid.shuffle and not test.shuffle
    images, ages = train.one_batch()
    assert images.shape == (32, 3, 64, 64) and images.dtype == torch.float32
    assert ages.shape == (32,) and ages.dtype == torch.float32
    table = valid.dataset.table.set_index("sha1")
    samples = synthetic_faces.samples.set_index("sha1")
    assert (table["age"] == samples.loc[table.index, "age"]).all()


def test_face_dataloaders_images_match_the_cache(smoke_dls, synthetic_faces):
    valid = smoke_dls.valid
    cached = synthetic_faces.images(64, list(valid.dataset.table["sha1"][:3]))
    np.testing.assert_array_equal(valid.dataset.images[:3].permute(0, 2, 3, 1).numpy(), cached)


class TinyRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))

    def forward(self, x):
        return self.body(x).squeeze(1) + 30.0


def test_fastai_learner_fits_and_predicts_in_validation_order(smoke_dls):
    from fastai.learner import Learner

    settings.seed_everything(0)
    model = TinyRegressor()
    before = [p.detach().clone() for p in model.parameters()]
    learn = Learner(smoke_dls, model, loss_func=nn.L1Loss())
    with learn.no_logging():
        learn.fit(1, lr=1e-2)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    train_loss, valid_loss = learn.recorder.values[-1][:2]
    assert np.isfinite(train_loss) and np.isfinite(valid_loss)
    preds, targets = learn.get_preds(ds_idx=1)
    valid = smoke_dls.valid.dataset
    assert preds.shape == (len(valid),)
    ages = torch.tensor(valid.table["age"].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(targets, ages)
    expected = torch.cat([model(x) for x, _ in smoke_dls.valid.new(shuffle=False)]).detach()
    torch.testing.assert_close(preds, expected)


def test_face_grid_of_nothing_says_so_instead_of_failing():
    import numpy as np

    from agelib import plots

    fig = plots.face_grid(np.zeros((0, 8, 8, 3), dtype=np.uint8), [], ncols=4)
    assert "nothing to show" in [t.get_text() for t in fig.axes[0].texts]


def test_the_transform_leaves_a_float_input_untouched():
    x = torch.full((2, 3, 16, 16), 200.0)
    BatchTransform(16, train=False)(x)
    assert torch.equal(x, torch.full((2, 3, 16, 16), 200.0))  # the caller's array, unchanged
    with pytest.raises(ValueError, match="0-255 scale"):  # [0, 1] floats: not a black face
        BatchTransform(16, train=False)(x / 255)


# --------------------------------------------------------------------------- seeds, devices
def tiny_dls(faces, **kw):
    from conftest import tiny_mode

    return loaders.face_dataloaders(faces, mode=tiny_mode(), size=32, **{"device": "cpu", **kw})


def test_valid_and_test_batches_are_never_augmented(synthetic_faces):
    """Catches augmentation (crops, flips) applied to the faces a model is evaluated on."""
    dls = tiny_dls(synthetic_faces)
    assert dls.train.transform.train_mode
    for dl in dls.loaders[1:]:
        images, _ = dl.one_batch()
        plain = BatchTransform(32, train=False)(dl.dataset.images[:len(images)])
        torch.testing.assert_close(images, plain, atol=0, rtol=0)


def test_the_training_seed_changes_neither_the_split_nor_the_faces_seen(synthetic_faces):
    """Catches a training seed that redraws the split or the smoke subsets: runs with other
    seeds must be compared on the same train, valid and test faces."""
    faces_seen = [[set(dl.dataset.table["sha1"])
                   for dl in tiny_dls(synthetic_faces, seed=s).loaders]
                  for s in (0, 1)]
    assert faces_seen[0] == faces_seen[1]


def test_resident_images_and_batches_live_on_the_loaders_device():
    """Catches resident images left on the host and batches not moved to the device ('meta'
    stands in for a GPU, so this runs on any machine)."""
    resident = loader(10, 4, device="meta").make_resident()
    assert resident.dataset.images.device.type == "meta"
    streamed = loader(10, 4, device="meta")  # not resident: images stay, batches move
    assert streamed.dataset.images.device.type == "cpu"
    for dl in (resident, streamed):
        images, ages = dl.one_batch()
        assert images.device.type == ages.device.type == "meta" and images.shape == (4, 3, 16, 16)


def test_face_dataloaders_make_every_split_resident_on_the_device(synthetic_faces):
    """Catches face_dataloaders ignoring ``resident`` (every batch would cross from the host)."""
    dls = tiny_dls(synthetic_faces, device="meta")
    assert [dl.dataset.images.device.type for dl in dls.loaders] == ["meta"] * 3
    kept = tiny_dls(synthetic_faces, device="meta", resident=False)
    assert [dl.dataset.images.device.type for dl in kept.loaders] == ["cpu"] * 3
