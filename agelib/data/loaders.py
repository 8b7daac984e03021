"""From a split to batches: a PyTorch ``Dataset`` and fastai ``DataLoaders``.

Images arrive already decoded (see :mod:`agelib.data.cache`) as one uint8
tensor, so a batch is an index into memory, not 32 JPEG decodes. Augmentation
is done per *batch*, on whatever device the batch is on, by
:class:`BatchTransform`: the same code runs on a laptop CPU and on a GPU,
where it costs almost nothing.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .. import settings
from . import splits as splits_

if TYPE_CHECKING:  # fastai is imported when loaders are made: its import is slow and noisy
    from fastai.data.core import DataLoaders

    from .sources import Faces

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to(small: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (indices, random draws) moved to ``device``, on CUDA without a sync.

    A plain ``.to("cuda")`` of host memory waits until the GPU has finished all the
    work queued before it, so the CPU could not prepare batch n+1 while the GPU
    computes batch n. On CUDA a non-blocking copy from ordinary host memory is
    staged before the call returns and queued in order on the stream: the same
    values, and nothing waits. Apple's MPS does not stage such copies (the source
    may be freed too early), so there the copy stays blocking.
    """
    device = torch.device(device)
    return small.to(device, non_blocking=device.type == "cuda")


class FaceDataset(torch.utils.data.Dataset):
    """Faces as uint8 ``(3, H, W)`` tensors with their age in years (float).

    With ``with_meta=True`` an item is ``(image, age, gender, race)``, where a
    missing attribute is -1. ``table`` keeps every label for analysis.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, table: pd.DataFrame,
                 with_meta: bool = False):
        if len(images) != len(table):
            raise ValueError(f"{len(images)} images but {len(table)} table rows")
        pixels = torch.as_tensor(np.asarray(images))  # (N, H, W, 3) uint8
        self.images = pixels.permute(0, 3, 1, 2)  # (N, 3, H, W), a view: no copy
        self.table = table.reset_index(drop=True)
        self.ages = torch.tensor(self.table["age"].to_numpy(), dtype=torch.float32)
        self.gender = torch.tensor(self.table["gender"].fillna(-1).to_numpy(dtype=np.int64))
        self.race = torch.tensor(self.table["race"].fillna(-1).to_numpy(dtype=np.int64))
        self.with_meta = with_meta

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        if self.with_meta:
            return self.images[i], self.ages[i], self.gender[i], self.race[i]
        return self.images[i], self.ages[i]


class BatchTransform(nn.Module):
    """uint8 ``(B, 3, H, W)`` -> normalised float ``(B, 3, size, size)``, augmented when training.

    Training: a random crop of ``scale`` of the side (with a small shift), a
    horizontal flip and, when asked, a rotation of up to ``rotate`` degrees, done for
    the whole batch at once with one affine resampling; then brightness and
    contrast scaled by up to ``jitter`` (0.2: factors 0.8 to 1.2) and a share
    ``grayscale`` of the faces turned grey. Evaluation: a plain resize. Faces are
    aligned, so all of it stays mild.
    """

    def __init__(self, size: int, train: bool, scale: tuple[float, float] = (0.8, 1.0),
                 flip: bool = True, grayscale: float = 0.0, rotate: float = 0.0,
                 jitter: float = 0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.size, self.train_mode, self.scale, self.flip = size, train, scale, flip
        self.rotate, self.jitter = rotate, jitter
        self.grayscale = grayscale  # share of training images turned grey (colour is a weak,
        # lighting-dependent age cue; dropping it sometimes forces shape cues)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1),
                             persistent=False)  # grey = these weights of R, G, B (ITU-R 601)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # pixels in [0, 1] read as 0-255 would be a black face, silently (a float-only check:
        # the uint8 batches of training never pay for the max)
        if x.is_floating_point() and x.numel() and x.max() <= 1:
            raise ValueError("BatchTransform takes pixels on the 0-255 scale (uint8, as the "
                             "cache holds them), but these are all <= 1: pass "
                             "(x * 255).round().to(torch.uint8)")
        x = x.float() / 255  # (B, 3, H, W) in [0, 1]; never in place: x may be the caller's
        if self.train_mode:
            x = self._random_crop_flip(x, generator)
            if self.jitter:
                x = self._brightness_contrast(x, generator)
            if self.grayscale:
                x = self._some_grey(x, generator)
        elif x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              antialias=True, align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _random_crop_flip(self, x: torch.Tensor, generator: torch.Generator | None
                          ) -> torch.Tensor:
        """Each face cropped, shifted, flipped (and turned) at random: one affine matrix per
        face, so the whole batch costs a single resampling of its pixels."""
        b = x.shape[0]
        rand = _to(torch.rand(b, 4, generator=generator), x.device)  # drawn on CPU: reproducible
        lo, hi = self.scale
        s = lo + (hi - lo) * rand[:, 0]  # crop side as a fraction of the image
        tx, ty = (1 - s) * (2 * rand[:, 1] - 1), (1 - s) * (2 * rand[:, 2] - 1)  # stay inside
        sign = torch.where(rand[:, 3] < 0.5, -1.0, 1.0) if self.flip else torch.ones_like(s)
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = s * sign, tx
        theta[:, 1, 1], theta[:, 1, 2] = s, ty
        if self.rotate:  # drawn only when asked, so runs without rotation keep their stream
            angle = torch.deg2rad(self.rotate * (2 * torch.rand(b, generator=generator) - 1))
            cos, sin = _to(torch.cos(angle), x.device), _to(torch.sin(angle), x.device)
            theta[:, 0, 0], theta[:, 0, 1] = s * sign * cos, -s * sin
            theta[:, 1, 0], theta[:, 1, 1] = s * sign * sin, s * cos
        grid = F.affine_grid(theta, [b, 3, self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                             align_corners=False)  # (B, 3, size, size)

    def _brightness_contrast(self, x: torch.Tensor, generator: torch.Generator | None
                             ) -> torch.Tensor:
        """Each face's contrast (around its own mean grey) and brightness scaled by a
        factor in ``1 ± jitter``: lighting varies between photos, age does not."""
        factors = 1 + self.jitter * (2 * torch.rand(x.shape[0], 2, generator=generator) - 1)
        contrast, brightness = _to(factors, x.device).view(-1, 2, 1, 1, 1).unbind(1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * contrast + mean).mul(brightness).clamp(0, 1)

    def _some_grey(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A share ``grayscale`` of the faces turned grey (the rest as they are)."""
        grey = _to(torch.rand(x.shape[0], generator=generator), x.device) < self.grayscale
        luma = (x * self.luma.to(x.device)).sum(1, keepdim=True)  # (B, 1, S, S)
        return torch.where(grey.view(-1, 1, 1, 1), luma.expand_as(x), x)


