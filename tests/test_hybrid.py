"""The ConvNeXt-ViT hybrid: the paper's size, every variant's wiring, the bridges' meaning."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import numpy as np

from agelib import hybrid, models, settings, training


def build_on_meta(config: models.ModelConfig) -> models.AgeModel:
    with torch.device("meta"):  # shapes and counts without filling 33M weights
        return models.create_model(config)


def test_paper_configuration_has_the_papers_parameter_count():
    model = build_on_meta(models.named_config("hybrid_paper"))
    assert round(models.paper_parameter_count(model) / 1e6, 2) == 33.42
    # the paper's sum, from timm's own models: all of ConvNeXt-T (its head LayerNorm too) and
    # all of ViT-Ti (its ImageNet classifier too) but the patch embedding, plus the age head
    import timm

    with torch.device("meta"):
        cnn = timm.create_model("convnext_tiny", num_classes=0)
        vit = timm.create_model("vit_tiny_patch16_224")
    head = 2 * 192 + (192 * 128 + 128) + (128 + 1)  # LayerNorm, Linear(192, 128), Linear(128, 1)
    paper = (models.count_parameters(cnn) + models.count_parameters(vit)
             - models.count_parameters(vit.patch_embed) + head)
    assert models.paper_parameter_count(model) == paper


def test_paper_head_is_layernorm_then_two_linear_layers():
    head = build_on_meta(models.named_config("hybrid_paper")).head.net
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["LayerNorm", "Linear", "Linear"]
    assert (head[1].in_features, head[1].out_features, head[2].out_features) == (192, 128, 1)
    fc256 = build_on_meta(models.named_config("hybrid_paper_fc256")).head.net
    assert fc256[1].out_features == 256


def test_paper_shapes_at_224_px():
    model = build_on_meta(models.named_config("hybrid_paper"))
    x = torch.empty(2, 3, 224, 224, device="meta")
    fmap = model.backbone.cnn_map(x)
    assert tuple(fmap.shape) == (2, 768, 7, 7)
    assert tuple(model.backbone.tokens(fmap).shape) == (2, 196, 192)
    assert tuple(model.forward_features(x).shape) == (2, 197, 192)  # class token + 196
    assert tuple(model(x).shape) == (2,)
    assert model.backbone.token_grid == (14, 14)


def test_projection_bridge_gives_one_token_per_cell():
    model = build_on_meta(models.named_config("hybrid_project"))
    x = torch.empty(1, 3, 224, 224, device="meta")
    assert tuple(model.forward_features(x).shape) == (1, 50, 192)
    assert model.backbone.token_grid == model.backbone.cnn_grid == (7, 7)


def test_at_the_courses_128_px_both_bridges_have_the_grids_chapter_07_gives():
    """Chapter 07 trains at 128 px: a 4x4 map, 64 reshape tokens on 8x8 and 16 projected
    tokens on 4x4, the ViT's 14x14 position embeddings resampled to each grid."""
    for name, grid in (("hybrid_paper", (8, 8)), ("hybrid_project", (4, 4))):
        backbone = build_on_meta(models.named_config(name, img_size=128)).backbone
        assert backbone.cnn_grid == (4, 4) and backbone.token_grid == grid
        assert tuple(backbone.pos_embed.shape) == (1, 1 + grid[0] * grid[1], 192)


def test_reshape_bridge_refuses_channels_that_are_not_a_multiple_of_the_token_width():
    with pytest.raises(ValueError, match="multiple of the token width"):  # 320 channels, width 96
        build_on_meta(models.named_config("hybrid_atto", backbone_args={"vit_width": 96}))
    project = {"bridge": "project", "vit_width": 96}  # a 1x1 convolution fits any pair
    assert build_on_meta(models.named_config("hybrid_atto", backbone_args=project)).backbone.width == 96


