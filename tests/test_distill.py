"""The hybrid paper's three-stage recipe (hybrid.init_from_parts) and distillation (agelib.distill).

Tiny models only: ``hybrid_atto`` (ConvNeXt-atto + 2 blocks of width 80) at 32-64 px,
and timm's ``test_resnet`` as student and teacher on the synthetic faces at 32 px.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from agelib import checkpoints, data, distill, hybrid, models, settings, training

MODE = settings.RunMode("smoke", image_size=32, n_train=32, n_valid=16, n_test=16, epochs=1,
                        batch_size=16)

with warnings.catch_warnings():  # fastai's import warns about torch.jit
    warnings.simplefilter("ignore", FutureWarning)
    from fastai.callback.core import Callback, CancelFitException


# --------------------------------------------------------------------------- three-stage init
def parts(size: int = 32, vit_size: int = 32, **vit_changes):
    """A fresh hybrid_atto and the ConvNeXt and ViT that fit it, each with random weights."""
    settings.seed_everything(0)
    config = models.named_config("hybrid_atto", img_size=size)
    cnn_cfg, vit_cfg = hybrid.part_configs(config)
    vit_cfg.img_size = vit_size
    vit_cfg.backbone_args = {**vit_cfg.backbone_args, **vit_changes}
    return (models.create_model(config).eval(), models.create_model(cnn_cfg).eval(),
            models.create_model(vit_cfg).eval())


def test_part_configs_name_the_models_the_hybrid_is_made_of():
    cnn_cfg, vit_cfg = hybrid.part_configs(models.named_config("hybrid_atto"))
    assert cnn_cfg.backbone == "convnext_atto" and cnn_cfg.backbone_args is None
    assert vit_cfg.backbone == "vit_tiny_patch16_224"
    assert vit_cfg.backbone_args == {"embed_dim": 80, "num_heads": 2, "depth": 2}
    assert (cnn_cfg.head, cnn_cfg.hidden, cnn_cfg.head_norm) == ("regression", 128, True)
    paper_vit = hybrid.part_configs(models.named_config("hybrid_paper"))[1]
    assert (paper_vit.backbone, paper_vit.backbone_args) == ("vit_tiny_patch16_224", None)


def test_init_from_parts_copies_every_backbone_tensor_and_nothing_else():
    model, cnn, vit = parts()
    report = hybrid.init_from_parts(model, cnn=cnn, vit=vit)
    keys = list(model.state_dict())
    backbone_keys = [k for k in keys if k.startswith("backbone.")]
    assert sorted(report["copied"]) == sorted(backbone_keys)
    assert report["left_at_init"] == [k for k in keys if k.startswith("head.")]
    assert report["resized"] == []  # 32 px: a 2x2 grid in both
    assert report["copied"]["backbone.cnn.stages_3.blocks.1.gamma"] == \
        "cnn:backbone.stages.3.blocks.1.gamma"
    assert report["copied"]["backbone.blocks.1.attn.qkv.weight"] == \
        "vit:backbone.blocks.1.attn.qkv.weight"
    assert "vit:backbone.patch_embed.proj.weight" in report["unused"]
    assert "cnn:backbone.head.norm.weight" in report["unused"]
    target, sources = model.state_dict(), {"cnn": cnn.state_dict(), "vit": vit.state_dict()}
    for key, name in report["copied"].items():
        part, source_key = name.split(":")
        assert torch.equal(target[key], sources[part][source_key]), key


def test_after_init_the_hybrid_sees_what_the_convnext_and_the_vit_see():
    model, cnn, vit = parts()
    hybrid.init_from_parts(model, cnn=cnn, vit=vit)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = model.backbone.cnn_map(x)  # (2, 320, 1, 1)
        assert torch.allclose(fmap, cnn.backbone.forward_features(x))  # ConvNeXt stage 4
        tokens = torch.cat([vit.backbone.cls_token.expand(2, -1, -1),
                            model.backbone.tokens(fmap)], 1) + vit.backbone.pos_embed
        expected = vit.backbone.norm(vit.backbone.blocks(tokens))  # the ViT's own encoder
        assert torch.allclose(model.forward_features(x), expected, atol=1e-6)


def test_position_embeddings_are_resized_to_the_hybrids_grid_and_a_deeper_vit_fits():
    model, cnn, vit = parts(size=64, vit_size=32, depth=3)  # 4x4 tokens from a 2x2 ViT grid
    report = hybrid.init_from_parts(model, vit=vit)
    assert report["resized"] == ["backbone.pos_embed"]
    expected = resample_abs_pos_embed(vit.backbone.pos_embed, new_size=(4, 4),
                                      num_prefix_tokens=1)
    assert torch.equal(model.backbone.pos_embed.detach(), expected.detach())
    assert "vit:backbone.blocks.2.norm1.weight" in report["unused"]  # the third block
    assert not any(k.startswith("backbone.cnn.") for k in report["copied"])  # no cnn given
    assert "backbone.cnn.stem_0.weight" in report["left_at_init"]


def test_init_from_parts_loads_checkpoints(tmp_path):
    model, cnn, vit = parts()
    report = hybrid.init_from_parts(model, cnn=checkpoints.save_checkpoint(cnn, tmp_path / "c.pt"))
    assert torch.equal(model.backbone.cnn.stem_0.weight, cnn.backbone.stem[0].weight)
    assert len(report["copied"]) == sum(k.startswith("backbone.cnn.") for k in model.state_dict())


def test_a_model_that_does_not_fit_is_refused_naming_the_ones_that_do():
    model, _, vit = parts()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wide = models.create_model(models.ModelConfig("vit_tiny_patch16_224", img_size=32,
                                                  backbone_args={"depth": 2}))
    with pytest.raises(ValueError, match=r"does not fit.*Models that fit: cnn = "
                                         r"ModelConfig\('convnext_atto'\).*'embed_dim': 80.*"
                                         r"`train --model convnext_atto`.*"
                                         r"--backbone-arg embed_dim=80"):  # for CLI users too
        hybrid.init_from_parts(model, vit=wide)
    resnet = models.create_model(models.ModelConfig("test_resnet"))
    with pytest.raises(ValueError, match="cnn: has no part 'stem_0'"):
        hybrid.init_from_parts(model, cnn=resnet, vit=vit)  # the good ViT is not copied either
    _, _, four_heads = parts(num_heads=4)  # same shapes, another attention
    with pytest.raises(ValueError, match="has 4 heads; the hybrid has 2"):
        hybrid.init_from_parts(model, vit=four_heads)
    _, _, shallow = parts(depth=1)
    with pytest.raises(ValueError, match="has 1 blocks; the hybrid needs 2"):
        hybrid.init_from_parts(model, vit=shallow)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="backbone is a ConvNeXtViT"):
        hybrid.init_from_parts(resnet, cnn=resnet)


# --------------------------------------------------------------------------- distillation
class FirstBatch(Callback):
    """After the first training batch's backward: keep the losses and gradients, then stop."""

    order = 50  # after DistillFromTeacher

    def after_backward(self):  # own names: a callback's attribute must not shadow the learner's
        self.task_loss, self.total_loss = self.learn.loss.detach(), self.learn.loss_grad.detach()
        self.batch, self.output = self.learn.xb[0].detach(), self.learn.pred.detach()
        self.grad = {n: p.grad.clone() for n, p in self.learn.model.named_parameters()}
        raise CancelFitException()


