"""The ConvNeXt-ViT hybrid (Maroun et al., CVIU 2025) and the variants the course compares.

A ConvNeXt turns the face into a grid of features; a ViT encoder then lets
every part of that grid attend to every other part, and its class token
becomes the face's features. The model is a *backbone* in timm's sense
(``forward_features``, ``forward_head(pre_logits=True)``, ``num_features``), so
:class:`agelib.models.AgeModel` puts any head on it, exactly as on a CNN.

The **bridge** between the two is where the variants differ:

``reshape`` (the paper's code)
    The stage-4 map ``(B, 768, 7, 7)`` is reshaped, with no learned layer, into
    196 "tokens" of 192 values. Token ``t`` then holds every fourth channel of
    the single spatial cell ``t % 49``: it is *not* an image patch, so the 14x14
    position embeddings it receives, and attention maps drawn on a 14x14 grid,
    have no spatial meaning.
``project`` (spatially honest)
    A 1x1 convolution maps 768 channels to 192 at each of the 49 cells: 49
    tokens, one per place in the face, with a 7x7 position embedding.

Two more ideas from the paper's text (not in its code) are switchable:
``multiscale`` fuses ConvNeXt stages 2-4 linearly before the bridge, and
``cross_attention`` adds a light attention block between the CNN cells and the
transformer tokens.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

if TYPE_CHECKING:  # agelib.models builds hybrids; import it lazily at run time
    from . import models

BRIDGES = ("reshape", "project")
CROSS_ATTENTION = ("none", "cells_to_tokens", "tokens_to_cells")


@dataclass(frozen=True)
class HybridConfig:
    """One hybrid. Field comments say what each switch changes."""

    cnn: str = "convnext_tiny"  # timm ConvNeXt that makes the feature grid
    vit: str = "vit_tiny_patch16_224"  # timm ViT whose encoder blocks, class token and
    # position embeddings are reused (its patch embedding is not: the CNN replaces it)
    bridge: str = "reshape"  # "reshape" (the paper's code) or "project" (1x1 conv, token per cell)
    multiscale: bool = False  # fuse ConvNeXt stages 2-4 (linear fusion) before the bridge
    cross_attention: str = "none"  # "cells_to_tokens": CNN cells query the encoded tokens;
    # "tokens_to_cells": tokens query the CNN cells before the encoder
    img_size: int = 224  # input side; position embeddings are resized to the grid it gives
    vit_depth: int | None = None  # encoder blocks (None: the ViT's own, 12 for ViT-Ti)
    vit_width: int | None = None  # token width (None: the ViT's own, 192 for ViT-Ti)
    vit_heads: int | None = None  # attention heads (None: the ViT's own, 3 for ViT-Ti)
    drop_path_rate: float = 0.0

    def __post_init__(self):
        if self.bridge not in BRIDGES:
            raise ValueError(f"unknown bridge {self.bridge!r}; choose one of {BRIDGES}")
        if self.cross_attention not in CROSS_ATTENTION:
            raise ValueError(f"unknown cross_attention {self.cross_attention!r}; "
                             f"choose one of {CROSS_ATTENTION}")

    def to_dict(self) -> dict:
        return asdict(self)


def _vit_args(c: HybridConfig) -> dict:
    """The ViT settings ``c`` changes, as timm's keyword arguments (unset ones: the ViT's own)."""
    return {k: v for k, v in {"embed_dim": c.vit_width, "num_heads": c.vit_heads,
                              "depth": c.vit_depth}.items() if v is not None}


#: Named configurations: ``models.ModelConfig(backbone="hybrid_paper")`` builds one.
HYBRIDS: dict[str, HybridConfig] = {
    "hybrid_paper": HybridConfig(),
    "hybrid_project": HybridConfig(bridge="project"),
    "hybrid_multiscale": HybridConfig(multiscale=True),
    "hybrid_xattn": HybridConfig(cross_attention="cells_to_tokens"),
    "hybrid_project_multiscale_xattn": HybridConfig(bridge="project", multiscale=True,
                                                    cross_attention="cells_to_tokens"),
    # tiny variants with the same ratios (4 channels per token), for tests and smoke runs
    "hybrid_atto": HybridConfig(cnn="convnext_atto", vit_width=80, vit_heads=2, vit_depth=2),
    "hybrid_atto_project": HybridConfig(cnn="convnext_atto", bridge="project", vit_width=80,
                                        vit_heads=2, vit_depth=2),
}


def get_config(name: str, **overrides) -> HybridConfig:
    """A registered hybrid, optionally with some fields changed."""
    if name not in HYBRIDS:
        raise ValueError(f"unknown hybrid {name!r}; registered: {sorted(HYBRIDS)}")
    return replace(HYBRIDS[name], **overrides)


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention with a residual: ``x + attn(norm(x), norm(context))``.

    ``nn.MultiheadAttention`` runs PyTorch's fused ``scaled_dot_product_attention``. Like
    timm's blocks, the module reads timm's switch when it is built (``fused_attn``): off,
    it computes ``softmax(q k^T / sqrt(d)) v`` step by step with the same weights, so that
    a benchmark without fused attention (``bench --no-sdpa``) has none anywhere.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fused_attn = timm.layers.use_fused_attn()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(context)
        if self.fused_attn:
            out, _ = self.attn(self.norm_q(x), kv, kv, need_weights=False)
        else:
            out = self._unfused(self.norm_q(x), kv)
        return x + out

    def _unfused(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """``nn.MultiheadAttention``'s arithmetic, one step at a time."""
        a, heads = self.attn, self.attn.num_heads
        w_q, w_k, w_v = a.in_proj_weight.chunk(3)
        b_q, b_k, b_v = a.in_proj_bias.chunk(3)

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, heads, N, D / heads)
            return t.unflatten(-1, (heads, -1)).transpose(1, 2)

        q, k, v = (split(F.linear(q, w_q, b_q)), split(F.linear(kv, w_k, b_k)),
                   split(F.linear(kv, w_v, b_v)))
        weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)
        return a.out_proj((weights @ v).transpose(1, 2).flatten(2))


