"""Grad-CAM helpers: the right layer per architecture, token grids at any size, the age's sign."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agelib import interpret, models


def build(config: models.ModelConfig, seed: int = 0) -> models.AgeModel:
    torch.manual_seed(seed)
    return models.create_model(config).eval()


def faces(n: int, h: int, w: int | None = None, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w or h, 3), dtype=np.uint8)


def vit(img_size, **args) -> models.ModelConfig:
    """A 2-block ViT-Tiny: the same token layout as the full one, a fraction of the work."""
    return models.ModelConfig("vit_tiny_patch16_224", img_size=img_size,
                              backbone_args={"depth": 2, **args})


# --------------------------------------------------------------------------- shapes and range
@pytest.mark.parametrize("config", [
    models.ModelConfig("resnet18", img_size=32),
    models.ModelConfig("resnet18", img_size=64),
    vit(32), vit(64), vit(96),
    models.named_config("hybrid_atto", img_size=64),
    models.named_config("hybrid_atto", img_size=96),
    models.named_config("hybrid_atto_project", img_size=64),
], ids=lambda c: f"{c.backbone}-{c.img_size}")
def test_maps_have_the_input_size_and_lie_in_0_1(config):
    model = build(config)
    maps = interpret.age_cam(model, faces(2, config.img_size))
    assert maps.shape == (2, config.img_size, config.img_size)
    assert maps.dtype == np.float32 and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1


def test_architectures_and_their_layers():
    cnn = build(models.ModelConfig("resnet18", img_size=32))
    assert interpret.architecture(cnn) == "cnn"
    assert interpret.cam_target_layers(cnn) == [cnn.backbone.layer4]
    assert interpret.token_reshape(cnn) is None
    convnext = build(models.ModelConfig("convnext_atto", img_size=32))
    assert interpret.cam_target_layers(convnext) == [convnext.backbone.stages[-1]]
    v = build(vit(32))
    assert interpret.architecture(v) == "vit"
    assert interpret.cam_target_layers(v) == [v.backbone.blocks[-1].norm1]
    assert interpret.cam_target_layers(v, vit_block=0) == [v.backbone.blocks[0].norm1]


@pytest.mark.parametrize("name", ["hybrid_atto", "hybrid_atto_project"])
def test_hybrid_target_is_the_convnext_stage_4_map(name):
    model = build(models.named_config(name, img_size=64))
    assert interpret.architecture(model) == "hybrid"
    assert interpret.token_reshape(model) is None  # already a (B, C, h, w) map
    [layer] = interpret.cam_target_layers(model)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fmap = model.backbone.cnn_map(x)
    handle.remove()
    assert torch.equal(seen[0], fmap) and fmap.shape[-2:] == (2, 2)


# --------------------------------------------------------------------------- tokens -> grid
def test_tokens_to_grid_drops_prefix_tokens_and_keeps_row_order():
    prefix, h, w = 5, 3, 4  # a class token and 4 registers, on a non-square grid
    tokens = torch.arange(prefix + h * w, dtype=torch.float32).view(1, -1, 1).repeat(2, 1, 7)
    grid = interpret.tokens_to_grid(tokens, (h, w), num_prefix_tokens=prefix)
    assert grid.shape == (2, 7, h, w)
    for r in range(h):
        for c in range(w):
            assert grid[1, 6, r, c] == prefix + r * w + c
    with pytest.raises(ValueError, match="do not fill a 4x4 grid"):
        interpret.tokens_to_grid(tokens, (4, 4), num_prefix_tokens=prefix)


@pytest.mark.parametrize("size, reg_tokens, grid", [(64, 0, 4), (96, 0, 6), (96, 4, 6),
                                                    (128, 4, 8)])
def test_vit_reshape_uses_the_models_own_grid_and_prefix(size, reg_tokens, grid):
    model = build(vit(size, **({"reg_tokens": reg_tokens} if reg_tokens else {})))
    assert model.backbone.num_prefix_tokens == 1 + reg_tokens
    [layer] = interpret.cam_target_layers(model)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    handle.remove()
    tokens = seen[0]  # (1, prefix + grid * grid, 192)
    mapped = interpret.token_reshape(model)(tokens)
    assert mapped.shape == (1, 192, grid, grid)
    r, c = grid - 1, 1  # a cell away from the first row: catches a wrong prefix or row length
    assert torch.equal(mapped[0, :, r, c], tokens[0, 1 + reg_tokens + r * grid + c])


def test_vit_on_a_non_square_input():
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=(32, 64), depth=1)
    model = models.AgeModel(backbone, models.RegressionHead(backbone.num_features)).eval()
    assert interpret.token_grid(model, 8) == (2, 4)  # the patch grid, not a guessed square
    assert interpret.age_cam(model, faces(1, 32, 64)).shape == (1, 32, 64)


# --------------------------------------------------------------------------- what is explained
class Halves(nn.Module):
    """A two-channel 'CNN' at full resolution: channel 0 is each pixel's brightness, channel 1
    its darkness, and the pooled features are their means. Any head on top whose age rises
    with feature 0 must make Grad-CAM light up the bright pixels; with feature 1, the dark."""

    num_features = 2

    def __init__(self):
        super().__init__()
        self.feature_info = [{"module": "conv", "num_chs": 2, "reduction": 1}]
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0] * 3, [-1.0] * 3]).view(2, 3, 1, 1) / 3)
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward_features(self, x):
        return self.conv(x)  # (B, 2, H, W)

    def forward_head(self, f, pre_logits=True):
        return f.mean((2, 3))  # (B, 2)


def halves_model(head_kind: str, feature: int, sign: float = 1.0, decode="expected"):
    """An AgeModel on :class:`Halves` whose age moves with ``sign`` times feature ``feature``."""
    config = models.ModelConfig(head=head_kind, num_classes=6, decode=decode)
    head = models.create_head(config, 2)
    last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        # regression/coral: one output; classification: logit k grows with k; corn: every
        # conditional probability grows - in every case the decoded age rises with the feature
        last.weight[:, feature] = sign * torch.arange(1.0, last.out_features + 1)
    return models.AgeModel(Halves(), head, config).eval()


LEFT_BRIGHT = torch.zeros(2, 3, 16, 16)
LEFT_BRIGHT[..., :8] = 1.0  # left half white, right half black (values as the model sees them)


def left_and_right(maps: np.ndarray) -> tuple[float, float]:
    return float(maps[..., :8].mean()), float(maps[..., 8:].max())


@pytest.mark.parametrize("head_kind, decode", [
    ("regression", "expected"), *[(h, d) for h in ("classification", "coral", "corn")
                                  for d in ("expected", "label")]])
def test_map_highlights_what_raises_the_age_for_every_head(head_kind, decode):
    brightness_ages = halves_model(head_kind, feature=0, decode=decode)
    left, right = left_and_right(interpret.age_cam(brightness_ages, LEFT_BRIGHT))
    assert left > 0.99 and right < 0.01  # the bright half made it older
    darkness_ages = halves_model(head_kind, feature=1, decode=decode)
    left, right = left_and_right(interpret.age_cam(darkness_ages, LEFT_BRIGHT))
    assert left < 0.01 and right > 0.99
    # age that *falls* with brightness: "younger" maps show the bright half instead
    falls = halves_model(head_kind, feature=0, sign=-1.0, decode=decode)
    left, right = left_and_right(interpret.age_cam(falls, LEFT_BRIGHT, younger=True))
    assert left > 0.99 and right < 0.01


def test_works_inside_no_grad_and_with_frozen_weights():
    model = halves_model("regression", feature=0)
    model.requires_grad_(False)
    with torch.no_grad():
        maps = interpret.age_cam(model, LEFT_BRIGHT)
    left, right = left_and_right(maps)
    assert left > 0.99 and right < 0.01
    assert not model.training


def manual_grad_cam(model, x, layer, reshape=None) -> torch.Tensor:
    """Grad-CAM written out: channel weights = mean gradient of the age, weighted sum, ReLU."""
    seen = []
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out))
    age = model.head.to_age(model(x))  # (B,)
    handle.remove()
    acts = reshape(seen[0]) if reshape else seen[0]  # (B, C, h, w)
    grads = torch.autograd.grad(age.sum(), seen[0])[0]
    grads = reshape(grads) if reshape else grads
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = F.relu((weights * acts).sum(1))  # (B, h, w)
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear",
                        align_corners=False)[:, 0].detach()  # (B, H, W)
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)  # then scaled to [0, 1], image by image
    return cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-7)


@pytest.mark.parametrize("config", [models.ModelConfig("resnet18", img_size=96), vit(64),
                                    models.named_config("hybrid_atto", img_size=96)],
                         ids=lambda c: c.backbone)
def test_matches_grad_cam_written_by_hand(config):
    model = build(config)
    x = torch.randn(2, 3, config.img_size, config.img_size)
    [layer] = interpret.cam_target_layers(model)
    expected = manual_grad_cam(model, x, layer, interpret.token_reshape(model))
    got = interpret.age_cam(model, x)
    assert expected.amax() > 0.5  # not a degenerate all-zero map
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("head_kind", ["classification", "coral", "corn"])
def test_every_head_on_a_real_cnn(head_kind):
    model = build(models.ModelConfig("convnext_atto", head=head_kind, num_classes=10,
                                     img_size=64))
    maps = interpret.age_cam(model, faces(2, 64))  # stage 4 is 2x2 at 64 px (1x1 at 32: flat)
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() > 0.5


def test_other_cam_methods_by_name():
    model = build(models.ModelConfig("convnext_atto", img_size=32))
    maps = interpret.age_cam(model, faces(1, 32), method="hirescam")
    assert maps.shape == (1, 32, 32)
    with pytest.raises(ValueError, match="unknown CAM method 'gradcam2'.*'gradcam'"):
        interpret.age_cam(model, faces(1, 32), method="gradcam2")


# --------------------------------------------------------------------------- clear errors
def test_unknown_architecture_and_wrong_inputs_say_what_to_do():
    class Plain(nn.Module):
        num_features = 3

        def forward_features(self, x):
            return x

        def forward_head(self, f, pre_logits=True):
            return f.mean((2, 3))

    odd = models.AgeModel(Plain(), models.RegressionHead(3))
    with pytest.raises(ValueError, match="no Grad-CAM recipe for a Plain backbone.*target layers"):
        interpret.cam_target_layers(odd)
    with pytest.raises(TypeError, match="expected an agelib AgeModel"):
        interpret.cam_target_layers(nn.Linear(2, 2))
    model = build(models.ModelConfig("resnet18", img_size=32))
    with pytest.raises(ValueError, match=r"uint8 faces must be \(N, H, W, 3\)"):
        interpret.age_cam(model, faces(1, 32)[0])
    with pytest.raises(ValueError, match="normalised float batch"):
        interpret.age_cam(model, torch.zeros(1, 32, 32, 3))


# --------------------------------------------------------------------------- groups, pictures
def test_band_means_average_per_age_band_in_age_order():
    maps = np.stack([np.full((2, 2), v, dtype=np.float32) for v in (0.0, 1.0, 0.5, 0.25)])
    means = interpret.band_means(maps, [70, 5, 8, 71], edges=(0, 13, 30, 117))
    assert list(means) == ["0-12", "30+"]  # empty band 13-29 left out
    np.testing.assert_allclose(means["0-12"], 0.75)
    np.testing.assert_allclose(means["30+"], 0.125)
    with pytest.raises(ValueError, match="4 values but 3 ages"):
        interpret.band_means(maps, [1, 2, 3])


def test_overlay_colours_the_hot_place_red_at_the_face_size():
    face = np.full((32, 32, 3), 128, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[:2, :2] = 1.0  # hot top-left quarter, on a map smaller than the face
    out = interpret.overlay(face, cam)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    hot, cold = out[2, 2].astype(int), out[-3, -3].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where high, blue where low
    with pytest.raises(ValueError, match="one face"):
        interpret.overlay(face, np.zeros((2, 4, 4)))


def test_cam_figure_has_a_row_per_model():
    images = faces(3, 16)
    maps = {"cnn": np.random.rand(3, 16, 16), "vit": np.random.rand(3, 16, 16)}
    fig = interpret.cam_figure(images, maps, titles=["a", "b", "c"])
    assert len(fig.axes) == 10  # nine panels and the maps' colour scale
    assert [fig.axes[i].get_ylabel() for i in (0, 3, 6)] == ["face", "cnn", "vit"]
    assert "Grad-CAM" in fig.axes[9].get_ylabel()  # the scale says what the colours mean
    plt.close(fig)
    bare = interpret.cam_figure(images, {})  # faces alone: no scale to show
    assert len(bare.axes) == 3
    plt.close(bare)
    with pytest.raises(ValueError, match="3 faces but 2 maps for 'vit'"):
        interpret.cam_figure(images, {"vit": maps["vit"][:2]})


def test_cam_figure_refuses_titles_that_do_not_match_the_faces():
    """Catches a fourth title for three faces drawn over the first model's first map, and a
    missing one failing with an IndexError that names neither titles nor faces."""
    images = faces(3, 16)
    maps = {"cnn": np.random.rand(3, 16, 16)}
    for titles in (["a", "b", "c", "d"], ["a", "b"]):
        with pytest.raises(ValueError, match=f"3 faces but {len(titles)} titles"):
            interpret.cam_figure(images, maps, titles=titles)
    plt.close("all")


def test_float_faces_draw_as_uint8_faces_do():
    images = faces(2, 16)
    maps = {"cnn": np.random.default_rng(0).random((2, 16, 16))}
    drawn = []
    for version in (images, images / 255.0):  # floats in [0, 1]: the same picture
        fig = interpret.cam_figure(version, maps)
        drawn.append([ax.images[0].get_array() for ax in fig.axes[:4]])
        plt.close(fig)
    for uint8, floats in zip(*drawn):
        np.testing.assert_array_equal(np.asarray(uint8), np.asarray(floats))


def test_as_batch_takes_torch_uint8_faces_and_float64_batches():
    images = faces(2, 16)
    expected = interpret.as_batch(images)
    torch.testing.assert_close(interpret.as_batch(torch.from_numpy(images)), expected)
    assert interpret.as_batch(expected.double().numpy()).dtype == torch.float32


@pytest.mark.parametrize("config, grid", [
    (models.ModelConfig("resnet18", img_size=96), (3, 3)),
    (vit(96, reg_tokens=4), (6, 6)),
    (models.named_config("hybrid_atto", img_size=96), (3, 3)),
], ids=["resnet18", "vit-registers", "hybrid_atto"])
def test_cam_resolution_is_the_target_maps_grid(config, grid):
    model = build(config).train()
    assert interpret.cam_resolution(model, 96) == grid
    assert model.training  # left as it was


def test_region_focus_compares_heat_with_area():
    maps = np.zeros((2, 20, 20))
    maps[:, 4:8, 5:15] = 1.0  # inside the eye band of FACE_REGIONS only
    focus = interpret.region_focus(maps)
    assert focus["eyes"] > 1 and focus["forehead"] == focus["mouth and chin"] == 0
    mask = interpret.region_mask((20, 20), interpret.FACE_REGIONS["crow's feet"])
    assert mask[6, 2] and mask[6, 17] and not mask[6, 10]  # both sides, not the middle
    assert interpret.region_focus(np.zeros((4, 4)), {"all": [(0, 1, 0, 1)]}) == {"all": 0.0}
    with pytest.raises(ValueError, match=r"give maps \(N, H, W\)"):
        interpret.region_focus(np.zeros(4))
    # a map too coarse for a narrow band: said, not a NaN (0/0) in the table
    with pytest.raises(ValueError, match="region 'eyes' covers no pixel of a 3x3 map"):
        interpret.region_focus(np.ones((3, 3)))


@pytest.mark.parametrize("head, smooth", [("classification", "expected_age"),
                                          ("coral", "coral_expected_age"),
                                          ("corn", "corn_expected_age")])
def test_a_head_that_decodes_by_label_is_explained_by_its_own_expected_age(head, smooth):
    from agelib import losses

    model = models.create_model(models.ModelConfig("resnet18", head=head, decode="label",
                                                   min_age=1, img_size=32))
    logits = torch.randn(3, 117 if head == "classification" else 116)  # 117 ages, 116 thresholds
    expected = getattr(losses, smooth)(logits, 1)
    torch.testing.assert_close(interpret.differentiable_age(model.head, logits), expected)


def test_as_batch_normalises_faces_as_evaluation_does():
    """Catches Grad-CAM fed raw [0, 1] pixels instead of the normalised faces a model was
    evaluated on (the map would explain another prediction)."""
    from agelib.data.loaders import BatchTransform

    images = faces(2, 16)
    expected = BatchTransform(16, train=False)(torch.from_numpy(images).permute(0, 3, 1, 2))
    torch.testing.assert_close(interpret.as_batch(images), expected)


def test_age_cam_gives_the_model_back_in_the_mode_it_was_in():
    """Catches a model left in eval mode after Grad-CAM (pytorch-grad-cam turns it to eval)."""
    model = build(models.ModelConfig("resnet18", img_size=32)).train()
    interpret.age_cam(model, faces(1, 32))
    assert model.training


def test_overlay_of_a_wide_face_keeps_its_shape_and_the_hot_side():
    """Catches a map resized with height and width swapped for a face that is not square."""
    face = np.full((24, 40, 3), 128, np.uint8)
    cam = np.zeros((3, 5), np.float32)
    cam[:, 3:] = 1.0  # hot on the right
    out = interpret.overlay(face, cam)
    assert out.shape == (24, 40, 3)
    right, left = out[12, -2].astype(int), out[12, 1].astype(int)
    assert right[0] > right[2] and left[2] > left[0]


def test_band_means_are_pixelwise_means_of_each_bands_maps():
    """Catches a band's mean map taken as the median of its maps, or collapsed to one number."""
    maps = np.zeros((3, 2, 2), dtype=np.float32)
    maps[0, 0, 0], maps[2, 1, 1] = 3.0, 6.0  # three faces of one band, heat in two corners
    means = interpret.band_means(maps, [5, 8, 10], edges=(0, 13, 117))
    assert list(means) == ["0-12"]
    np.testing.assert_allclose(means["0-12"], [[1.0, 0.0], [0.0, 2.0]])  # the median is all 0


