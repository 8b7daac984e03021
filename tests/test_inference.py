"""Ages from images and checkpoints outside training (agelib.inference), as evaluation sees them."""

import numpy as np
import pytest
import torch
from conftest import face_image, jpeg_bytes
from PIL import Image

from agelib import checkpoints, cli, inference, metrics, models, predict
from agelib.data import cache


def tiny_model(size: int = 32) -> models.AgeModel:
    return models.create_model(models.ModelConfig("test_resnet", img_size=size)).eval()


def test_images_of_another_size_are_cropped_as_evaluation_crops_them():
    model = tiny_model()
    wide = np.random.default_rng(0).integers(0, 256, (3, 48, 72, 3), dtype=np.uint8)
    fitted = np.stack([np.asarray(cache.square_resize(Image.fromarray(w), 32)) for w in wide])
    expected = inference.predict_ages(model, fitted, 32, device="cpu")
    np.testing.assert_allclose(inference.predict_ages(model, wide, 32, device="cpu"), expected,
                               atol=1e-5)  # a centre crop, not a stretch
    mixed = [wide[0], fitted[1], wide[2][:40]]  # a list of any sizes works too
    assert inference.predict_ages(model, mixed, 32, device="cpu").shape == (3,)


def test_predicting_leaves_the_callers_model_as_it_was():
    model = tiny_model().train()  # e.g. checked halfway through training
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    first = inference.predict_ages(model, images, 32, device="cpu")
    assert model.training  # dropout and batch-norm updates still on for the next step
    np.testing.assert_allclose(inference.predict_ages(model, images, 32, device="cpu"), first)
    with pytest.raises(RuntimeError):  # four channels: fails inside the forward pass...
        inference.predict_ages(model, np.zeros((2, 32, 32, 4), np.uint8), 32, device="cpu")
    assert model.training  # ...and the model is given back all the same


def test_resizing_never_shrinks_the_callers_photo(tmp_path):
    (tmp_path / "face.jpg").write_bytes(jpeg_bytes(face_image(0, size=200)))
    photo = Image.open(tmp_path / "face.jpg")
    cache.square_resize(photo, 32)
    assert photo.size == (200, 200) and np.asarray(photo).shape == (200, 200, 3)


def test_a_bare_checkpoint_of_a_model_built_for_its_size_predicts_and_evaluates(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, age in enumerate((20, 35, 50)):
        (folder / f"{age}_0_0_2017010100000000{i}.jpg.chip.jpg").write_bytes(
            jpeg_bytes(face_image(i)))
    files = sorted(folder.iterdir())
    faces = np.stack([inference._read(f, 32) for f in files])  # as evaluation reads them
    true = np.array([float(f.name.split("_")[0]) for f in files])
    # a model whose ages differ face by face across the labels' range (25-55 years), so that
    # a face scored against another file's age changes the MAE
    model = tiny_model(32)
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    raw = inference.predict_ages(model, faces, 32, device="cpu")
    scale = 30 / (raw.max() - raw.min())
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.copy_(40 - scale * (raw.mean() - last.bias))
    pred = inference.predict_ages(model, faces, 32, device="cpu")
    assert pred.min() < 30 and pred.max() > 50

    path = checkpoints.save_checkpoint(model, tmp_path / "bare.pt")  # no train config
    assert predict.load_estimators([str(path)])[0].size == 32
    scores = inference.evaluate_folder(path, folder, device="cpu")
    assert scores["n"] == 3
    assert scores["mae"] == pytest.approx(metrics.mae(pred, true), abs=1e-3)
    assert scores["cs5"] == pytest.approx(metrics.cs_at(pred, true, 5), abs=1e-3)


def test_evaluating_on_the_training_folder_says_the_score_flatters(tmp_path, capsys):
    from agelib.data import sources, utkface

    folder = tmp_path / "faces"
    folder.mkdir()
    for i, age in enumerate((20, 35, 50)):
        (folder / f"{age}_0_0_2017010100000000{i}.jpg.chip.jpg").write_bytes(
            jpeg_bytes(face_image(i)))
    files, _ = utkface.scan_folder(folder)
    trained_here = {"data_fingerprint": sources.image_fingerprint(files["sha1"]), "test_mae": 7.5}
    ours = checkpoints.save_checkpoint(tiny_model(32), tmp_path / "ours.pt", record=trained_here)
    other = checkpoints.save_checkpoint(tiny_model(32), tmp_path / "other.pt",
                                        record={**trained_here, "data_fingerprint": "0" * 12})
    assert cli.main(["evaluate", "--checkpoint", str(ours), "--images", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "the photos 'ours.pt' was trained on" in err and "test MAE 7.5" in err
    assert "note" not in inference.evaluate_folder(other, folder, device="cpu")
    for record, words in (({"mode": "smoke", "data_real": True}, "SMOKE mode on real"),
                          ({"mode": "full", "data_real": False}, "FULL mode on SYNTHETIC")):
        weak = checkpoints.save_checkpoint(tiny_model(32), tmp_path / "weak.pt", record=record)
        note = inference.evaluate_folder(weak, folder, device="cpu")["note"]
        assert f"'weak.pt' was trained in {words} faces: this score checks only" in note
    full = checkpoints.save_checkpoint(tiny_model(32), tmp_path / "full.pt",
                                       record={"mode": "full", "data_real": True})
    assert "note" not in inference.evaluate_folder(full, folder, device="cpu")
    # the same photos as a table of your own: scored the same way
    (folder / "labels.csv").write_text("file,age\n" + "".join(
        f"{name},{name.split('_')[0]}\n" for name in sorted(files["file"])))
    table = inference.evaluate_folder(other, folder / "labels.csv", device="cpu")
    direct = inference.evaluate_folder(other, folder, device="cpu")
    assert (table["n"], table["mae"], table["cs5"]) == (direct["n"], direct["mae"], direct["cs5"])


def test_export_to_a_folder_and_evaluate_on_a_file_say_what_to_give(tmp_path, capsys):
    path = checkpoints.save_checkpoint(tiny_model(32), tmp_path / "bare.pt")
    (tmp_path / "out.onnx").mkdir()
    assert cli.main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "out.onnx")]) == 2
    assert "is a folder: give --out a file name" in capsys.readouterr().err
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes(face_image(1)))
    assert cli.main(["evaluate", "--checkpoint", str(path), "--images", str(photo)]) == 2
    assert "is a file: give the folder" in capsys.readouterr().err