class ConvNeXtViT(nn.Module):
    """ConvNeXt feature grid -> bridge -> ViT encoder -> class token ``(B, D)``."""

    def __init__(self, config: HybridConfig = HybridConfig(), pretrained: bool = False):
        super().__init__()
        self.config = c = config
        stages = (1, 2, 3) if c.multiscale else (3,)
        self.cnn = timm.create_model(c.cnn, pretrained=pretrained, features_only=True,
                                     out_indices=stages, drop_path_rate=c.drop_path_rate)
        vit = timm.create_model(c.vit, pretrained=pretrained, num_classes=0,
                                drop_path_rate=c.drop_path_rate, **_vit_args(c))
        channels = self.cnn.feature_info.channels()  # e.g. [192, 384, 768]
        reductions = self.cnn.feature_info.reduction()  # e.g. [8, 16, 32]
        self.width = width = vit.embed_dim
        self.num_features = self.head_hidden_size = width
        # stage-4 grid side, 7 at 224 px: the stem and every downsampling round down, so a
        # side that is not a multiple of 32 (112 px) loses its last partial cell (3, not 4)
        side = c.img_size // reductions[-1]
        if side < 1:
            raise ValueError(f"img_size={c.img_size} is smaller than the CNN's stride "
                             f"({reductions[-1]} px): the stage-4 map would be empty")
        self.cnn_grid = (side, side)
        if c.multiscale:  # linear fusion: each earlier stage, pooled and projected, is added
            self.fuse = nn.ModuleList(nn.Conv2d(ch, channels[-1], 1) for ch in channels[:-1])
        grid = self._make_bridge(channels[-1], width, side)
        self.token_grid = grid  # (14, 14) for the paper's reshape, (7, 7) for the projection
        self.cls_token = vit.cls_token  # (1, 1, D)
        self.pos_embed = nn.Parameter(resample_abs_pos_embed(
            vit.pos_embed.detach(), new_size=grid, num_prefix_tokens=1))  # (1, 1 + N, D)
        self.blocks, self.norm = vit.blocks, vit.norm
        self.num_prefix_tokens = 1
        if c.cross_attention != "none":
            self.cell_proj = nn.Conv2d(channels[-1], width, 1)
            self.cross = CrossAttention(width, vit.blocks[0].attn.num_heads)

    def _make_bridge(self, cnn_channels: int, width: int, side: int) -> tuple[int, int]:
        """Build the bridge's layer, if it has one, and return the token grid it gives.

        ``reshape`` has none: each cell's channels are cut into ``cnn_channels / width``
        tokens, laid out on the squarest grid. ``project`` has a 1x1 convolution: one token
        per cell, on the CNN's own grid.
        """
        if self.config.bridge == "reshape":
            if cnn_channels % width:
                raise ValueError(f"the reshape bridge needs CNN channels ({cnn_channels}) to be "
                                 f"a multiple of the token width ({width})")
            ratio = cnn_channels // width
            return _factor_grid(ratio * side * side)  # 4 * 49 = 196 -> (14, 14)
        self.project = nn.Conv2d(cnn_channels, width, 1)
        return self.cnn_grid

    def cnn_map(self, x: torch.Tensor) -> torch.Tensor:
        """The (fused) last ConvNeXt map ``(B, C, h, w)``: Grad-CAM's spatial target."""
        maps = self.cnn(x)
        out = maps[-1]  # (B, 768, 7, 7) at 224 px
        if self.config.multiscale:
            for conv, m in zip(self.fuse, maps[:-1]):
                out = out + conv(F.adaptive_avg_pool2d(m, out.shape[-2:]))
        return out

    def tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        """The bridge: a CNN map to a token sequence ``(B, N, D)``."""
        b = fmap.shape[0]
        if self.config.bridge == "reshape":  # the paper's: no learned layer, not spatial
            return fmap.reshape(b, self.width, -1).transpose(1, 2)  # (B, 196, 192)
        return self.project(fmap).flatten(2).transpose(1, 2)  # (B, 49, 192)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.cnn_map(x)
        tokens = self.tokens(fmap)
        if tokens.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(f"input of {tuple(x.shape[-2:])} px gives {tokens.shape[1]} tokens, "
                             f"but the model was built for img_size={self.config.img_size}: "
                             f"build it for your size (ModelConfig(..., img_size={x.shape[-1]}) "
                             f"or named_config(name, img_size={x.shape[-1]}))")
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed  # (B, 1 + N, D)
        if self.config.cross_attention == "tokens_to_cells":
            tokens = self.cross(tokens, self._cells(fmap))
        tokens = self.norm(self.blocks(tokens))
        if self.config.cross_attention == "cells_to_tokens":
            cells = self.cross(self._cells(fmap), tokens)  # (B, h*w, D)
            tokens = torch.cat([tokens[:, :1] + cells.mean(1, keepdim=True), tokens[:, 1:]], 1)
        return tokens

    def _cells(self, fmap: torch.Tensor) -> torch.Tensor:
        """One token per CNN cell, projected to the token width: cross-attention's other side."""
        return self.cell_proj(fmap).flatten(2).transpose(1, 2)  # (B, h*w, D)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return tokens[:, 0]  # the class token (B, D); the age head comes from AgeModel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _factor_grid(n: int) -> tuple[int, int]:
    """The most square (rows, cols) with rows * cols = n."""
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def create(name: str, pretrained: bool = False, img_size: int = 224, **overrides) -> ConvNeXtViT:
    """A registered hybrid backbone for inputs of ``img_size`` pixels."""
    return ConvNeXtViT(get_config(name, img_size=img_size, **overrides), pretrained=pretrained)