class FaceLoader:
    """Batches of ``(images, ages)`` drawn by indexing the dataset's tensors.

    It speaks enough of fastai's ``DataLoader`` protocol (``__iter__``, ``__len__``,
    ``to``, ``new``, ``n_inp``, ``dataset``) for a ``Learner`` to train, validate and
    predict with it, without a worker process per core doing per-image work.
    """

    n_inp = 1

    def __init__(self, dataset: FaceDataset, transform: BatchTransform, batch_size: int = 64,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 device: torch.device | str | None = None, weights: torch.Tensor | None = None):
        self.dataset, self.transform = dataset, transform
        self.bs, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.device = torch.device(device) if device else torch.device("cpu")
        self.weights = weights  # per-sample drawing weights (balanced sampling), or None
        self.epoch = 0  # reshuffles differ per epoch, yet the run is repeatable

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.bs if self.drop_last else -(-n // self.bs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        n = len(self.dataset)
        if self.weights is not None and self.shuffle:  # an epoch of n draws, with replacement
            order = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        else:
            order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        transform = self.transform.to(self.device)
        stored = self.dataset.images
        for start in range(0, len(self) * self.bs, self.bs):
            idx = order[start:start + self.bs]
            # resident images (already on the device) are indexed there: no host round trip
            images = stored[_to(idx, stored.device)].to(self.device, non_blocking=True)
            ages = _to(self.dataset.ages[idx], self.device)
            yield transform(images, gen), ages

    def make_resident(self) -> "FaceLoader":
        """Hold this split's uint8 images on the loader's device, once.

        On a GPU a batch is then one index into device memory: no decoding, no
        host-to-device copy, no worker processes. 20,000 faces at 128 px take
        about 1 GB as uint8. Where the device has no room (or is the CPU), the
        images stay in (pinned, on CUDA) host memory.
        """
        images = self.dataset.images
        if self.device.type == "cpu" or images.device == self.device:
            return self
        try:
            self.dataset.images = images.contiguous().to(self.device)
        except torch.OutOfMemoryError:
            warnings.warn("the images do not fit on the device: keeping them in pinned host memory")
            self.dataset.images = images.contiguous().pin_memory()
        return self

    def to(self, device: torch.device | str) -> "FaceLoader":
        """Send batches to ``device`` from now on (fastai's ``Learner`` asks, in place)."""
        self.device = torch.device(device)
        return self

    def new(self, **changes) -> "FaceLoader":
        """A copy with some settings changed (fastai asks for ``shuffle=False``)."""
        other = copy.copy(self)
        for key, value in changes.items():
            key = {"bs": "bs", "batch_size": "bs"}.get(key, key)
            if not hasattr(other, key):
                raise TypeError(f"FaceLoader.new() got an unknown setting {key!r}")
            setattr(other, key, value)
        return other

    def one_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first batch, as fastai's ``DataLoader`` gives it (to show or check a batch)."""
        return next(iter(self))


@dataclass
class SplitData:
    """The three tables of a split, shrunk to the run mode's sizes in smoke runs."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def __iter__(self):
        return iter((("train", self.train), ("valid", self.valid), ("test", self.test)))


def split_tables(samples: pd.DataFrame, split: pd.Series, mode: settings.RunMode | None = None,
                 seed: int = 0) -> SplitData:
    """Rows of each split; smoke mode keeps a fixed, age-stratified subset of each."""
    mode = mode or settings.run_mode()
    splits_.check_no_leak(samples, split)
    assigned = samples["sha1"].map(split[~split.index.duplicated()])  # a repeat is harmless
    sizes = {"train": mode.n_train, "valid": mode.n_valid, "test": mode.n_test}
    parts = {name: splits_.subsample(samples[assigned == name], sizes[name], seed)
             .reset_index(drop=True) for name in splits_.SPLITS}
    return SplitData(**parts)


def balance_weights(ages: torch.Tensor, power: float, edges=(0, 10, 20, 30, 40, 50, 60, 70, 80)
                    ) -> torch.Tensor | None:
    """Per-sample drawing weights ``frequency(age band) ** -power`` (None for ``power == 0``).

    ``power=1`` draws every 10-year band equally often; ``0.5`` is halfway (the
    square root of the inverse frequency). Old faces are rare in UTKFace, and a
    model sees each one only a few times per epoch without this.
    """
    if not power:
        return None
    band = torch.bucketize(ages.float(), torch.tensor(edges[1:], dtype=torch.float32), right=True)
    counts = torch.bincount(band, minlength=len(edges)).float()
    return counts[band].pow(-float(power))


def face_dataloaders(faces: Faces, split: pd.Series | None = None,
                     mode: settings.RunMode | None = None, size: int | None = None,
                     batch_size: int | None = None, seed: int = 0,
                     device: torch.device | str | None = None, with_test: bool = True,
                     subset_seed: int = 0, resident: bool = True, balance: float = 0.0,
                     **augment) -> DataLoaders:
    """fastai ``DataLoaders`` (train, valid[, test]) for a dataset from ``load_faces``.

    ``split`` defaults to the standard protocol split (seed 0), whatever the
    training ``seed`` (which only shuffles and augments); smoke-mode subsets are
    drawn with ``subset_seed`` so runs with different training seeds see the
    same faces. ``size`` is what the model sees; images are cached at that size.
    ``augment`` goes to the training :class:`BatchTransform` (``scale``, ``flip``).
    ``resident`` keeps the images on the device (see :meth:`FaceLoader.make_resident`);
    ``balance`` draws training faces by age band (see :func:`balance_weights`).
    """
    with warnings.catch_warnings():  # fastai's import warns about torch.jit; not ours to fix
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script")
        from fastai.data.core import DataLoaders

    mode = mode or settings.run_mode()
    size = size or mode.image_size
    batch_size = batch_size or mode.batch_size
    device = device or settings.get_device()
    tables = split_tables(faces.samples, faces.split(0) if split is None else split, mode,
                          subset_seed)
    wanted = [sha1 for _, table in tables for sha1 in table["sha1"]]
    images = faces.images(size, wanted)  # (N, size, size, 3), decoded once
    position = {sha1: i for i, sha1 in enumerate(wanted)}
    loaders = []
    for name, table in tables:
        if name == "test" and not with_test:
            continue
        rows = [position[s] for s in table["sha1"]]
        dataset = FaceDataset(images[rows], table)
        train = name == "train"
        weights = balance_weights(dataset.ages, balance) if train else None
        loader = FaceLoader(dataset, BatchTransform(size, train, **augment), batch_size,
                            shuffle=train, drop_last=train and len(table) > batch_size,
                            seed=seed, device=device, weights=weights)
        loaders.append(loader.make_resident() if resident else loader)
    return DataLoaders(*loaders, device=device)


def denormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Undo :class:`BatchTransform`'s normalisation, for showing a batch as pictures."""
    mean = torch.tensor(mean, device=x.device).view(-1, 1, 1)
    std = torch.tensor(std, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)
