"""Distillation: a trained model (the teacher) guides another (the student) during training.

A hybrid trained from scratch on a few thousand faces has little to go on; a
trained CNN already knows a lot about faces. Distillation adds one term to the
student's training loss: how far its predicted ages are from the teacher's on
the *same* augmented batch::

    loss = task_loss(student, true_age) + alpha * |student_age - teacher_age|

where ``teacher_age`` is the teacher's age of the face averaged with its age of
the mirror image (flip averaging: the teacher's best guess, ``flip=False`` for one view).
Only training batches change. Validation and test still score the student
against the true ages alone, so its records compare with every other run.
The logged training loss (``learn.loss``) stays the task loss for the same
reason; the term that was added is kept in ``DistillFromTeacher.last_term``.

Use it like any fastai callback::

    teacher, _ = checkpoints.load_checkpoint("convnext.pt")
    learn.fit_one_cycle(5, 1e-3, cbs=[distill.DistillFromTeacher(teacher, alpha=0.5)])
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoints, models

with warnings.catch_warnings():  # fastai's import warns about torch.jit; not ours to fix
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script")
    from fastai.callback.core import Callback
    from fastai.callback.fp16 import MixedPrecision


def distillation_loss(student_age: torch.Tensor, teacher_age: torch.Tensor) -> torch.Tensor:
    """Mean absolute gap in years between the student's and the teacher's ages, ``(B,)`` each.

    Computed in float32 whatever the batch's precision, so the term is exact.

    >>> distillation_loss(torch.tensor([20., 40.]), torch.tensor([22., 37.]))
    tensor(2.5000)
    """
    if student_age.shape != teacher_age.shape:
        raise ValueError(f"student ages {tuple(student_age.shape)} and teacher ages "
                         f"{tuple(teacher_age.shape)} must have the same shape (B,)")
    return F.l1_loss(student_age.float(), teacher_age.float())


@torch.no_grad()
def teacher_ages(teacher: models.AgeModel, x: torch.Tensor, size: int | None = None,
                 flip: bool = True) -> torch.Tensor:
    """The teacher's ages ``(B,)`` for a normalised batch ``(B, 3, H, W)``.

    ``size``: the side the teacher was trained at; the batch is resized to it
    (antialiased when shrinking) if it differs, since a model sees faces best at
    the scale it learned them. ``flip`` averages each face's age with its mirror
    image's (one forward pass of both views): the teacher's best guess, as flip
    test-time averaging is for any model (the column "flip-averaged MAE" of the
    records), at the price of one more teacher pass on a small model.
    """
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < max(x.shape[-2:]))  # (B, 3, size, size)
    if not flip:
        return teacher.head.to_age(teacher(x)).float()
    ages = teacher.head.to_age(teacher(torch.cat([x, x.flip(-1)]))).float()  # (2B,)
    return (ages[:len(x)] + ages[len(x):]) / 2


class DistillFromTeacher(Callback):
    """Add ``alpha * |student_age - teacher_age|`` to the loss of every training batch.

    ``teacher``: a trained ``AgeModel`` or the path of its checkpoint; it is kept
    frozen, in eval mode, on the student's device, and gets no gradient.
    ``teacher_size``: the image side the teacher was trained at (default: the
    ``img_size`` saved in its config; None there means "the batch's size").
    ``flip``: the teacher's age of a face is averaged with its mirror image's.
    The student may have any head whose ``to_age`` is differentiable (regression,
    or a class/ordinal head with ``decode="expected"``).
    """

    # after MixedPrecision's after_pred (the student's output is float32 again) and
    # while its autocast is still open: the teacher runs in the batch's precision
    order = MixedPrecision.order + 1
    run_valid = False  # validation and get_preds never see the teacher

    def __init__(self, teacher: models.AgeModel | str | Path, alpha: float = 0.5,
                 teacher_size: int | None = None, flip: bool = True):
        super().__init__()
        if isinstance(teacher, (str, Path)):
            teacher = checkpoints.load_checkpoint(teacher)[0]
        if not isinstance(teacher, models.AgeModel):
            raise ValueError(f"the teacher must be an agelib AgeModel or a checkpoint path, "
                             f"not {type(teacher).__name__}")
        if not alpha >= 0:  # written so that NaN, which would turn every loss NaN, fails too
            raise ValueError(f"alpha must be >= 0 (0 switches distillation off), not {alpha}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha = float(alpha)
        config_size = teacher.config.img_size if teacher.config is not None else None
        self.teacher_size = teacher_size or config_size
        self.flip = flip
        self.teacher_age: torch.Tensor | None = None
        self._last_term: torch.Tensor | None = None  # kept on the device: no sync per batch

    @property
    def last_term(self) -> float | None:
        """The distillation loss of the last training batch, in years."""
        return None if self._last_term is None else float(self._last_term)

    def before_fit(self) -> None:
        device = next(self.learn.model.parameters()).device
        self.teacher.to(device).eval()  # Learner.fit puts only the student in train mode

    def after_pred(self) -> None:
        self.teacher_age = teacher_ages(self.teacher, self.xb[0], self.teacher_size,
                                        self.flip)  # (B,)

    def after_loss(self) -> None:
        student_age = self.learn.model.head.to_age(self.pred)  # (B,)
        if not student_age.requires_grad:
            raise ValueError("the student's to_age has no gradient (decode='label'?): "
                             "distil a head with decode='expected' or a regression head")
        term = distillation_loss(student_age, self.teacher_age)
        self._last_term = term.detach()
        self.learn.loss_grad = self.loss_grad + self.alpha * term  # what backward() sees
        self.teacher_age = None