def test_reshape_token_is_every_fourth_channel_of_one_cell():
    """Why the paper's tokens are not patches: what token t actually holds."""
    b, c, h, w, d = 1, 768, 7, 7, 192
    fmap = torch.arange(c * h * w, dtype=torch.float32).view(b, c, h, w)
    bridge = build_on_meta(models.named_config("hybrid_paper")).backbone  # no weights needed
    tokens = bridge.tokens(fmap)  # the model's own reshape bridge, (1, 196, 192)
    assert tokens.shape == (1, 196, 192)
    for t in (0, 48, 49, 100, 195):
        channels = torch.arange(d) * 4 + t // 49
        cell = t % 49
        expected = fmap[0, channels].flatten(1)[:, cell]
        assert torch.equal(tokens[0, t], expected)


def test_the_head_reads_the_class_token():
    """As the paper's ViT does, and what init_from_parts copies from the trained ViT: the
    age head sees token 0 after the blocks, not a mean of the cell tokens."""
    torch.manual_seed(0)
    backbone = models.create_model(models.named_config("hybrid_atto", img_size=64)).backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = backbone.forward_features(x)
        assert torch.equal(backbone(x), tokens[:, 0])
        assert not torch.allclose(tokens[:, 0], tokens[:, 1:].mean(1))


@pytest.mark.parametrize("name", sorted(hybrid.HYBRIDS))
def test_every_variant_trains_every_parameter(name):
    config = models.ModelConfig(backbone=name, hidden=32, head_norm=True, img_size=64)
    model = models.create_model(config)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2,) and torch.isfinite(out).all()
    out.sum().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None]
    assert not silent, f"parameters without gradient (a disconnected branch): {silent[:5]}"
    # a branch multiplied by zero (a gate left shut, a zeroed head) still gets a grad tensor
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"parameters whose gradient is all zero (a branch that is shut): {zero[:5]}"


def test_multiscale_fusion_adds_each_earlier_stage_averaged_to_the_last_grid():
    """The paper's "linear fusion of multi-scale features": stage 2 and 3 maps, average-pooled
    to stage 4's grid and projected by a 1x1 convolution each, are added to stage 4's map."""
    torch.manual_seed(0)
    backbone = models.create_model(
        models.named_config("hybrid_multiscale", img_size=64)).backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone.cnn(x)
        assert len(maps) == len(backbone.fuse) + 1 == 3
        expected = maps[-1].clone()
        for conv, m in zip(backbone.fuse, maps[:-1]):
            k = m.shape[-1] // maps[-1].shape[-1]  # 4 then 2 at 64 px
            expected += conv(torch.nn.functional.avg_pool2d(m, k))
        assert torch.allclose(backbone.cnn_map(x), expected, atol=1e-5)
        assert not torch.allclose(backbone.cnn_map(x), maps[-1], atol=1e-3)


@pytest.mark.parametrize("head", ["classification", "coral", "corn"])
def test_any_head_fits_on_the_hybrid(head):
    model = models.create_model(models.ModelConfig("hybrid_atto", head=head, img_size=32))
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 117 if head == "classification" else 116)


def test_wrong_input_size_is_refused_with_the_reason():
    model = models.create_model(models.ModelConfig("hybrid_atto", img_size=64))
    with pytest.raises(ValueError, match="img_size=64"):
        model(torch.randn(1, 3, 96, 96))


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="reshape"):
        hybrid.HybridConfig(bridge="flatten")
    with pytest.raises(ValueError, match="cells_to_tokens"):
        hybrid.HybridConfig(cross_attention="both")
    with pytest.raises(ValueError, match="hybrid_paper"):
        hybrid.get_config("hybrid_big")
    with pytest.raises(ValueError, match="registered"):
        models.named_config("resnet-18")