def one_batch(faces, teacher, alpha: float, **kwargs) -> tuple[FirstBatch, object]:
    """Student and batch the same for every call: only alpha (and the teacher) change."""
    settings.seed_everything(0)
    dls = data.face_dataloaders(faces, mode=MODE, size=32, batch_size=16, device="cpu")
    student = models.create_model(models.ModelConfig("test_resnet"))
    learn = training.make_learner(dls, student, "l1", lr=1e-3)
    seen, cb = FirstBatch(), distill.DistillFromTeacher(teacher, alpha, **kwargs)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, cbs=[cb, seen])
    return seen, learn, cb


@pytest.fixture(scope="module")
def teacher():
    settings.seed_everything(1)
    model = models.create_model(models.ModelConfig("test_resnet", img_size=32))
    with torch.no_grad():
        model.head.net[-1].bias.fill_(30.0)  # a teacher that says about 30 years
    return model


def test_distillation_adds_alpha_times_the_l1_gap_to_the_teacher(synthetic_faces, teacher):
    plain, _, _ = one_batch(synthetic_faces, teacher, alpha=0.0)
    seen, learn, cb = one_batch(synthetic_faces, teacher, alpha=0.5)
    assert torch.equal(seen.batch, plain.batch)  # the same augmented batch, the same student
    assert torch.equal(plain.total_loss, plain.task_loss)  # alpha 0: nothing added
    both_views = (teacher.predict_age(seen.batch) + teacher.predict_age(seen.batch.flip(-1))) / 2
    gap = distill.distillation_loss(learn.model.head.to_age(seen.output), both_views)
    assert gap > 1 and cb.last_term == pytest.approx(float(gap))
    assert seen.total_loss == pytest.approx(float(seen.task_loss + 0.5 * gap), rel=1e-5)
    assert seen.task_loss == pytest.approx(float(plain.task_loss))  # logged: the task loss only
    changed = [n for n, g in seen.grad.items() if not torch.allclose(g, plain.grad[n])]
    assert "head.net.0.weight" in changed
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training