def test_ages_are_the_heads_ages_of_the_evaluation_batch_in_any_batch_size():
    """Catches predict_ages transposing images (H and W swapped), skipping model.eval() or
    head.to_age, augmenting as in training, or losing images between batches."""
    import copy

    from agelib.data import loaders

    torch.manual_seed(0)
    model = models.create_model(models.ModelConfig("test_resnet", head="classification",
                                                   img_size=32)).train()
    images = np.stack([np.asarray(face_image(seed, 32)) for seed in range(5)])
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        x = loaders.BatchTransform(32, train=False)(torch.from_numpy(images).permute(0, 3, 1, 2))
        expected = reference.head.to_age(reference(x)).numpy()
    got = inference.predict_ages(model, images, 32, batch_size=2, device="cpu")
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert model.training


def test_evaluate_scores_cs5_and_lists_the_files_it_skipped(tmp_path, monkeypatch, capsys):
    """Catches evaluate scoring CS at another threshold than 5 years, or dropping (or not
    printing) the files it could not read."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, age in enumerate((20, 35, 50)):
        (folder / f"{age}_0_0_2017010100000000{i}.jpg.chip.jpg").write_bytes(
            jpeg_bytes(face_image(i)))
    (folder / "40_0_0_20170101000000009.jpg.chip.jpg").write_bytes(b"")  # empty: skipped
    path = checkpoints.save_checkpoint(tiny_model(32), tmp_path / "bare.pt")
    # errors of 4.5, 0 and 10 years: CS@5 2/3, CS@4 1/3
    monkeypatch.setattr(inference, "predict_ages", lambda model, images, *a, **k:
                        np.array([24.5, 35.0, 60.0], dtype=np.float32))
    scores = inference.evaluate_folder(path, folder, device="cpu")
    assert (scores["n"], scores["mae"], scores["cs5"]) == (3, pytest.approx(14.5 / 3, abs=1e-4),
                                                           pytest.approx(2 / 3, abs=1e-4))
    assert [s["file"] for s in scores["skipped"]] == ["40_0_0_20170101000000009.jpg.chip.jpg"]
    assert cli.main(["evaluate", "--checkpoint", str(path), "--images", str(folder)]) == 0
    assert "skipped 40_0_0_20170101000000009.jpg.chip.jpg: " in capsys.readouterr().out


def test_images_as_tall_as_the_model_but_wider_are_cropped_not_stretched():
    """Catches (N, size, W) images taken as fitted already: stretched square, not centre-cropped."""
    model = tiny_model()
    wide = np.random.default_rng(1).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    fitted = np.stack([inference._fitted(w, 32) for w in wide])
    np.testing.assert_allclose(inference.predict_ages(model, wide, 32, device="cpu"),
                               inference.predict_ages(model, fitted, 32, device="cpu"), atol=1e-5)