def test_region_mask_of_a_map_that_is_not_square():
    """Catches box fractions scaled by the height for the columns too (or by the width for
    the rows): on a map that is not square the regions land in the wrong place."""
    mask = interpret.region_mask((10, 40), [(0.0, 0.5, 0.5, 1.0)])  # top half, right half
    assert mask.sum() == 5 * 20 and mask[:5, 20:].all()


def test_every_face_keeps_its_own_map_whatever_the_batch_size():
    """Catches faces dropped or shifted between batches: with more faces than batch_size,
    each face must still get its own map, the one it gets in a single batch."""
    model = halves_model("regression", feature=0)
    x = torch.zeros(3, 3, 16, 16)
    x[0, ..., :8] = x[1, ..., 8:] = x[2, :, :8] = 1.0  # bright left, right, top
    whole = interpret.age_cam(model, x)
    for batch_size in (1, 2):
        np.testing.assert_allclose(interpret.age_cam(model, x, batch_size=batch_size), whole,
                                   atol=1e-6)
    assert whole[0, :, :8].min() > 0.99 and whole[1, :, 8:].min() > 0.99
    assert whole[2, :8].min() > 0.99 and whole[2, 8:].max() < 0.01


def test_a_batch_size_below_one_is_an_error():
    """Catches batch_size=-1 returning no maps at all (an empty range of batches) and
    batch_size=0 failing inside range() with nothing about the argument."""
    model = halves_model("regression", feature=0)
    x = torch.zeros(3, 3, 16, 16)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size must be .* 1 or more"):
            interpret.age_cam(model, x, batch_size=bad)


def test_cam_resolution_leaves_a_training_models_statistics_alone():
    """Catches cam_resolution's probe pass run in training mode: it would pull the batch-norm
    running statistics of a model being trained towards those of a black image."""
    model = build(models.ModelConfig("resnet18", img_size=64)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert interpret.cam_resolution(model, 64) == (2, 2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