#: Parameters the paper's published code carries but never uses: ViT-Ti's ImageNet
#: classifier (192 x 1000 + 1000) and ConvNeXt-T's head LayerNorm (2 x 768). The
#: paper's 33.42M counts them; this course's model does not build them.
PAPER_UNUSED_PARAMETERS = 192 * 1000 + 1000 + 2 * 768


# --------------------------------------------------------------------------- three-stage recipe
# The paper's recipe: train a ConvNeXt, train a ViT, then start the hybrid from both
# (the ConvNeXt's stem and stages, the ViT's encoder). The hybrid's own parts (bridge
# projection, fusion, cross-attention) and the age head start fresh.


def part_configs(config: models.ModelConfig) -> tuple[models.ModelConfig, models.ModelConfig]:
    """The ``(cnn, vit)`` model configs to train in stages 1 and 2 for a hybrid ``config``.

    Both keep the hybrid's head settings, so the three runs differ only in the
    backbone; the ViT gets the hybrid's token width, heads and depth:

    >>> from agelib import models
    >>> cnn_cfg, vit_cfg = part_configs(models.named_config("hybrid_atto"))
    >>> cnn_cfg.backbone, vit_cfg.backbone, vit_cfg.backbone_args
    ('convnext_atto', 'vit_tiny_patch16_224', {'embed_dim': 80, 'num_heads': 2, 'depth': 2})
    """
    from . import models

    c = _hybrid_config_of(config)
    vit_args = _vit_args(c)
    base = config.to_dict()
    cnn = models.ModelConfig(**{**base, "backbone": c.cnn, "backbone_args": None})
    vit = models.ModelConfig(**{**base, "backbone": c.vit, "backbone_args": vit_args or None})
    return cnn, vit


