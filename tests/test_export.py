"""Exported models (ONNX in onnxruntime, TorchScript in torch.jit) give the model's ages.

ONNX exports take seconds each, so every export is made once per module and
shared: resnet18 (regression), a 2-block ViT-Ti (classification), hybrid_atto
(coral, uint8 input) and, through the CLI, resnet18 with a CORN head. TorchScript
is checked for every head kind on resnet18.
"""

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import face_image

from agelib import checkpoints, cli, export, models
from agelib.data.loaders import BatchTransform

SIZE = 32
TOLERANCE = 1e-3  # years, float32


VIT_SIZE = 64  # 4 x 4 patches of 16 px


def random_images(batch: int, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


def face_pixels(batch: int, size: int = SIZE) -> torch.Tensor:
    """Face-like uint8 ``(B, 3, S, S)`` pixels: what a deployed model is fed."""
    faces = np.stack([np.asarray(face_image(seed, size)) for seed in range(batch)])
    return torch.from_numpy(faces).permute(0, 3, 1, 2).contiguous()


def face_images(batch: int, size: int = SIZE) -> torch.Tensor:
    """The same faces normalised as in evaluation (real-looking, not Gaussian noise)."""
    return BatchTransform(size, train=False)(face_pixels(batch, size))


def tiny(backbone: str, head: str = "regression", size: int = SIZE, **fields) -> models.AgeModel:
    torch.manual_seed(0)
    return models.create_model(models.ModelConfig(backbone, head=head, img_size=size, **fields))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each ONNX export made once: name -> (model, path)."""
    folder = tmp_path_factory.mktemp("export")
    made = {}
    resnet = tiny("resnet18")
    made["resnet18"] = resnet, export.to_onnx(resnet, folder / "resnet18.onnx", SIZE)
    vit = tiny("vit_tiny_patch16_224", "classification", VIT_SIZE, backbone_args={"depth": 2})
    made["vit"] = vit, export.to_onnx(vit, folder / "vit.onnx", VIT_SIZE)
    hybrid = tiny("hybrid_atto", "coral")
    made["hybrid"] = hybrid, export.to_onnx(hybrid, folder / "hybrid.onnx", SIZE, input="uint8")
    return made


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_onnx_gives_the_models_ages_at_any_batch(exported, name, batch):
    model, path = exported[name]
    size = VIT_SIZE if name == "vit" else SIZE
    images = [random_images(batch, size), face_images(batch, size)]
    assert export.check_parity(model, path, images) < TOLERANCE


@pytest.mark.parametrize("batch", [1, 5])
def test_hybrid_onnx_takes_uint8_pixels(exported, batch):
    model, path = exported["hybrid"]
    assert export.check_parity(model, path, face_pixels(batch)) < TOLERANCE
    ages = export.predict_exported(path, face_pixels(batch).numpy())
    assert ages.shape == (batch,) and ages.dtype == np.float32


def test_onnx_file_passes_the_checker_and_carries_its_preprocessing(exported):
    _, path = exported["resnet18"]
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["images"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch is symbolic
    assert not list(path.parent.glob("*.data"))  # one self-contained file
    meta = export.read_metadata(path)
    assert meta["image_size"] == str(SIZE) and meta["input"] == "float"
    assert json.loads(meta["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(meta["std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert meta["head"] == "regression" and meta["agelib_version"]
    assert export.read_metadata(exported["hybrid"][1])["input"] == "uint8"
    assert export.read_metadata(exported["vit"][1])["head"] == "classification"


@pytest.mark.parametrize("head", models.HEADS)
def test_torchscript_every_head(tmp_path, head):
    model = tiny("resnet18", head)
    path = export.to_torchscript(model, tmp_path / f"{head}.pt", SIZE)
    assert export.check_parity(model, path, [face_images(1), face_images(5)]) < TOLERANCE
    assert export.read_metadata(path)["head"] == head


def test_torchscript_vit_and_hybrid(tmp_path):
    vit = tiny("vit_tiny_patch16_224", size=VIT_SIZE, backbone_args={"depth": 2})
    hybrid = tiny("hybrid_atto", "corn")
    for name, model, size in (("vit", vit, VIT_SIZE), ("hybrid", hybrid, SIZE)):
        path = export.to_torchscript(model, tmp_path / f"{name}.pt", size, input="uint8")
        pixels = [face_pixels(1, size), face_pixels(5, size)]
        assert export.check_parity(model, path, pixels) < TOLERANCE


@pytest.mark.parametrize("decode", ["expected", "label"])
def test_corn_rewrite_matches_to_age(decode):
    """CORN's cumprod has no ONNX operator; the export's sum of logs must give the same ages."""
    head = models.CornHead(8, num_classes=30, min_age=5, decode=decode)
    logits = torch.randn(64, 29, generator=torch.Generator().manual_seed(1)) * 6
    assert torch.allclose(export.decode_ages(head, logits), head.to_age(logits), atol=1e-4)


def test_exporting_leaves_the_model_untouched():
    model = tiny("resnet18").train()
    export.AgeExport(model)
    assert model.training


def test_clear_errors(tmp_path):
    model = tiny("resnet18")
    with pytest.raises(ValueError, match="image side"):
        export.to_torchscript(model, tmp_path / "m.pt", "64")
    unknown = tmp_path / "m.bin"
    unknown.write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        export.read_metadata(unknown)
    with pytest.raises(ValueError, match="names a torchscript file, but --format is onnx"):
        export._format(tmp_path / "m.pt", "onnx")  # an ONNX export named *.pt: refused
    with pytest.raises(ValueError, match="input must be"):
        export.AgeExport(model, input="bytes")
    with pytest.raises(ValueError, match="AgeModel"):
        export.AgeExport(torch.nn.Linear(2, 2))
    path = export.to_torchscript(model, tmp_path / "u.pt", SIZE, input="uint8")
    with pytest.raises(ValueError, match="uint8"):
        export.check_parity(model, path, random_images(1))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained CORN checkpoint saved the way training saves one."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    checkpoints.save_checkpoint(tiny("resnet18", "corn"), path,
                                train_config={"image_size": SIZE})
    return path


def test_cli_export_round_trip(checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    code = cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(out),
                     "--format", "onnx", "--check", "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "onnx" and report["head"] == "corn"
    assert report["image_size"] == str(SIZE)
    assert report["max_abs_diff_years"] < TOLERANCE
    model, _ = checkpoints.load_checkpoint(checkpoint)
    with torch.no_grad():
        expected = model.head.to_age(model(face_images(3))).numpy()
    assert np.abs(export.predict_exported(out, face_images(3)) - expected).max() < TOLERANCE
    assert "/tmp" not in json.dumps({k: v for k, v in report.items() if k != "path"})


def test_cli_export_torchscript_prints_a_summary(checkpoint, tmp_path, capsys):
    code = cli.main(["export", "--checkpoint", str(checkpoint), "--out",
                     str(tmp_path / "tiny.pt"), "--check"])
    assert code == 0
    text = capsys.readouterr().out
    assert "tiny.pt (torchscript)" in text and "max |age difference|" in text


def test_cli_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a model")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    for path, message in ((bogus, "not a readable checkpoint"),
                          (plain, "not an agelib checkpoint")):
        code = cli.main(["export", "--checkpoint", str(path), "--out",
                         str(tmp_path / "x.onnx")])
        assert code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_checkpoint_without_a_size_asks_for_one(tmp_path):
    path = checkpoints.save_checkpoint(models.create_model(models.ModelConfig("resnet18")),
                                       tmp_path / "nosize.pt")
    with pytest.raises(ValueError, match="--size"):
        export.export_checkpoint(path, tmp_path / "x.onnx")


def test_a_bare_export_name_lands_beside_the_checkpoints(checkpoint, tmp_path, monkeypatch,
                                                         capsys):
    monkeypatch.setenv("AGELIB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", "tiny.onnx"]) == 0
    assert (tmp_path / "home" / "checkpoints" / "tiny.onnx").is_file()
    assert not (tmp_path / "tiny.onnx").exists()  # not wherever the command ran
    assert "wrote home/checkpoints/tiny.onnx (onnx)" in capsys.readouterr().out


def test_export_never_overwrites_a_checkpoint(checkpoint, tmp_path, capsys):
    """`.pt` names both checkpoints and TorchScript files: `--out` equal to the checkpoint
    (or naming another checkpoint) would replace trained weights with an export."""
    import shutil

    victim, other = tmp_path / "victim.pt", tmp_path / "other.pt"
    shutil.copy(checkpoint, victim)
    shutil.copy(checkpoint, other)
    before = victim.read_bytes(), other.read_bytes()
    for out, message in ((victim, "is the checkpoint being exported"),
                         (other, "is an agelib checkpoint")):
        assert cli.main(["export", "--checkpoint", str(victim), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert (victim.read_bytes(), other.read_bytes()) == before
    # an earlier export is a file like any other: exporting again replaces it
    out = tmp_path / "victim-export.pt"
    for _ in range(2):
        assert cli.main(["export", "--checkpoint", str(victim), "--out", str(out)]) == 0
    assert not checkpoints.is_checkpoint(out) and checkpoints.is_checkpoint(victim)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt", "victim-export.pt",
                                                          "victim.pt"]  # no partial file left
    # ... and so is an earlier ONNX export; any other file is refused, untouched
    onnx_out = tmp_path / "victim.onnx"
    for _ in range(2):
        assert cli.main(["export", "--checkpoint", str(victim), "--out", str(onnx_out)]) == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert cli.main(["export", "--checkpoint", str(victim), "--format", "onnx",
                     "--out", str(notes)]) == 2
    assert "exists and is not an export" in capsys.readouterr().err
    assert notes.read_text() == "my notes"


def test_a_wrong_format_or_input_is_refused_before_the_checkpoint_is_read(
        checkpoint, tmp_path, monkeypatch):
    """Catches `export` loading a (possibly large) checkpoint only to refuse a typo."""
    def no_loading(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the settings were checked")

    monkeypatch.setattr(checkpoints, "load_checkpoint", no_loading)
    with pytest.raises(ValueError, match="cannot tell the format"):
        export.export_checkpoint(checkpoint, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="input must be one of"):
        export.export_checkpoint(checkpoint, tmp_path / "model.onnx", input="int8")


def test_a_damaged_checkpoint_says_what_is_wrong(checkpoint, tmp_path):
    payload = torch.load(checkpoint, weights_only=True)
    no_config = {k: v for k, v in payload.items() if k != "model_config"}
    torch.save(no_config, tmp_path / "no_config.pt")
    with pytest.raises(ValueError, match="damaged agelib checkpoint: it has no model_config"):
        checkpoints.load_checkpoint(tmp_path / "no_config.pt")
    swapped = {**payload, "model_config": {**payload["model_config"], "backbone": "resnet34"}}
    torch.save(swapped, tmp_path / "swapped.pt")
    with pytest.raises(ValueError, match=r"do not fit the saved config \(resnet34\): \d+ missing"):
        checkpoints.load_checkpoint(tmp_path / "swapped.pt")


def test_an_export_given_as_a_checkpoint_is_named_for_what_it_is(checkpoint, tmp_path):
    out = export.export_checkpoint(checkpoint, tmp_path / "model.pt")["path"]
    assert checkpoints.is_torchscript(out) and not checkpoints.is_torchscript(checkpoint)
    with pytest.raises(ValueError, match="exported TorchScript model, not a checkpoint"):
        checkpoints.load_checkpoint(out)
    onnx_out = export.export_checkpoint(checkpoint, tmp_path / "model.onnx")["path"]
    with pytest.raises(ValueError, match="exported ONNX model, not a checkpoint"):
        checkpoints.load_checkpoint(onnx_out)


def test_a_uint8_export_refuses_float_images_and_says_what_it_takes(tmp_path):
    model = tiny("resnet18")
    for input, says in (("uint8", "uint8 RGB pixels 0-255"), ("float", "float32 RGB")):
        assert says in export.metadata(model, SIZE, input)["input_description"]
    path = export.to_torchscript(model, tmp_path / "u.pt", SIZE, input="uint8")
    with pytest.raises(ValueError, match="takes uint8 pixels"):  # never silently wrong ages
        export.predict_exported(path, np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert export.predict_exported(path, face_pixels(2).numpy()).shape == (2,)


def test_cli_export_honours_format_size_and_uint8_input(checkpoint, tmp_path, capsys):
    """Catches `export` ignoring --format (a name with no known suffix), --size or --input,
    or checking a uint8 export with float images."""
    out = tmp_path / "model.bin"
    code = cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--format",
                     "torchscript", "--size", "48", "--input", "uint8", "--check", "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert (report["format"], report["image_size"], report["input"]) == ("torchscript", "48",
                                                                          "uint8")
    assert report["max_abs_diff_years"] < TOLERANCE
    assert export.predict_exported(out, face_pixels(2, 48).numpy(), "torchscript").shape == (2,)


def test_an_export_takes_float64_images(tmp_path):
    """Catches float images passed on as float64 (NumPy's default), which the file refuses."""
    model = tiny("resnet18")
    path = export.to_torchscript(model, tmp_path / "m.pt", SIZE)
    images = face_images(2).numpy()
    np.testing.assert_allclose(export.predict_exported(path, images.astype(np.float64)),
                               export.predict_exported(path, images), atol=1e-6)


def test_parity_is_the_worst_of_every_batch(monkeypatch):
    """Catches check_parity reporting only the last batch (a batch-1 mismatch hidden)."""
    model = tiny("resnet18").eval()
    with torch.no_grad():
        true = lambda x: model.head.to_age(model(torch.from_numpy(x))).numpy()  # noqa: E731
    wrong_at_1 = lambda x: true(x) + (10.0 if len(x) == 1 else 0.0)  # noqa: E731
    monkeypatch.setattr(export, "load_exported", lambda path, format=None: (
        wrong_at_1, {"input": "float"}))
    assert export.check_parity(model, "x.onnx", [face_images(1), face_images(5)]) == \
        pytest.approx(10.0, abs=1e-3)


def test_a_float_export_refuses_uint8_pixels(tmp_path):
    """Catches a float export fed uint8 pixels: taken as unnormalised floats, they gave
    confident wrong ages instead of an error (the converse of the uint8 test above)."""
    model = tiny("resnet18")
    path = export.to_torchscript(model, tmp_path / "f.pt", SIZE)
    with pytest.raises(ValueError, match="takes normalised float images.*input='uint8'"):
        export.predict_exported(path, face_pixels(2).numpy())
    with pytest.raises(ValueError, match="takes normalised float images"):
        export.check_parity(model, path, face_pixels(1))
    assert export.check_parity(model, path, face_images(2)) < TOLERANCE


def test_a_torchscript_export_needs_no_onnx(checkpoint, tmp_path, monkeypatch):
    """Catches read_metadata importing onnx for any file, which made reading (and so
    export_checkpoint writing) a TorchScript export fail where onnx is not installed."""
    path = export.to_torchscript(tiny("resnet18"), tmp_path / "m.pt", SIZE)
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    assert export.read_metadata(path)["input"] == "float"
    out = export.export_checkpoint(checkpoint, tmp_path / "ckpt.pt", check=True)
    assert out["format"] == "torchscript" and out["max_abs_diff_years"] < TOLERANCE