def test_the_teacher_averages_a_face_with_its_mirror_image(synthetic_faces, teacher):
    teacher.eval()  # as DistillFromTeacher keeps it
    x = next(iter(data.face_dataloaders(synthetic_faces, mode=MODE, size=32, batch_size=8,
                                        device="cpu").train))[0]
    one_view = distill.teacher_ages(teacher, x, flip=False)
    mirror = distill.teacher_ages(teacher, x.flip(-1), flip=False)
    assert torch.allclose(one_view, teacher.predict_age(x))
    assert not torch.allclose(one_view, mirror)  # the views differ, so the average matters
    both = distill.teacher_ages(teacher, x)
    assert torch.allclose(both, (one_view + mirror) / 2, atol=1e-5)
    assert torch.allclose(distill.teacher_ages(teacher, x.flip(-1)), both, atol=1e-5)
    seen, learn, cb = one_batch(synthetic_faces, teacher, alpha=1.0, flip=False)
    assert not cb.flip and cb.last_term == pytest.approx(float(distill.distillation_loss(
        learn.model.head.to_age(seen.output), teacher.predict_age(seen.batch))), rel=1e-5)


def test_distillation_leaves_validation_alone(synthetic_faces, teacher):
    seen, learn, _ = one_batch(synthetic_faces, teacher, alpha=0.0)
    plain = learn.validate()
    with_teacher = learn.validate(cbs=[distill.DistillFromTeacher(teacher, alpha=5.0)])
    assert plain == with_teacher


def test_teacher_sees_the_batch_at_its_own_size(synthetic_faces, teacher):
    sizes = []
    hook = teacher.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[-1]))
    try:
        one_batch(synthetic_faces, teacher, alpha=1.0, teacher_size=48)
    finally:
        hook.remove()
    assert sizes == [48]


