"""Where a model looks: Grad-CAM maps of the *predicted age* for CNNs, ViTs and the hybrid.

Grad-CAM (Selvaraju et al., ICCV 2017) explains one number through a feature map
``A`` of shape ``(C, h, w)``: the gradient of that number with respect to ``A``,
averaged over the map, gives one weight per channel; the weighted sum of the
channels, passed through a ReLU, keeps the places whose features push the number
*up*. Here the number is the predicted age, so a bright spot means "this part of
the face made the model say older".

The computing is done by pytorch-grad-cam (``pip install grad-cam``). This module
answers the three questions that library leaves to its user, for every model of
the course and at any input size:

* *which layer* (:func:`cam_target_layers`): a CNN's last stage; a ViT's last
  block's first norm; the hybrid's ConvNeXt stage-4 map;
* *how to make tokens a map* (:func:`token_reshape`): drop the prefix tokens
  (class, registers) and fold the rest onto the model's own patch grid;
* *what to explain* (:class:`AgeTarget`): the predicted age, through the head's
  own decoding, whatever the head.

:func:`age_cam` puts them together; :func:`band_means` and :func:`region_focus`
summarise many maps (per age band, per part of the face); :func:`overlay` and
:func:`cam_figure` draw them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import hybrid, losses, metrics, models, plots, settings
from .data import loaders

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Method names -> pytorch-grad-cam classes. All explain the same target on the same layer.
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM",
           "xgradcam": "XGradCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM"}

#: Smooth decoders used when a head decodes by argmax or threshold counting (``decode="label"``),
#: whose age is a step function of the logits and so has no gradient to explain.
SMOOTH_DECODERS = {"classification": losses.expected_age, "coral": losses.coral_expected_age,
                   "corn": losses.corn_expected_age}


# --------------------------------------------------------------------------- which layer
def _backbone(model: models.AgeModel) -> nn.Module:
    if not isinstance(model, models.AgeModel):
        raise TypeError(f"expected an agelib AgeModel (models.create_model or "
                        f"checkpoints.load_checkpoint), got {type(model).__name__}")
    return model.backbone


def architecture(model: models.AgeModel) -> str:
    """``"cnn"``, ``"vit"`` or ``"hybrid"``: which Grad-CAM recipe fits the model's backbone.

    Raises ValueError for a backbone none of them fits, saying what Grad-CAM needs.
    """
    backbone = _backbone(model)
    if isinstance(backbone, hybrid.ConvNeXtViT):
        return "hybrid"
    if all(hasattr(backbone, a) for a in ("patch_embed", "blocks", "num_prefix_tokens")):
        return "vit"  # timm's VisionTransformer and its relatives (DeiT, EVA, BEiT)
    info = getattr(backbone, "feature_info", None)
    if info and getattr(backbone, "output_fmt", "NCHW") == "NCHW":
        return "cnn"  # timm CNNs list their stages in feature_info
    raise ValueError(
        f"no Grad-CAM recipe for a {type(backbone).__name__} backbone: agelib knows timm CNNs "
        "(feature_info with NCHW maps), timm ViTs (patch_embed, blocks, num_prefix_tokens) and "
        "agelib.hybrid.ConvNeXtViT. For another model, give pytorch_grad_cam its target layers "
        "and a reshape_transform to (B, C, h, w) yourself.")


def cam_target_layers(model: models.AgeModel, vit_block: int = -1) -> list[nn.Module]:
    """The layer whose output Grad-CAM weighs, as the one-element list pytorch-grad-cam takes.

    * CNN: the last stage in timm's ``feature_info`` (``layer4`` of a ResNet,
      ``stages.3`` of a ConvNeXt): the last map that still has places in it.
    * ViT: ``blocks[vit_block].norm1``. After the last block only the class token
      reaches the head, so the patch tokens' gradients there are zero; at the
      last block's input norm, the class token still attends to them.
    * hybrid: the ConvNeXt stage-4 block, whose output is ``backbone.cnn_map``'s
      map (for ``multiscale`` hybrids, the stage-4 part of the fused map). The
      paper's reshape bridge scrambles that map into tokens that are not places
      on the face (see :mod:`agelib.hybrid`), so the map before the bridge is the
      one with a spatial meaning.
    """
    kind, backbone = architecture(model), model.backbone
    if kind == "hybrid":
        cnn = backbone.cnn  # timm features_only net: stage "stages.3" is kept as "stages_3"
        return [cnn.get_submodule(cnn.feature_info.module_name()[-1].replace(".", "_"))]
    if kind == "vit":
        return [backbone.blocks[vit_block].norm1]
    return [backbone.get_submodule(backbone.feature_info[-1]["module"])]


# --------------------------------------------------------------------------- tokens -> map
def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int],
                   num_prefix_tokens: int = 1) -> torch.Tensor:
    """ViT tokens ``(B, P + h*w, D)`` -> a CNN-like map ``(B, D, h, w)``, prefix tokens dropped.

    Patch tokens are stored row by row, so token ``P + r*w + c`` is grid cell ``(r, c)``:

    >>> tokens = torch.arange(7.0).view(1, 7, 1)  # a class token, then 2x3 patches of width 1
    >>> tokens_to_grid(tokens, (2, 3))[0, 0]
    tensor([[1., 2., 3.],
            [4., 5., 6.]])
    """
    b, n, d = tokens.shape
    h, w = grid
    if n - num_prefix_tokens != h * w:
        raise ValueError(f"{n} tokens minus {num_prefix_tokens} prefix token(s) do not fill a "
                         f"{h}x{w} grid; is the grid the model's patch grid at this input size?")
    patches = tokens[:, num_prefix_tokens:]  # (B, h*w, D)
    return patches.reshape(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)


def token_grid(model: models.AgeModel, n_patches: int) -> tuple[int, int]:
    """The ViT's patch grid for ``n_patches`` tokens: its own ``patch_embed.grid_size`` when
    that fits (any input size it was built for, square or not), else the square that fits."""
    grid = getattr(model.backbone.patch_embed, "grid_size", None)
    if grid is not None and grid[0] * grid[1] == n_patches:
        return int(grid[0]), int(grid[1])
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"cannot place {n_patches} patch tokens on a grid: the model's grid is "
                         f"{grid} and {n_patches} is not a square; feed images of the size the "
                         "model was built for (ModelConfig.img_size)")
    return side, side


def cam_resolution(model: models.AgeModel, image_size: int) -> tuple[int, int]:
    """``(h, w)`` of the map Grad-CAM weighs for ``image_size``-px faces: how coarse its maps
    are before they are stretched to the image (a ResNet's 224-px map is 7x7)."""
    [layer] = cam_target_layers(model)
    seen = []
    handle = layer.register_forward_hook(lambda module, inputs, out: seen.append(out))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size,
                                     device=next(model.parameters()).device))
    finally:
        handle.remove()
        model.train(was_training)
    reshape = token_reshape(model)
    fmap = reshape(seen[0]) if reshape else seen[0]  # (1, C, h, w)
    return int(fmap.shape[-2]), int(fmap.shape[-1])


