"""Training an age model with fastai, the same way in every chapter.

:func:`train_age_model` is the whole recipe in one call: seed, data on the
standard split, model, loss, a fastai ``Learner`` with per-sample metrics,
one-cycle or warmup-cosine schedule, mixed precision on a GPU, best epoch
chosen on *validation* only, then one evaluation on test, a checkpoint and a
run record. Chapters that teach a piece of it (a loss, a head) build the
``Learner`` themselves with :func:`make_learner` and still record their runs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from . import checkpoints, distill, hybrid, losses, metrics, models, records, settings
from . import data as data_
from .checkpoints import checkpoint_path, find_checkpoint  # where a bare name lives, is found

with warnings.catch_warnings():  # fastai's import warns about torch.jit; not ours to fix
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script")
    from fastai.callback.all import (CancelFitException, Callback, ParamScheduler,
                                     ProgressCallback, SchedCos, SchedLin, TrackerCallback,
                                     combine_scheds)
    from fastai.learner import AvgLoss, AvgSmoothLoss, Learner, Recorder
    from fastai.torch_core import find_bs
    from fastai.optimizer import OptimWrapper

if TYPE_CHECKING:
    from fastai.data.core import DataLoader, DataLoaders

    from .data.loaders import FaceLoader  # what the course's DataLoaders hold

SCHEDULES = ("one_cycle", "warmup_cosine", "constant")


@dataclass
class TrainConfig:
    """One training run. Unset sizes come from the run mode (smoke or full)."""

    model: models.ModelConfig = field(default_factory=models.ModelConfig)
    loss: str = "l1"  # a name in losses.LOSSES; must suit the model's head
    epochs: int | None = None  # None: the run mode's default
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.05  # AdamW's decoupled weight decay
    batch_size: int | None = None
    image_size: int | None = None
    schedule: str = "one_cycle"  # one_cycle | warmup_cosine (linear warmup, cosine to 0) | constant
    warmup: float = 0.1  # warmup_cosine: share of steps spent warming up
    seed: int = 0  # training seed (the split always uses the protocol's seed 0)
    split_seed: int = 0
    mixed_precision: bool = True  # bf16 (or fp16) autocast on CUDA; ignored on CPU
    augment_scale: tuple[float, float] = (0.8, 1.0)  # random crop side range
    flip: bool = True
    grayscale: float = 0.0  # share of training images shown in grey
    rotate: float = 0.0  # random rotation of training images, up to this many degrees either way
    jitter: float = 0.0  # brightness and contrast scaled by a random factor in 1 +- jitter
    patience: int | None = None  # stop after this many epochs without a better valid MAE
    balance: float = 0.0  # draw training faces by age band: 0 as they come, 1 every band equally
    channels_last: bool = True  # NHWC memory layout for convolutions on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model (pays only for long GPU runs)
    # the hybrid paper's three-stage recipe: {"cnn": ckpt, "vit": ckpt} trained parts to start from
    init_from: dict | None = None
    distill_from: str | None = None  # checkpoint of a trained teacher whose ages guide training
    distill_alpha: float = 0.5  # weight of |student age - teacher age| in the training loss
    distill_flip: bool = True  # the teacher's age of a face: averaged with its mirror image's
    tag: str = ""  # free label for reports, e.g. "ch02"
    variant: str = ""  # what this run changes, for ablation tables, e.g. "projection bridge"

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = models.ModelConfig.from_dict(self.model)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.init_from is not None:
            self._check_init_from()
        self._check_numbers()
        losses.get_loss(self.loss)  # unknown loss names fail here, listing the valid ones
        kind = losses.loss_output_kind(self.loss)
        if kind != self.model.head:
            suits = [n for n, k in losses.LOSS_OUTPUT_KINDS.items() if k == self.model.head]
            raise ValueError(f"loss {self.loss!r} needs a {kind} head, but the model has a "
                             f"{self.model.head} head; pick a matching pair (losses for a "
                             f"{self.model.head} head: {', '.join(suits)})")

    def _check_numbers(self) -> None:
        """Refuse a setting outside its range now, not as a silently odd run hours later
        (a warmup of 1.5 or a jitter of 2 trains without complaint, on nonsense)."""
        lo, hi = self.augment_scale
        rules = [("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                 ("warmup", 0 <= self.warmup < 1, "a share of the steps, from 0 to below 1"),
                 ("augment_scale", 0 < lo <= hi <= 1, "(LO, HI) with 0 < LO <= HI <= 1"),
                 ("grayscale", 0 <= self.grayscale <= 1, "a share, from 0 to 1"),
                 ("jitter", 0 <= self.jitter < 1, "from 0 to below 1 (factors 1 +- jitter)"),
                 ("rotate", self.rotate >= 0, "degrees either way, >= 0"),
                 ("balance", self.balance >= 0, ">= 0 (0: as they come, 1: bands equally)"),
                 ("distill_alpha", self.distill_alpha >= 0, ">= 0")]
        rules += [(name, value is None or value >= 1, ">= 1 (or None)") for name, value in
                  (("epochs", self.epochs), ("batch_size", self.batch_size),
                   ("patience", self.patience))]
        for name, ok, rule in rules:
            if not ok:
                raise ValueError(f"{name} must be {rule}, not {getattr(self, name)}")

    def _check_init_from(self) -> None:
        """Trained parts are a ConvNeXt and a ViT, and only a hybrid has room for them."""
        if not self.init_from or set(self.init_from) - {"cnn", "vit"}:
            raise ValueError(f"init_from takes 'cnn' and/or 'vit' checkpoints, "
                             f"not {self.init_from}")
        if self.model.backbone not in hybrid.HYBRIDS:
            raise ValueError(f"starting from trained parts (init_from; --init-cnn, --init-vit) "
                             f"needs a hybrid model, not {self.model.backbone}; the hybrids: "
                             f"{', '.join(sorted(hybrid.HYBRIDS))}")

    def to_dict(self) -> dict:
        """Plain values (the model config too), as records and checkpoints store them."""
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


class KeepBestEpoch(TrackerCallback):
    """Remember the weights of the epoch with the best validation MAE and restore them.

    Early stopping and model selection look at the validation split only: the
    test split is evaluated once, after training, and never steers anything.
    """

    order = TrackerCallback.order + 1

    def __init__(self, monitor: str = "mae", patience: int | None = None):
        super().__init__(monitor=monitor, comp=np.less)
        self.patience, self.best_state, self.best_epoch = patience, None, -1
        self.epochs_run = 0  # fewer than asked for when patience stopped the run

    def after_epoch(self):
        super().after_epoch()
        self.epochs_run = self.epoch + 1
        if self.new_best:
            self.best_epoch = self.epoch
            weights = self.learn.model.state_dict()
            self.best_state = {k: v.detach().clone() for k, v in weights.items()}
        elif self.patience is not None and self.epoch - self.best_epoch >= self.patience:
            raise CancelFitException()

    def after_fit(self):
        if self.best_state is not None:
            self.learn.model.load_state_dict(self.best_state)


class EpochLine(Callback):
    """One plain line per epoch, for logs and terminals where a progress bar is noise."""

    order = 60  # after the Recorder has written the epoch's values

    def after_epoch(self):
        names = self.recorder.metric_names[1:-1]  # drop "epoch" and "time"
        values = "  ".join(f"{n} {v:.3f}" for n, v in zip(names, self.recorder.values[-1]))
        print(f"epoch {self.epoch + 1}/{self.n_epoch}  {values}", flush=True)


class _SmoothLossHere(AvgSmoothLoss):
    """fastai's smoothed loss, computed on the loss's own device."""

    def accumulate(self, learn):
        self.count += 1
        loss = learn.loss.detach().float().mean()
        if self.count == 1:  # start from 0 on the loss's device: no copy from the host
            self.val = torch.zeros((), device=loss.device)
        self.val = torch.lerp(loss, self.val, self.beta)


class _AvgLossHere(AvgLoss):
    """fastai's validation loss (a mean over samples), summed on the loss's own device."""

    def accumulate(self, learn):
        bs = find_bs(learn.yb)
        self.total = self.total + learn.loss.detach().float().mean() * bs  # 0. + tensor: a tensor
        self.count += bs


class LossesOnDevice(Callback):
    """Keep the training and validation losses on the GPU: no CPU round trip per batch.

    fastai's ``AvgSmoothLoss`` (training) and ``AvgLoss`` (validation) copy every
    batch's loss to the CPU, and that copy makes the CPU wait until the GPU has
    finished the batch before it may queue the next one: on a fast GPU and a
    small model, the GPU then idles while Python prepares each batch. This
    callback gives the ``Recorder`` both losses kept on the device (the same
    numbers; the metrics of :func:`metrics.fastai_metrics` stay there too), and
    brings the epoch's per-batch training values to the CPU once, at its end
    (where fastai syncs anyway), as floats in ``recorder.losses``; so do a fit's
    end and a cancelled fit.
    """

    order = Recorder.order - 1  # before the Recorder's before_fit resets the smoother

    def before_fit(self):
        recorder = getattr(self.learn, "recorder", None)
        if recorder is not None:  # vars(): fastai warns on any callback attribute the learner has
            vars(recorder)["smooth_loss"] = _SmoothLossHere(recorder.smooth_loss.beta)
            vars(recorder)["loss"] = _AvgLossHere()

    def after_epoch(self):
        self._losses_to_floats()

    def after_fit(self):
        self._losses_to_floats()

    def _losses_to_floats(self):
        history = getattr(getattr(self.learn, "recorder", None), "losses", None)
        new = [i for i, v in enumerate(history or []) if torch.is_tensor(v)]
        if new:  # the tensors are the latest values, after the floats: one copy for all
            floats = torch.stack([history[i] for i in new]).float().cpu().tolist()
            for i, v in zip(new, floats):
                history[i] = v


class _LossText:
    """A loss tensor that becomes text only when a progress bar draws it."""

    def __init__(self, loss: torch.Tensor):
        self.loss = loss

    def __str__(self) -> str:
        return f"{float(self.loss):.4f}"  # the one copy to the host, when the bar redraws

    def __len__(self) -> int:  # fastprogress 1.0 asks len() whether there is a comment:
        return 1  # there is, and answering must not copy the loss to the host


class ProgressWithoutSync(ProgressCallback):
    """fastai's live progress bar, without a CPU round trip per batch.

    fastai writes ``smooth_loss.item()`` into the bar's comment after every
    batch, a copy that makes the CPU wait for the GPU each step, in exactly the
    setting where the bar shows: a notebook. The bar redraws at most five
    times a second, so the loss is read from the device only then.
    """

    name = "progress"  # what fastai's own callbacks look for (ShowGraphCallback)

    def after_batch(self):
        if hasattr(self, "smooth_loss"):
            self.pbar.comment = _LossText(self.smooth_loss)
        self.pbar.update(self.iter + 1)


class AgeLearner(Learner):
    """fastai's ``Learner``, whose ``no_bar`` puts back the bar it took away.

    fastai's ``no_bar`` re-adds a fresh ``ProgressCallback``: after the first
    prediction (which hides the bar) the learner would show fastai's bar again,
    with its copy to the host per batch, instead of :class:`ProgressWithoutSync`.
    """

    @contextlib.contextmanager
    def no_bar(self):
        bar = getattr(self, "progress", None)
        if bar is not None:
            self.remove_cb(bar)
        try:
            yield self
        finally:
            if bar is not None:
                self.add_cb(bar)


def _interactive() -> bool:
    """True in a notebook or a terminal, where fastai's live progress bar helps."""
    import sys

    return "ipykernel" in sys.modules or sys.stdout.isatty()