def _hybrid_config_of(config: models.ModelConfig) -> HybridConfig:
    """The :class:`HybridConfig` a ``models.ModelConfig`` of a hybrid builds."""
    if config.backbone not in HYBRIDS:
        raise ValueError(f"{config.backbone!r} is not a hybrid; registered: {sorted(HYBRIDS)}")
    return get_config(config.backbone, **(config.backbone_args or {}))


def init_from_parts(hybrid_model: models.AgeModel, cnn: models.AgeModel | str | None = None,
                    vit: models.AgeModel | str | None = None) -> dict:
    """Copy a trained ConvNeXt and/or ViT into a hybrid ``AgeModel`` (stage 3 of the recipe).

    ``cnn`` and ``vit`` are trained ``AgeModel`` s or paths to their checkpoints.
    From the ConvNeXt: the stem and the four stages (its head LayerNorm is unused).
    From the ViT: its first ``vit_depth`` blocks, final norm, class token and position
    embeddings, resized to the hybrid's token grid when the grids differ (with the
    reshape bridge, that grid is not spatial: the embeddings are a starting point,
    not a map). The ViT's patch embedding is unused: the ConvNeXt replaces it.

    Nothing is copied unless everything fits; a mismatch raises ``ValueError``
    naming the configs that would fit (see :func:`part_configs`). Returns a report:
    ``copied`` (hybrid key -> source key), ``resized`` (hybrid keys),
    ``left_at_init`` (hybrid keys) and ``unused`` (source keys).
    """
    backbone = getattr(hybrid_model, "backbone", None)
    if not isinstance(backbone, ConvNeXtViT):
        raise ValueError("init_from_parts needs an AgeModel whose backbone is a ConvNeXtViT; "
                         "build one with models.create_model(models.named_config('hybrid_atto'))")
    if cnn is None and vit is None:
        raise ValueError("give a trained cnn, a trained vit, or both")
    pairs, unused, problems = {}, [], []
    for part, source, mapper in (("cnn", cnn, _cnn_pairs), ("vit", vit, _vit_pairs)):
        if source is None:
            continue
        source = _as_age_model(source)
        found, missing_or_bad = mapper(backbone, source.backbone)
        pairs.update({f"backbone.{t}": (f"{part}:backbone.{s}", v) for t, (s, v) in found.items()})
        problems += [f"{part}: {p}" for p in missing_or_bad]
        used = {f"backbone.{s}" for s, _ in found.values()}
        unused += [f"{part}:{k}" for k in source.state_dict() if k not in used]
    target = hybrid_model.state_dict()  # tensors that share storage with the parameters
    resized = _fit_pos_embed(pairs, target, backbone.token_grid)
    problems += [f"{name} {tuple(value.shape)} does not fit {key} {tuple(target[key].shape)}"
                 for key, (name, value) in pairs.items() if value.shape != target[key].shape]
    if problems:
        shown = "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else "")
        raise ValueError(f"cannot initialise this hybrid from these models: {shown}. "
                         f"{_what_fits(backbone.config)}")
    with torch.no_grad():
        for key, (_, value) in pairs.items():
            target[key].copy_(value)
    return {"copied": {k: name for k, (name, _) in pairs.items()}, "resized": resized,
            "left_at_init": [k for k in target if k not in pairs], "unused": unused}