def test_models_command_lists_every_configuration_with_its_size():
    out = subprocess.run([sys.executable, "-m", "agelib", "models", "--json"], text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert set(rows) == set(models.REGISTRY)
    # every hybrid `train --model` accepts is listed, with the paper's head (not a bare default)
    assert set(hybrid.HYBRIDS) <= set(rows)
    name = "hybrid_project_multiscale_xattn"
    assert models.REGISTRY[name] == models.named_config("hybrid_paper", backbone=name)
    assert rows["hybrid_paper"]["params_as_paper_counts"] == 33_415_113
    assert rows["resnet18"]["params"] == 11_177_025


TINY = settings.RunMode("smoke", image_size=32, n_train=32, n_valid=16, n_test=16, epochs=1,
                        batch_size=16)


@pytest.mark.parametrize("name", sorted(hybrid.HYBRIDS))
def test_every_registered_hybrid_trains_with_the_papers_recipe(name, synthetic_faces):
    config = training.TrainConfig(
        model=models.ModelConfig(name, hidden=16, head_norm=True, hidden_act=False),
        loss="adaptive", lr=5e-4, schedule="warmup_cosine", tag="test")
    result = training.train_age_model(config, faces=synthetic_faces, mode=TINY, device="cpu",
                                      save_record=False, verbose=False)
    assert result.record["backbone"] == name and np.isfinite(result.record["test_mae"])
    assert len(result.test_pred) == TINY.n_test


@pytest.mark.parametrize("name", ["hybrid_atto", "hybrid_atto_project"])
@pytest.mark.parametrize("size", [80, 112])  # not multiples of 32: the CNN rounds down
def test_hybrids_run_at_sizes_that_are_not_multiples_of_32(name, size):
    model = models.create_model(models.named_config(name, img_size=size)).eval()
    assert model.backbone.cnn_grid == (size // 32, size // 32)
    with torch.no_grad():
        assert tuple(model(torch.randn(2, 3, size, size)).shape) == (2,)


def test_cross_attention_without_fused_attention_computes_the_same():
    from agelib import bench

    torch.manual_seed(0)
    fused = hybrid.CrossAttention(32, 4).eval()
    with bench.fused_attention(False):
        plain = hybrid.CrossAttention(32, 4).eval()
    assert fused.fused_attn and not plain.fused_attn
    plain.load_state_dict(fused.state_dict())  # same weights, same checkpoint keys
    x, context = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, context), fused(x, context), atol=1e-5, rtol=1e-5)


def test_cross_attention_is_a_residual_update():
    """Catches cross-attention that replaces its queries instead of adding to them."""
    torch.manual_seed(0)
    cross = hybrid.CrossAttention(32, 4).eval()
    with torch.no_grad():
        cross.attn.out_proj.weight.zero_()
        cross.attn.out_proj.bias.zero_()
        x, context = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
        assert torch.equal(cross(x, context), x)  # no attention output: the queries pass through


def _cross_attention_hybrid(mode: str):
    """A tiny hybrid with cross-attention ``mode``, an input, its CNN map, and the tokens as
    the encoder receives them (class token first, position embeddings added)."""
    torch.manual_seed(0)
    backbone = models.create_model(models.named_config("hybrid_atto", img_size=64,
                                   backbone_args={"cross_attention": mode})).backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = backbone.cnn_map(x)
        cls = backbone.cls_token.expand(2, -1, -1)
        tokens = torch.cat([cls, backbone.tokens(fmap)], 1) + backbone.pos_embed
    return backbone, x, fmap, tokens


def test_cells_to_tokens_attention_updates_only_the_class_token():
    """Catches the CNN cells' attention added to a cell token the age head never reads."""
    backbone, x, fmap, tokens = _cross_attention_hybrid("cells_to_tokens")
    with torch.no_grad():
        plain = backbone.norm(backbone.blocks(tokens))
        cells = backbone.cross(backbone._cells(fmap), plain)
        out = backbone.forward_features(x)
    torch.testing.assert_close(out[:, 1:], plain[:, 1:])
    torch.testing.assert_close(out[:, 0], plain[:, 0] + cells.mean(1))


def test_tokens_to_cells_attention_comes_before_the_encoder():
    """Catches the tokens' attention to the CNN cells applied after the encoder, not before."""
    backbone, x, fmap, tokens = _cross_attention_hybrid("tokens_to_cells")
    with torch.no_grad():
        expected = backbone.norm(backbone.blocks(backbone.cross(tokens, backbone._cells(fmap))))
        torch.testing.assert_close(backbone.forward_features(x), expected)