def make_learner(dls: DataLoaders, model: models.AgeModel, loss: str, lr: float = 1e-3,
                 weight_decay: float = 0.05, mixed_precision: bool = True,
                 **loss_kwargs) -> Learner:
    """A fastai ``Learner`` for an age model: AdamW, per-sample MAE and CS@5 metrics."""
    if losses.loss_output_kind(loss) != "regression" and not hasattr(model.head, "min_age"):
        loss_kwargs.setdefault("min_age", (model.config or models.ModelConfig()).min_age)
    loss_func = losses.get_loss(loss, head=model.head, **loss_kwargs)  # checks loss and head
    on_cuda = dls.device is not None and torch.device(dls.device).type == "cuda"  # "cpu" too
    opt = partial(OptimWrapper, opt=torch.optim.AdamW, weight_decay=weight_decay,
                  **({"fused": True} if on_cuda else {}))
    learn = AgeLearner(dls, model, loss_func=loss_func, opt_func=opt, lr=lr,
                       metrics=metrics.fastai_metrics(model.head.to_age), wd=None,
                       cbs=[LossesOnDevice()],
                       path=settings.data_home() / "fastai")  # lr_find's scratch files go there
    if any(isinstance(cb, ProgressCallback) for cb in learn.cbs):  # same bar, no sync
        learn.remove_cb(ProgressCallback).add_cb(ProgressWithoutSync())
    if mixed_precision and on_cuda:
        learn = learn.to_bf16() if torch.cuda.is_bf16_supported() else learn.to_fp16()
    return learn