def _fit_pos_embed(pairs: dict, target: dict, grid: tuple[int, int]) -> list[str]:
    """Resize, in ``pairs``, a ViT's position embeddings to the hybrid's token grid."""
    resized = []
    for key, (name, value) in pairs.items():
        if key.endswith("pos_embed") and value.shape != target[key].shape:
            value = resample_abs_pos_embed(value, new_size=grid, num_prefix_tokens=1)  # (1, 1+N, D)
            pairs[key] = (name, value)
            resized.append(key)
    return resized


def _as_age_model(source: models.AgeModel | str | os.PathLike) -> models.AgeModel:
    """An ``AgeModel`` from itself or from a checkpoint path."""
    from . import checkpoints

    if isinstance(source, str) or hasattr(source, "__fspath__"):
        return checkpoints.load_checkpoint(source)[0]
    if not hasattr(source, "backbone"):
        raise ValueError(f"expected a trained AgeModel or a checkpoint path, got "
                         f"{type(source).__name__}")
    return source


def _flat_children(module: nn.Module) -> Iterator[tuple[str, str, nn.Module]]:
    """A model's parts named the way timm's ``features_only`` wrapper names them:
    the children of a top-level ``nn.Sequential`` are flattened (``stages.0`` -> ``stages_0``)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            for sub, grandchild in child.named_children():
                yield f"{name}_{sub}", f"{name}.{sub}", grandchild
        else:
            yield name, name, child


def _cnn_pairs(hybrid: ConvNeXtViT, source: nn.Module) -> tuple[dict, list[str]]:
    """``{hybrid key (under backbone.): (source key, tensor)}`` for the ConvNeXt, and problems."""
    parts = {flat: (path, child) for flat, path, child in _flat_children(source)}
    pairs, problems = {}, []
    for name in hybrid.cnn.keys():  # e.g. stem_0, stem_1, stages_0, ..., stages_3
        if name not in parts:
            problems.append(f"has no part {name!r} (is it a timm ConvNeXt?)")
            continue
        path, child = parts[name]
        for key, value in child.state_dict().items():
            pairs[f"cnn.{name}.{key}"] = (f"{path}.{key}", value)
    return pairs, problems


def _vit_pairs(hybrid: ConvNeXtViT, source: nn.Module) -> tuple[dict, list[str]]:
    """``{hybrid key (under backbone.): (source key, tensor)}`` for the ViT, and problems."""
    needed = ("blocks", "norm", "cls_token", "pos_embed")
    if not all(hasattr(source, n) for n in needed):
        return {}, [f"is not a timm VisionTransformer (needs {needed})"]
    problems = []
    if getattr(source, "num_prefix_tokens", 1) != 1:
        problems.append(f"has {source.num_prefix_tokens} prefix tokens; the hybrid has one "
                        "(a class token, no register tokens)")
    if len(source.blocks) < len(hybrid.blocks):
        problems.append(f"has {len(source.blocks)} blocks; the hybrid needs {len(hybrid.blocks)}")
    elif source.blocks[0].attn.num_heads != hybrid.blocks[0].attn.num_heads:
        problems.append(f"has {source.blocks[0].attn.num_heads} heads; the hybrid has "
                        f"{hybrid.blocks[0].attn.num_heads}")
    src = source.state_dict()
    pairs = {}
    for key in hybrid.state_dict():
        if key.split(".")[0] in needed:  # same names in both: blocks.0.attn.qkv.weight, ...
            if key in src:
                pairs[key] = (key, src[key])
            else:
                problems.append(f"has no {key!r}")
    return pairs, problems


def _what_fits(c: HybridConfig) -> str:
    """The end of :func:`init_from_parts`' error: which part models would fit, and how to
    train them, in Python and on the command line."""
    vit_args = _vit_args(c)
    cli_args = "".join(f" --backbone-arg {k}={v}" for k, v in vit_args.items())
    return (f"Models that fit: cnn = ModelConfig({c.cnn!r}), vit = ModelConfig({c.vit!r}"
            + (f", backbone_args={vit_args}" if vit_args else "") + ") (the ViT may be deeper; "
            "its first blocks are used); hybrid.part_configs(config) builds both. From the "
            f"command line: `train --model {c.cnn}` and `train --model {c.vit}{cli_args}`.")