def test_bad_teachers_and_students_are_refused(synthetic_faces, teacher, tmp_path):
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        distill.DistillFromTeacher(teacher, alpha=-1)
    with pytest.raises(ValueError, match="AgeModel or a checkpoint path"):
        distill.DistillFromTeacher(teacher.backbone)
    path = checkpoints.save_checkpoint(teacher, tmp_path / "teacher.pt")
    assert distill.DistillFromTeacher(path).teacher_size == 32  # from the saved config
    settings.seed_everything(0)
    dls = data.face_dataloaders(synthetic_faces, mode=MODE, size=32, batch_size=16, device="cpu")
    student = models.create_model(models.ModelConfig("test_resnet", head="classification",
                                                     decode="label"))
    learn = training.make_learner(dls, student, "cross_entropy")
    with pytest.raises(ValueError, match="decode='expected'"), learn.no_bar(), learn.no_logging():
        learn.fit(1, cbs=[distill.DistillFromTeacher(teacher)])


# --------------------------------------------------------------------------- the teacher
def test_a_teacher_put_back_in_training_mode_is_evaluated_again_when_fit_starts():
    """Catches before_fit not calling teacher.eval(). A teacher in training mode would
    use each batch's statistics and overwrite its batch-norm running statistics."""
    torch.manual_seed(0)
    teacher = models.create_model(models.ModelConfig("test_resnet", img_size=32))
    callback = distill.DistillFromTeacher(teacher, alpha=0.5)
    teacher.train()  # e.g. trained a little more after the callback was made
    callback.learn = types.SimpleNamespace(model=torch.nn.Linear(1, 1))  # the student
    callback.before_fit()
    assert not any(m.training for m in teacher.modules())


def test_a_teacher_trained_at_a_smaller_size_sees_the_batch_antialiased():
    """Catches antialias off when shrinking. A one-pixel checkerboard at 96 px is grey
    at 32 px: antialiased, the teacher sees about 0 everywhere; without it, every third pixel,
    so +-1."""
    torch.manual_seed(0)
    teacher = models.create_model(models.ModelConfig("test_resnet", img_size=32)).eval()
    seen = []
    hook = teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    signs = torch.tensor([1.0, -1.0]).repeat(48)
    board = (signs[:, None] * signs[None, :]).expand(1, 3, 96, 96)
    try:
        distill.teacher_ages(teacher, board, size=32, flip=False)
    finally:
        hook.remove()
    assert seen[0].shape == (1, 3, 32, 32)
    assert seen[0].abs().max() < 0.1


def test_distillation_loss_refuses_ages_of_another_shape():
    """A (B, 1) teacher output minus (B,) student ages broadcasts to (B, B): a mean gap
    that trains without complaint towards the wrong answer. It must raise instead."""
    with pytest.raises(ValueError, match=r"student ages \(4,\) and teacher ages \(4, 1\)"):
        distill.distillation_loss(torch.zeros(4), torch.zeros(4, 1))


def test_distillation_loss_is_float32_for_a_bfloat16_batch():
    """The term is computed in float32 whatever the batch's precision (bf16 has 8 bits of
    mantissa: a gap near 100 years would land on a grid of half a year)."""
    student = torch.tensor([100.0, 40.0], dtype=torch.bfloat16)
    teacher = torch.tensor([99.0, 37.0], dtype=torch.bfloat16)
    gap = distill.distillation_loss(student, teacher)
    assert gap.dtype == torch.float32 and gap.item() == 2.0


def test_teacher_ages_carry_no_graph_even_from_a_teacher_that_is_not_frozen():
    """Catches teacher_ages without no_grad: the ages of a trainable model would keep its graph
    (memory), and a loss made of them would send gradients into the teacher."""
    torch.manual_seed(0)
    model = models.create_model(models.ModelConfig("test_resnet", img_size=32)).eval()
    assert all(p.requires_grad for p in model.parameters())
    for flip in (True, False):
        ages = distill.teacher_ages(model, torch.randn(2, 3, 32, 32), flip=flip)
        assert ages.shape == (2,) and not ages.requires_grad


def test_a_nan_alpha_is_refused(teacher):
    """Catches ``alpha < 0`` letting NaN through: every training loss would then be NaN."""
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        distill.DistillFromTeacher(teacher, alpha=float("nan"))