def speed_up(model: models.AgeModel, device: torch.device, channels_last: bool = True,
             compile: bool = False) -> torch.nn.Module:
    """The GPU switches that do not change the maths: NHWC layout and ``torch.compile``.

    Both are skipped on the CPU, where they cost more than they save at course sizes.
    """
    if device.type != "cuda":
        return model
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()  # in place: state_dict keys and checkpoints stay unchanged
    return model


def fit(learn: Learner, epochs: int, lr: float, schedule: str = "one_cycle",
        warmup: float = 0.1, cbs: list | None = None) -> None:
    """Train with one of the course's schedules, stepped per batch."""
    cbs = list(cbs or [])
    if schedule == "one_cycle":
        learn.fit_one_cycle(epochs, lr, cbs=cbs)
    elif schedule == "warmup_cosine":  # the hybrid paper's: linear warmup, cosine to zero
        sched = combine_scheds([warmup, 1 - warmup], [SchedLin(lr * 1e-3, lr), SchedCos(lr, 0.0)])
        learn.fit(epochs, lr, cbs=cbs + [ParamScheduler({"lr": sched})])
    else:
        learn.fit(epochs, lr, cbs=cbs)


class FlipInputs(Callback):
    """Mirror every input batch left to right: the second view of flip test-time averaging."""

    def before_batch(self):
        self.learn.xb = tuple(x.flip(-1) for x in self.learn.xb)