def token_reshape(model: models.AgeModel) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """pytorch-grad-cam's ``reshape_transform`` for the model: a ViT's tokens -> ``(B, D, h, w)``,
    or None when the target layer already gives a map (CNNs, the hybrid's ConvNeXt stage).

    The prefix count (1 class token, plus any register tokens) and the grid are the
    model's own, so the same code serves 64, 96, 128 or 224 px inputs.
    """
    if architecture(model) != "vit":
        return None
    prefix = int(model.backbone.num_prefix_tokens)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(tokens, token_grid(model, tokens.shape[1] - prefix), prefix)

    return reshape


# --------------------------------------------------------------------------- what to explain
def differentiable_age(head: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The predicted age ``(B,)`` from a head's output, as a smooth function of it.

    Heads that decode by argmax or by counting thresholds (``decode="label"``)
    give a step function with zero gradient; their expected age is used instead, a
    smooth stand-in that usually, though not always, moves with the decoded age.
    """
    if getattr(head, "decode", "expected") == "label":
        return SMOOTH_DECODERS[head.kind](out, head.min_age)
    return head.to_age(out)


class AgeTarget:
    """A pytorch-grad-cam target: the predicted age of one image, whatever the head.

    pytorch-grad-cam calls it on one image's output (``()`` for regression,
    ``(K,)`` or ``(K-1,)`` logits otherwise) and back-propagates the result, so the
    map highlights what makes the model say *older*; ``younger=True`` explains
    minus the age instead.
    """

    def __init__(self, head: nn.Module, younger: bool = False):
        self.head, self.sign = head, -1.0 if younger else 1.0

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * differentiable_age(self.head, output.unsqueeze(0))[0]


# --------------------------------------------------------------------------- maps
def _cam_class(method: str) -> type:
    """The pytorch-grad-cam class of ``method``, checked before grad-cam is imported, so a
    typo is named even where the package is missing."""
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {sorted(METHODS)}")
    pytorch_grad_cam = settings.optional_import("pytorch_grad_cam", "grad-cam", "Grad-CAM")
    return getattr(pytorch_grad_cam, METHODS[method])


def as_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 faces ``(N, H, W, 3)`` (numpy or torch) -> normalised ``(N, 3, H, W)``; float
    batches pass through, as float32 (the models' weights are)."""
    if torch.is_tensor(images) and images.dtype == torch.uint8:
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 faces must be (N, H, W, 3), got {images.shape}")
        # torch.tensor copies: cached faces are read-only memory maps, which torch warns about
        pixels = torch.tensor(images).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W)
        mean = torch.tensor(loaders.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(loaders.IMAGENET_STD).view(1, 3, 1, 1)
        return (pixels - mean) / std  # the evaluation normalisation, at the faces' own size
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"give uint8 faces (N, H, W, 3) or a normalised float batch "
                         f"(N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    return x.float()


def age_cam(model: models.AgeModel, images: np.ndarray | torch.Tensor, method: str = "gradcam",
            batch_size: int = 16, younger: bool = False, vit_block: int = -1) -> np.ndarray:
    """Maps ``(N, H, W)`` in [0, 1], at input resolution, of what raises each predicted age.

    ``images`` are uint8 faces ``(N, H, W, 3)`` at the model's input size (as
    ``faces.images(size)`` gives them; normalised here as in evaluation) or an
    already normalised float batch ``(N, 3, H, W)``. Each map is scaled to [0, 1]
    on its own (pytorch-grad-cam's convention), so maps show *where*, not *how much*;
    a map that is flat at the target layer (e.g. a 1x1 ResNet map of a 32-px face) is all 0.

    ``method`` picks another CAM from :data:`METHODS`; ``younger=True`` maps what lowers
    the age; ``vit_block`` picks a ViT's block (the last by default); ``batch_size``
    bounds the memory the activations and gradients take.
    """
    if batch_size < 1:  # range() would refuse 0 cryptically, and return no maps for -1
        raise ValueError(f"batch_size must be a whole number of faces, 1 or more, not "
                         f"{batch_size!r}; lower it (e.g. 4) if the maps run out of memory")
    cam_class = _cam_class(method)
    x = as_batch(images)
    device = next(model.parameters()).device
    was_training = model.training
    cam = cam_class(model=model, target_layers=cam_target_layers(model, vit_block),
                    reshape_transform=token_reshape(model))
    maps = []
    try:
        with torch.enable_grad():  # callers often sit inside no_grad (prediction code)
            for start in range(0, len(x), batch_size):
                # an input that needs a gradient keeps the graph alive even if weights are frozen
                batch = x[start:start + batch_size].to(device).requires_grad_(True)
                targets = [AgeTarget(model.head, younger)] * len(batch)
                maps.append(cam(input_tensor=batch, targets=targets))  # (b, H, W)
    finally:  # not `with cam:` - its __exit__ silently swallows IndexErrors
        cam.activations_and_grads.release()
        model.train(was_training)
    if not maps:  # no faces: no maps, in the shape the faces would have given
        return np.zeros((0, *x.shape[-2:]), np.float32)
    return np.clip(np.concatenate(maps), 0.0, 1.0)


def band_means(values: np.ndarray, ages: Sequence[float],
               edges: Sequence[int] = metrics.AGE_BANDS) -> dict[str, np.ndarray]:
    """The mean of ``values`` (maps ``(N, H, W)``, faces ``(N, H, W, 3)``...) per age band.

    Keys are :func:`agelib.metrics.band_labels` in age order; empty bands are left out.

    >>> means = band_means(np.array([0.0, 1.0, 3.0]), [5, 8, 40], edges=(0, 13, 117))
    >>> {band: float(m) for band, m in means.items()}
    {'0-12': 0.5, '13+': 3.0}
    """
    values, ages = np.asarray(values), np.asarray(ages)
    if len(values) != len(ages):
        raise ValueError(f"{len(values)} values but {len(ages)} ages")
    bands = metrics.age_band(ages, edges)
    return {b: values[bands == b].mean(axis=0) for b in metrics.band_labels(edges)
            if (bands == b).any()}


#: Rough places on an *aligned, cropped* UTKFace face (eyes about 30% from the top), as
#: boxes ``(top, bottom, left, right)`` in fractions of the side; drawn on the mean face in
#: chapter 09. They are coarse on purpose: at 64-128 px a CAM cell covers a lot of face.
FACE_REGIONS: dict[str, list[tuple[float, float, float, float]]] = {
    "forehead": [(0.03, 0.22, 0.25, 0.75)],
    "eyes": [(0.22, 0.38, 0.20, 0.80)],
    "crow's feet": [(0.20, 0.42, 0.05, 0.20), (0.20, 0.42, 0.80, 0.95)],
    "nose": [(0.38, 0.58, 0.38, 0.62)],
    "nasolabial folds": [(0.45, 0.72, 0.22, 0.38), (0.45, 0.72, 0.62, 0.78)],
    "mouth and chin": [(0.60, 0.95, 0.38, 0.62)],
}


def region_mask(shape: tuple[int, int], boxes: Sequence[tuple[float, float, float, float]]
                ) -> np.ndarray:
    """A boolean ``(H, W)`` mask of the union of fractional boxes ``(top, bottom, left, right)``."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for top, bottom, left, right in boxes:
        mask[round(top * h):round(bottom * h), round(left * w):round(right * w)] = True
    return mask


def region_focus(maps: np.ndarray, regions: Mapping[str, Sequence] = FACE_REGIONS
                 ) -> dict[str, float]:
    """How much more of the (mean) map falls in each region than if it were spread evenly.

    1 means "as much as its area", 2 "twice that", 0 "none"; regions of different
    sizes can so be compared. ``maps`` is one map ``(H, W)`` or several ``(N, H, W)``.

    >>> cam = np.zeros((10, 10)); cam[:2] = 1.0  # all heat in the top fifth
    >>> region_focus(cam, {"top": [(0, 0.2, 0, 1)], "bottom": [(0.5, 1, 0, 1)]})
    {'top': 5.0, 'bottom': 0.0}
    """
    mean = np.asarray(maps, dtype=np.float64)
    mean = mean.mean(axis=0) if mean.ndim == 3 else mean
    if mean.ndim != 2:
        raise ValueError(f"give maps (N, H, W) or one map (H, W), got {np.shape(maps)}")
    total = mean.sum()
    focus = {}
    for name, boxes in regions.items():
        mask = region_mask(mean.shape, boxes)
        if not mask.any():  # a share of nothing would be 0/0
            raise ValueError(f"region '{name}' covers no pixel of a {mean.shape[0]}x"
                             f"{mean.shape[1]} map: give maps at the faces' resolution, "
                             "as age_cam returns them")
        share = mean[mask].sum() / total if total > 0 else 0.0
        focus[name] = round(float(share / mask.mean()), 4)
    return focus


# --------------------------------------------------------------------------- pictures
def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """A uint8 face ``(H, W, 3)`` with a [0, 1] map drawn over it in the jet colours
    (red = high); the map is resized to the face when their sizes differ."""
    show_cam_on_image = settings.optional_import("pytorch_grad_cam.utils.image", "grad-cam",
                                                 "Grad-CAM overlays").show_cam_on_image
    cv2 = settings.optional_import("cv2", "grad-cam", "Grad-CAM overlays")  # comes with it

    image, cam = np.asarray(image), np.asarray(cam, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3 or cam.ndim != 2:
        raise ValueError(f"overlay needs one face (H, W, 3) and one map (h, w), got "
                         f"{image.shape} and {cam.shape}")
    if cam.shape != image.shape[:2]:
        cam = cv2.resize(cam, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    rgb = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
    return show_cam_on_image(rgb, np.clip(cam, 0, 1), use_rgb=True, image_weight=image_weight)


def cam_figure(images: np.ndarray, maps: Mapping[str, np.ndarray],
               titles: Sequence[str] | None = None, size: float = 1.4) -> Figure:
    """Faces on the first row, then one row of overlaid maps per model (``maps``' keys).

    ``images``: uint8 faces, or floats in [0, 1] (turned into uint8 here, as the overlays
    are: one figure, one scale)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    for name, m in maps.items():
        if len(m) != len(images):
            raise ValueError(f"{len(images)} faces but {len(m)} maps for {name!r}")
    if titles is not None and len(titles) != len(images):  # extra ones would title the maps
        raise ValueError(f"{len(images)} faces but {len(titles)} titles: give one per face")
    rows = [images] + [np.stack([overlay(f, c) for f, c in zip(images, m)]) for m in maps.values()]
    labels = [""] * len(images)
    fig = plots.face_grid(np.concatenate(rows), titles=[*(titles or labels), *labels * len(maps)],
                          ncols=len(images), size=size, row_labels=["face", *maps])
    if maps:  # the overlays' scale: jet, as pytorch-grad-cam draws it (blue 0 .. red 1)
        import matplotlib.pyplot as plt

        scale = plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(0, 1))
        bar = fig.colorbar(scale, ax=list(fig.axes), fraction=0.02, pad=0.02, ticks=[0, 0.5, 1])
        bar.set_label("Grad-CAM (1: pulled the age most)", fontsize=8)
        bar.ax.tick_params(labelsize=8)
    return fig