def raw_outputs(learn: Learner, dl: FaceLoader | DataLoader,
                cbs: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's raw outputs (logits for class/ordinal heads) and the true ages, in order."""
    # get_preds runs before_fit, which empties the Recorder: keep the training history
    recorder = getattr(learn, "recorder", None)
    history = {k: getattr(recorder, k) for k in ("lrs", "iters", "losses", "values")
               if hasattr(recorder, k)}
    try:
        with learn.no_bar():
            return learn.get_preds(dl=dl, act=lambda x: x, cbs=cbs)
    finally:
        for k, v in history.items():
            setattr(recorder, k, v)


def predict_ages(learn: Learner, dl: FaceLoader | DataLoader,
                 flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true ages for every sample of ``dl``, in order (for a bare model on
    an array of images, see :func:`agelib.inference.predict_ages`).

    ``flip`` averages each face's age with that of its mirror image (flip
    test-time augmentation): aligned faces are nearly symmetric, and two views
    cancel a little of each prediction's noise.
    """
    out, targets = raw_outputs(learn, dl)
    ages = learn.model.head.to_age(out).float()
    if flip:
        mirrored, _ = raw_outputs(learn, dl, cbs=[FlipInputs()])
        ages = (ages + learn.model.head.to_age(mirrored).float()) / 2
    return ages.numpy(), targets.float().numpy()


def start_at_mean(model: models.AgeModel, train_ages: torch.Tensor) -> None:
    """Set a regression head's output bias to the mean training age.

    A fresh head outputs about 0 years; starting at the mean spares the first
    epochs the job of learning one constant and keeps early gradients sane.
    """
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias.fill_(float(train_ages.float().mean()))


@dataclass
class TrainResult:
    """What a run leaves behind: its record, its test predictions and the trained model."""

    learn: Learner | None  # None when the model came from a cached checkpoint
    record: dict
    checkpoint: Path | None
    test_pred: np.ndarray
    test_true: np.ndarray
    model: models.AgeModel | None = None
    test_sha1: list[str] | None = None  # which face each test prediction is for


def train_age_model(config: TrainConfig, faces: data_.Faces | None = None,
                    mode: settings.RunMode | None = None,
                    checkpoint: str | Path | None = None, save_record: bool = True,
                    device: torch.device | str | None = None, verbose: bool = True,
                    init: Callable[[models.AgeModel], None] | None = None,
                    cbs: list | None = None, cache: bool = False) -> TrainResult:
    """Train, select on validation, test once, save a checkpoint and a run record.

    ``init(model)`` runs on the fresh model before training (e.g. initialising a
    hybrid from trained parts); ``cbs`` are extra fastai callbacks (e.g. distillation).
    ``cache=True`` keeps the model where :func:`load_or_train` looks, so a later
    chapter asking for the same settings reuses it instead of training again. It
    refuses ``init`` and ``cbs``: they change the model but not the settings, so the
    cache would hand this model to a chapter that asks for the plain one.
    """
    if cache and (init is not None or cbs):
        raise ValueError("cache=True keeps the model under its settings, but init= and cbs= "
                         "change it without changing them: a later chapter asking for these "
                         "settings would get this model. Drop cache=True (and give the run its "
                         "own variant= so its record says what changed).")
    mode = mode or settings.run_mode()
    _resolved(config, mode)  # in place, so records say what ran
    device = torch.device(device) if device is not None else settings.get_device()  # "cpu" too
    settings.seed_everything(config.seed)
    faces = faces if faces is not None else data_.load_faces(verbose=verbose)
    if cache and checkpoint is None:
        checkpoint = cached_checkpoint(config, faces, mode)
    split = faces.split(config.split_seed)
    # the smoke subsets follow the split seed, so every training seed sees the same faces;
    # shuffling and augmentation follow the training seed
    dls = data_.face_dataloaders(faces, split, mode=mode, size=config.image_size,
                                 batch_size=config.batch_size, seed=config.seed,
                                 subset_seed=config.split_seed, device=device,
                                 balance=config.balance, scale=config.augment_scale,
                                 flip=config.flip, grayscale=config.grayscale,
                                 rotate=config.rotate, jitter=config.jitter)
    requested = config.to_dict()  # what was asked for: how a later run finds this one
    model = models.create_model(config.model)
    # what ran, for the record: building may switch pretrained off (offline, smoke mode) or
    # add the input normalisation pretrained weights expect; the caller's config stays as
    # asked, so asking again finds this run (load_or_train, recorded_run)
    ran = copy.copy(config)
    ran.model = model.config
    if model.head.kind == "regression" and ran.model.age_range is None:
        start_at_mean(model, dls.train.dataset.ages)
    init_report = _start_from_parts(model, config.init_from, verbose) if config.init_from else None
    if init is not None:
        init(model)
    model = speed_up(model, device, config.channels_last, config.compile)
    learn = make_learner(dls, model, config.loss, config.lr, config.weight_decay,
                         config.mixed_precision)
    keep = KeepBestEpoch(patience=config.patience)
    live = verbose and _interactive()  # headless (logs, CI): one text line per epoch instead
    run_cbs = _run_callbacks(config, keep, cbs, epoch_lines=verbose and not live)
    seconds = _timed_fit(learn, config, run_cbs, live)
    valid_pred, valid_true = predict_ages(learn, dls.valid)
    test_dl = dls[2]
    test_pred, test_true = predict_ages(learn, test_dl)
    flip_pred, _ = predict_ages(learn, test_dl, flip=True)
    record = records.make_record(
        config=ran, faces=faces, mode=mode, device=device, epochs=config.epochs,
        image_size=config.image_size, batch_size=config.batch_size, best_epoch=keep.best_epoch,
        epochs_run=keep.epochs_run, seconds=seconds,
        params=models.count_parameters(model), n_train=len(dls.train.dataset),
        valid=(valid_pred, valid_true), test=(test_pred, test_true), test_flip=flip_pred)
    if requested != record["config"]:
        record["requested_config"] = requested  # recorded_run matches on this
    if init_report is not None:
        record["init_report"] = init_report  # what the three-stage start did and did not set
    test_sha1 = test_dl.dataset.table["sha1"].tolist()
    predictions = records.predictions_table(test_sha1, test_true, test_pred)
    path = None
    if checkpoint is not None:  # the test predictions travel with the weights, full keys
        test = {"sha1": test_sha1, "age": test_true.tolist(), "pred": test_pred.tolist()}
        path = checkpoints.save_checkpoint(model, checkpoint, train_config=ran.to_dict(),
                                           record=record, extra={"test": test})
    if save_record:
        records.save_record(record, predictions=predictions)
    return TrainResult(learn, record, path, test_pred, test_true, learn.model.eval(), test_sha1)


def _start_from_parts(model: models.AgeModel, init_from: dict, verbose: bool) -> dict:
    """Stage 3 of the hybrid recipe: copy the trained parts in, and report what they set.

    The run record keeps the report, so a reader sees which tensors came from the parts,
    which were resized to another grid, and which backbone parts (bridge, fusion,
    cross-attention) started from random weights all the same.
    """
    done = hybrid.init_from_parts(model, **{k: find_checkpoint(v) for k, v in init_from.items()})
    backbone_fresh = sorted(k for k in done["left_at_init"] if k.startswith("backbone."))
    report = {"copied": len(done["copied"]), "resized": sorted(done["resized"]),
              "backbone_left_at_init": backbone_fresh}  # the head always starts fresh
    if verbose:
        print(f"init from parts: {report['copied']} tensors copied; resized: "
              f"{report['resized'] or 'none'}; backbone left at init: "
              f"{backbone_fresh or 'none'}")
    return report


def _run_callbacks(config: TrainConfig, keep: KeepBestEpoch, extra: list | None,
                   epoch_lines: bool) -> list:
    """The run's fastai callbacks: the best-epoch keeper first, then the caller's, then the
    teacher that ``config.distill_from`` names and the per-epoch text line."""
    cbs = [keep] + list(extra or [])
    if config.distill_from:
        cbs.append(distill.DistillFromTeacher(find_checkpoint(config.distill_from),
                                              config.distill_alpha, flip=config.distill_flip))
    if epoch_lines:
        cbs.append(EpochLine())
    return cbs


def _timed_fit(learn: Learner, config: TrainConfig, cbs: list, live: bool) -> float:
    """Fit as ``config`` says and return the seconds it took.

    Unless ``live``, fastai's progress bar and results table are switched off: in a log
    they are noise (:class:`EpochLine` prints one line per epoch there instead).
    """
    start = time.perf_counter()
    with contextlib.ExitStack() as quiet:
        if not live:
            quiet.enter_context(learn.no_bar())
            quiet.enter_context(learn.no_logging())
        fit(learn, config.epochs, config.lr, config.schedule, config.warmup, cbs=cbs)
    return time.perf_counter() - start


def _resolved(config: TrainConfig, mode: settings.RunMode) -> TrainConfig:
    """``config`` itself, its unset sizes filled in from the run mode, as the run records them.

    In place: the caller's config then says what ran (how many epochs, at which size).
    """
    config.epochs = config.epochs or mode.epochs
    config.image_size = config.image_size or mode.image_size
    config.batch_size = config.batch_size or mode.batch_size
    config.model.img_size = config.image_size  # ViTs and hybrids are built for the run's size
    return config


def cached_checkpoint(config: TrainConfig, faces: data_.Faces, mode: settings.RunMode) -> Path:
    """Where :func:`load_or_train` keeps the model of this config, mode and data."""
    settings_ = {k: v for k, v in _resolved(config, mode).to_dict().items()
                 if k not in ("tag", "variant")}  # labels, not settings: chapters share models
    key = json.dumps({"config": settings_, "mode": mode.name, "data": faces.fingerprint,
                      "labels": faces.labels_fingerprint,  # relabelled files: another model
                      "source": faces.name},  # the same faces as a pack are other pixels
                     sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    m = config.model
    name = f"{m.backbone}-{m.head}-{config.loss}-{mode.name}-{digest}.pt"
    return settings.data_home() / "checkpoints" / name


def note_reuse(record: dict) -> None:
    """Tell a course run (if this is one) that the run of ``record`` was reused, not trained
    again: the chapter's time is then not what a learner's first run of it takes."""
    if log := os.environ.get(settings.REUSE_LOG):
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{record.get('date') or ''}\n")


def recorded_run(config: TrainConfig, faces: data_.Faces, mode: settings.RunMode | None = None,
                 device: torch.device | str | None = None) -> dict | None:
    """The latest run record of exactly this run, or None if it was never recorded.

    "Exactly" means the same settings (labels included), mode, data and device.
    A long grid of runs (chapter 08's ablations) uses it to resume where an
    interrupted session stopped: its tables are made from the records, so a run
    that was recorded need not train again. Unlike :func:`load_or_train` it needs
    no checkpoint, only the record, which is what survives a GPU session.
    """
    mode = mode or settings.run_mode()
    wanted = _config_key(_resolved(copy.deepcopy(config), mode).to_dict())
    here = records.device_name(torch.device(device) if device else settings.get_device())
    table = records.load_records()
    if table.empty:
        return None
    same = table[(table["mode"] == mode.name) & (table["data"] == faces.name)
                 & (table["data_fingerprint"] == faces.fingerprint) & (table["device"] == here)]
    for _, row in same.iloc[::-1].iterrows():  # newest first
        asked = row.get("requested_config")  # set when building changed the model config
        asked = asked if isinstance(asked, dict) else row.get("config")
        if isinstance(asked, dict) and _config_key(asked) == wanted:
            note_reuse(row.to_dict())  # a caller that finds the run need not train it
            return row.to_dict()
    return None


def _config_key(config: dict) -> str:
    """A config as comparable text (JSON turns tuples into lists, as records store them)."""
    return json.dumps(config, sort_keys=True, default=str)


def load_or_train(config: TrainConfig, faces: data_.Faces | None = None,
                  mode: settings.RunMode | None = None, verbose: bool = False,
                  device: torch.device | str | None = None) -> TrainResult:
    """The trained model of ``config``: loaded if this exact run was done before, else trained.

    Later chapters (Grad-CAM, errors, the demo) reuse the models of earlier ones
    without paying for training again. The cache key is the whole config, the run
    mode and the data's fingerprint, so a changed setting trains a new model;
    delete ``<data home>/checkpoints/`` to start over. A cache hit writes no new
    run record: the run was recorded when it was trained.
    """
    mode = mode or settings.run_mode()
    faces = faces if faces is not None else data_.load_faces(verbose=verbose)
    path = cached_checkpoint(config, faces, mode)
    if path.is_file():
        try:
            model, payload = checkpoints.load_checkpoint(path)
        except ValueError as err:  # written by an older agelib: train again
            warnings.warn(f"retraining: {err}")
        else:
            test = payload.get("extra", {}).get("test", {})
            note_reuse(payload["record"])
            device = torch.device(device) if device is not None else settings.get_device()
            return TrainResult(None, payload["record"], path,
                               np.asarray(test.get("pred", []), dtype=np.float32),
                               np.asarray(test.get("age", []), dtype=np.float32),
                               model.to(device).eval(), list(test.get("sha1", [])))
    return train_age_model(config, faces=faces, mode=mode, checkpoint=path, verbose=verbose,
                           device=device)
