"""From a photo to ages: opening odd files, finding and aligning faces, intervals, the demo's
callback and widget, and ``python -m agelib predict``. CPU only, no network: MTCNN's weights
ship in facenet-pytorch and the portraits in matplotlib and scikit-image."""

import io
import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Runs, face_image, jpeg_bytes, odd_mode_image
from PIL import Image

from agelib import checkpoints, cli, demo, faces, models, predict, settings


# --------------------------------------------------------------------------- shared material
@pytest.fixture(scope="module")
def portraits():
    return faces.shipped_portraits()


@pytest.fixture(scope="module")
def found(portraits):
    """Faces of each shipped portrait (detected once for the module)."""
    return {name: faces.detect_faces(path) for name, path in portraits.items()}


def tiny(head: str, seed: int = 0) -> models.AgeModel:
    torch.manual_seed(seed)
    return models.create_model(models.ModelConfig("resnet18", head=head, img_size=32)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny checkpoints and awkward photos on disk, for the CLI."""
    base = tmp_path_factory.mktemp("predict")
    for head in ("classification", "regression"):
        smoke = {"mode": "smoke", "data_real": False} if head == "regression" else None
        checkpoints.save_checkpoint(tiny(head), base / f"{head}.pt",
                                    train_config={"image_size": 32}, record=smoke)
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(base / "noise.png")
    (base / "notes.jpg").write_text("this is not a picture\n")
    return base


@pytest.fixture(scope="module", autouse=True)
def runs(files, portraits):
    """The CLI runs start with the module's first test, so their imports overlap the others."""
    env = {k: v for k, v in os.environ.items() if k not in ("AGELIB_DATA", "AGELIB_DEVICE")}
    env["AGELIB_HOME"] = str(files / "home")
    runs = Runs(env)
    runs.start("json", "predict", "--checkpoint", files / "classification.pt", "--json",
               portraits["grace_hopper"], files / "noise.png", files / "notes.jpg")
    runs.start("text", "predict", "--checkpoint", files / "regression.pt", "--portraits")
    yield runs
    runs.stop()


# --------------------------------------------------------------------------- detection
def test_shipped_portraits_are_files_in_the_installed_packages(portraits):
    assert set(portraits) == {"grace_hopper", "astronaut"}
    assert all(path.is_file() for path in portraits.values())


def test_one_face_per_portrait_with_a_plausible_box(found, portraits):
    for name, got in found.items():
        assert len(got) == 1, name
        face = got[0]
        width, height = Image.open(portraits[name]).size
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert 0.15 < (x1 - x0) / width < 0.6, name
        assert face.probability > 0.95
        (lx, ly), (rx, ry), _, (mlx, mly), _ = face.landmarks
        assert x0 < lx < rx < x1 and max(ly, ry) < mly < y1  # eyes above the mouth, in the box
        assert face.crop.size == (faces.CROP_SIZE, faces.CROP_SIZE) and face.crop.mode == "RGB"


def test_alignment_puts_the_landmarks_on_the_utkface_template(found):
    for name, got in found.items():
        face = got[0]
        to_photo = faces.alignment(face.landmarks)  # crop -> photo
        points = np.c_[face.landmarks, np.ones(5)] @ np.linalg.inv(to_photo).T  # photo -> crop
        on_crop = points[:, :2] / faces.CROP_SIZE
        assert abs(on_crop[0, 1] - on_crop[1, 1]) < 0.01, name  # eyes level
        assert np.abs(on_crop - faces.UTKFACE_LANDMARKS).max() < 0.05, name  # faces differ a bit
    with pytest.raises(ValueError, match="degenerate"):
        faces.alignment(np.zeros((5, 2)))


def test_a_crop_much_smaller_than_the_photo_is_drawn_larger_then_shrunk():
    """A phone photo: the face is twice the crop's size. The crop must be the photo, shrunk
    (landmarks already on the template), not a corner of it or a black square."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (25, 25, 3), np.uint8)).resize(
        (400, 400), Image.Resampling.BICUBIC)
    crop = faces.align_face(photo, faces.UTKFACE_LANDMARKS * 400, 200)
    shrunk = photo.resize((200, 200), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(crop, float) - np.asarray(shrunk, float)).mean() < 3


def test_faces_come_left_to_right_and_unsure_ones_are_dropped(monkeypatch):
    """As detect_faces promises, whatever order the detector gives (here: top-right first)."""
    boxes = np.array([[300, 10, 400, 110], [10, 300, 110, 400], [150, 150, 250, 250]], float)
    points = np.stack([b[:2] + (b[2:] - b[:2]) * faces.UTKFACE_LANDMARKS for b in boxes])

    class Detector:
        def detect(self, image, landmarks=True):
            return boxes, np.array([0.99, 0.98, 0.5]), points

    monkeypatch.setattr(faces, "detector", lambda: Detector())
    found = faces.detect_faces(Image.new("RGB", (420, 420)), crop_size=32)
    assert [f.box[0] for f in found] == [10, 300]  # left to right; the 0.5 face dropped
    assert [f.probability for f in found] == pytest.approx([0.98, 0.99])


def test_the_template_is_where_real_utkface_faces_are(real_folder):
    images = sorted(real_folder.glob("*.jpg"))[:12]
    assert np.abs(faces.landmark_template(images) - faces.UTKFACE_LANDMARKS).max() < 0.04


def test_the_template_is_the_committed_measurement(monkeypatch):
    """UTKFACE_LANDMARKS are the numbers of the newest `python -m agelib landmarks` record."""
    from agelib import settings

    monkeypatch.setenv("AGELIB_RESULTS", str(settings.repo_root() / "results"))
    record = faces.latest_template_record("UTKFace")
    assert record is not None, "no results/landmarks record: run `python -m agelib landmarks`"
    assert record["data_real"] and record["n_found"] >= 0.95 * record["n_images"] >= 950
    assert np.abs(np.array(record["template"]) - faces.UTKFACE_LANDMARKS).max() <= 0.0005 + 1e-9


def test_measuring_the_template_draws_the_same_faces_and_records_them(real_folder, results):
    from agelib.data import sources

    utk = sources.load_folder(real_folder)
    first = faces.measure_template(utk, n=6, seed=3)
    again = faces.measure_template(utk, n=6, seed=3, save=False)
    assert first["template"] == again["template"] and first["n_images"] == 6
    assert faces.latest_template_record(utk.name)["template"] == first["template"]
    assert np.abs(np.array(first["template"]) - faces.UTKFACE_LANDMARKS).max() < 0.04
    assert sorted(p.name for p in (results / "landmarks").iterdir())[0].endswith(f"-{utk.name}.json")


def test_a_template_record_says_what_was_measured(synthetic_faces, results):
    record = faces.measure_template(synthetic_faces, n=5, seed=0)
    assert record["data"] == "synthetic" and not record["data_real"]
    assert record["n_images"] == 5 and 0 < record["n_found"] <= 5
    assert np.array(record["template"]).shape == (5, 2)
    assert faces.latest_template_record("synthetic") == record
    assert faces.latest_template_record("UTKFace") is None  # none in this results folder
    mine = {**record, "data": "my-UTKFace"}  # a file name that ends in -UTKFace.json
    (results / "landmarks" / "20991231-000000-my-UTKFace.json").write_text(json.dumps(mine))
    assert faces.latest_template_record("UTKFace") is None
    with pytest.raises(ValueError, match="at least one image"):
        faces.measure_template(synthetic_faces, n=0)


def test_the_template_does_not_depend_on_the_frame_around_the_faces(real_folder):
    # MTCNN puts the landmarks of a face that fills the crop in the wrong place (the eyes on
    # the eyebrows): the template must come out the same with a wider border
    images = sorted(real_folder.glob("*.jpg"))[:12]
    framed, wider = faces.landmark_template(images), faces.landmark_template(images, pad=0.5)
    assert np.abs(framed - wider).max() < 0.02
    assert 0.25 < framed[:2, 1].mean() < 0.33  # eyes on the darkest rows of UTKFace's mean face


def test_blank_noise_and_tiny_images_have_no_face():
    noise = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for image in (Image.new("RGB", (256, 256), (128, 128, 128)), noise,
                  Image.new("RGB", (8, 8), (200, 150, 120)),
                  Image.new("RGB", (20000, 1)), Image.new("RGB", (3, 9000))):  # strips
        assert faces.detect_faces(image) == []
    message = faces.no_face_message("beach.jpg")
    assert "no face found in beach.jpg" in message and "frontal" in message


def test_arrays_of_any_photo_layout_open_and_others_say_why():
    grey = np.full((40, 30), 90, np.uint8)
    for array in (grey, grey[:, :, None], np.dstack([grey] * 3), np.dstack([grey] * 4)):
        assert faces.open_photo(array).size == (30, 40)
    for bad in (np.zeros((40, 30, 5), np.uint8), np.zeros((0, 0, 3), np.uint8),
                np.zeros((40, 30, 3), np.float32)):
        with pytest.raises(faces.UnreadablePhoto, match="expected a non-empty uint8"):
            faces.open_photo(bad)


def test_min_prob_must_be_a_probability():
    with pytest.raises(ValueError, match="between 0 and 1"):
        faces.detect_faces(Image.new("RGB", (64, 64)), min_prob=90)


# --------------------------------------------------------------------------- awkward photos
def test_unreadable_photos_say_why(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    whole = jpeg_bytes(face_image(0, 64))
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    cases = [(tmp_path / "missing.jpg", "no file 'missing.jpg'"),
             (tmp_path, "is a folder"),
             (tmp_path / "empty.jpg", "empty"),
             (tmp_path / "notes.jpg", "not a picture"),
             (tmp_path / "cut.jpg", "damaged or incomplete"),
             (b"", "empty"),
             (b"GIF89a nonsense", "not a picture"),
             (np.zeros((4, 4, 3), dtype=np.float32), "uint8")]
    for source, why in cases:
        with pytest.raises(faces.UnreadablePhoto, match=why):
            faces.open_photo(source)
    with pytest.raises(faces.UnreadablePhoto, match="cannot open a int"):
        faces.open_photo(42)
    with pytest.raises(faces.UnreadablePhoto, match="damaged or incomplete"):
        faces.open_photo(Image.open(tmp_path / "cut.jpg"))  # opened lazily by the caller


def test_any_pillow_mode_becomes_rgb(tmp_path):
    rgb = face_image(3, 48)
    for mode in ("L", "RGBA", "CMYK", "P", "I;16"):
        suffix = "jpg" if mode in ("L", "CMYK") else "png"
        path = tmp_path / f"face-{mode.replace(';', '')}.{suffix}"
        odd_mode_image(rgb, mode).save(path)
        photo = faces.open_photo(path)
        assert photo.mode == "RGB" and photo.size == (48, 48), mode


def test_exif_orientation_is_applied_before_detection(found, portraits, tmp_path):
    upright = Image.open(portraits["grace_hopper"])
    sideways = upright.rotate(90, expand=True)  # as a phone stores a portrait
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    path = tmp_path / "phone.jpg"
    sideways.save(path, exif=exif, quality=95)
    assert faces.open_photo(path).size == upright.size
    (face,) = faces.detect_faces(path)
    assert np.allclose(face.box, found["grace_hopper"][0].box, atol=8)


def test_huge_photo_is_searched_smaller_and_boxes_map_back(portraits, found):
    big = Image.new("RGB", (6000, 4000), (90, 120, 150))
    big.paste(Image.open(portraits["grace_hopper"]).resize((1536, 1800)), (2000, 1000))
    (face,) = faces.detect_faces(big)
    expected = np.array(found["grace_hopper"][0].box) * 3 + [2000, 1000, 2000, 1000]
    width = expected[2] - expected[0]
    assert np.abs(np.array(face.box) - expected).max() < 0.08 * width
    # the landmarks map back too (the crop is aligned on them)
    small = found["grace_hopper"][0].landmarks * 3 + [2000, 1000]
    assert np.abs(face.landmarks - small).max() < 0.08 * width
    assert face.crop.size == (faces.CROP_SIZE, faces.CROP_SIZE)


def test_decompression_bombs_are_refused(monkeypatch):
    data = io.BytesIO()
    Image.new("RGB", (64, 64)).save(data, "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(faces.UnreadablePhoto, match="more than the 1,000 pixels"):
        faces.open_photo(data.getvalue())


# --------------------------------------------------------------------------- intervals
def test_classification_interval_is_the_central_quantiles():
    probs = torch.zeros(2, 10)
    probs[0, 2:7] = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1])
    probs[1, 6] = 1.0  # certain: the interval is one age
    head = models.ClassificationHead(8, num_classes=10, min_age=20)
    dist = predict.age_distribution(head, torch.log(probs + 1e-12))
    assert torch.allclose(dist, probs, atol=1e-6)
    low, high = predict.central_interval(dist, level=0.8, min_age=20)
    assert low.tolist() == [22, 26] and high.tolist() == [25, 26]
    # what they promise: 0.1+0.2+0.4+0.2 (whole years: at least 80%), and all of a certainty
    mass = predict.interval_mass(dist.numpy(), low.numpy(), high.numpy(), min_age=20)
    np.testing.assert_allclose(mass, [0.9, 1.0], atol=1e-6)
    low, high = predict.central_interval(dist, level=0.5, min_age=20)
    assert low.tolist() == [23, 26] and high.tolist() == [25, 26]
    with pytest.raises(ValueError, match="between 0 and 1"):
        predict.central_interval(dist, level=1.0)


@pytest.mark.parametrize("head_class", [models.CoralHead, models.CornHead])
def test_ordinal_outputs_give_a_distribution_that_matches_to_age(head_class):
    torch.manual_seed(0)
    head = head_class(16, num_classes=30, min_age=5)
    out = head(torch.randn(4, 16) * 3)
    dist = predict.age_distribution(head, out)  # (4, 30)
    assert dist.shape == (4, 30) and (dist >= 0).all()
    assert torch.allclose(dist.sum(1), torch.ones(4), atol=1e-5)
    mean = (dist * torch.arange(5, 35)).sum(1)
    assert torch.allclose(mean, head.to_age(out), atol=1e-3)


def test_ensemble_interval_is_mean_plus_minus_z_sd():
    ages = np.array([[30.0, 10.0], [34.0, 10.0], [38.0, 10.0]])
    mean, low, high = predict.ensemble_interval(ages, level=0.8)
    assert mean.tolist() == [34.0, 10.0] and low[1] == high[1] == 10.0
    assert np.isclose(high[0] - mean[0], 1.2816 * 4, atol=1e-3)
    assert predict.ensemble_interval(np.array([[1.0], [9.0]]))[1][0] == 0.0  # never below 0
    mean, low, high = predict.ensemble_interval(np.array([[-2.0], [-1.0]]))  # a baby, badly
    assert mean[0] == 0.0 and low[0] <= mean[0] <= high[0]  # no negative age, held inside
    with pytest.raises(ValueError, match="at least 2"):
        predict.ensemble_interval(ages[:1])


def test_the_interval_kind_follows_the_models(found):
    crops = [found["grace_hopper"][0].crop, found["astronaut"][0].crop]
    as_estimator = lambda m: predict.AgeEstimator(m, 32)  # noqa: E731
    cls, coral, reg1, reg2 = tiny("classification"), tiny("coral"), tiny("regression", 1), \
        tiny("regression", 2)
    cases = {"distribution": [cls], "ensemble": [reg1, reg2], "none": [reg1]}
    cases["mixture"] = [cls, coral]  # same ages 0..116: their distributions are averaged
    for name, members in cases.items():
        ages, low, high, kind, dist = predict.estimate_ages(
            predict.load_estimators([as_estimator(m) for m in members]), crops)
        assert ages.shape == (2,) and np.isfinite(ages).all()
        if name == "none":
            assert kind == "none" and low is None and dist is None
            assert "regression" in predict.INTERVAL_KINDS["none"]
            continue
        assert kind == ("ensemble" if name == "ensemble" else "distribution")
        assert (low <= high).all()
        if dist is not None:
            assert dist.shape == (2, 117) and np.allclose(dist.sum(1), 1, atol=1e-5)
            assert (low <= ages + 1).all() and (ages - 1 <= high).all()


def biased(head: str, bias: torch.Tensor) -> models.AgeModel:
    """A model whose head ignores the face and says ``bias`` (its last layer's)."""
    model = tiny(head)
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(bias)
    return model


def test_the_age_shown_is_never_negative_nor_outside_its_interval(found):
    crops = [found["astronaut"][0].crop]
    as_estimator = lambda m: predict.AgeEstimator(m, 32)  # noqa: E731
    baby = biased("regression", torch.tensor([-1.5]))
    alone = predict.estimate_ages([as_estimator(baby)], crops)
    assert alone.ages[0] == 0.0
    # a belief with 90% on ages 0-2 and a long tail: its mean (about 6.7) is past its
    # central 80% (0-2), so the interval is widened to hold it
    logits = torch.full((117,), -10.0)
    logits[:3], logits[3:] = np.log(0.3), np.log(0.1 / 114)
    skewed = predict.estimate_ages([as_estimator(biased("classification", logits))], crops)
    assert skewed.ages[0] > 5 and skewed.low[0] <= skewed.ages[0] <= skewed.high[0]


def test_an_ensemble_of_distribution_heads_averages_every_models_belief(found):
    """One model sure of 20, another of 40: the ensemble's belief is half on each."""
    crops = [found["astronaut"][0].crop]
    sure = {}
    for age in (20, 40):
        logits = torch.full((117,), -30.0)
        logits[age] = 30.0
        sure[age] = predict.AgeEstimator(biased("classification", logits), 32)
    est = predict.estimate_ages([sure[20], sure[40]], crops)
    assert est.interval_kind == "distribution"
    assert est.distribution[0, 20] == pytest.approx(0.5) == est.distribution[0, 40]
    assert est.ages[0] == pytest.approx(30.0)
    assert (est.low[0], est.high[0]) == (20, 40)


def test_estimates_have_names_and_need_crops(found):
    est = predict.estimate_ages([predict.AgeEstimator(tiny("coral"), 32)],
                                [found["astronaut"][0].crop])
    assert est.interval_kind == "distribution" and est.distribution.shape == (1, 117)
    assert est.low[0] <= est.high[0]
    with pytest.raises(ValueError, match="no face crops"):
        predict.estimate_ages([predict.AgeEstimator(tiny("coral"), 32)], [])


def test_a_model_without_an_image_size_is_refused():
    model = models.create_model(models.ModelConfig("resnet18", head="classification"))
    with pytest.raises(ValueError, match="image size"):
        predict.load_estimators(model)
    with pytest.raises(ValueError, match="cannot predict with a dict"):
        predict.load_estimators([{}])


# --------------------------------------------------------------------------- the demo
def test_annotate_returns_a_picture_and_a_table(portraits):
    picture, table = demo.annotate(portraits["astronaut"], predict.AgeEstimator(tiny("coral"), 32))
    assert isinstance(picture, Image.Image) and picture.size == (512, 512)
    assert list(table.columns) == ["face", "x0", "y0", "x1", "y1", "probability", "age", "low",
                                   "high", "interval"]
    assert len(table) == 1 and table["interval"][0] == "distribution"
    assert table["low"][0] <= table["high"][0]
    plain = np.asarray(faces.open_photo(portraits["astronaut"]))
    assert (np.asarray(picture) != plain).any()  # the box and label were drawn


def test_annotate_with_no_face_gives_the_photo_and_an_empty_table():
    noise = np.random.default_rng(2).integers(0, 256, (100, 140, 3), dtype=np.uint8)
    picture, table = demo.annotate(noise, predict.AgeEstimator(tiny("regression"), 32))
    assert picture.size == (140, 100) and table.empty and "age" in table.columns


def test_widget_shows_a_portrait_a_missing_face_and_a_bad_file():
    pytest.importorskip("ipywidgets")
    panel = demo.age_widget(predict.AgeEstimator(tiny("classification"), 32))
    (upload, choice), picture, message = panel.children[0].children, *panel.children[1:]
    choice.value = "grace_hopper"
    assert picture.value[:4] == b"\x89PNG" and "<table" in message.value
    assert "grace_hopper: 1 face(s); 80% intervals" in message.value

    def send(name: str, content: bytes) -> None:
        upload.value = ({"name": name, "type": "image/png", "size": len(content),
                         "content": memoryview(content), "last_modified": datetime.now()},)

    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (80, 80, 3), dtype=np.uint8)
                    ).save(noise, "PNG")
    send("noise.png", noise.getvalue())
    assert "no face found in noise.png" in message.value
    send("notes.png", b"this is not a picture")
    assert "Cannot use this file:</b> &#x27;notes.png&#x27; is not a picture" in message.value
    assert picture.value == b""


def test_widget_says_a_smoke_models_ages_are_no_estimates_and_ignores_the_placeholder():
    """Catches the smoke-model note dropped from the widget's answers, and picking the
    "(pick a portrait)" placeholder again failing with a KeyError inside the widget."""
    pytest.importorskip("ipywidgets")
    smoke = predict.AgeEstimator(tiny("classification"), 32, "tiny.pt",
                                 {"mode": "smoke", "data_real": True})
    panel = demo.age_widget(smoke)
    (upload, choice), picture, message = panel.children[0].children, *panel.children[1:]
    choice.value = "grace_hopper"
    assert message.value.startswith("<p><b>Note:</b> these ages are not estimates yet")
    shown = message.value
    choice.value = "(pick a portrait)"  # back to the placeholder: nothing new to show
    assert message.value == shown


def test_draw_predictions_labels_each_face(found, portraits):
    face = found["grace_hopper"][0]
    p = predict.FacePrediction(face.box, face.probability, 34.4, 28.0, 41.0, "distribution")
    assert p.label() == "age 34 (28-41)"
    q = predict.FacePrediction(face.box, face.probability, 34.4, None, None, "none")
    assert q.label() == "age 34"
    drawn = predict.draw_predictions(portraits["grace_hopper"], [p])
    assert drawn.size == (512, 600)
    table = predict.predictions_table([p, q])
    assert isinstance(table, pd.DataFrame) and table["face"].tolist() == [1, 2]


# --------------------------------------------------------------------------- the CLI
def test_cli_predict_json_reports_faces_and_problems(runs):
    result = runs["json"]
    assert result.returncode == 1, result.stderr  # one file could not be read
    grace, noise, notes = json.loads(result.stdout)
    assert grace["image"].endswith("grace_hopper.jpg") and len(grace["faces"]) == 1
    face = grace["faces"][0]
    assert set(face) == {"box", "probability", "age", "low", "high", "interval_kind", "level"}
    assert len(face["box"]) == 4 and face["interval_kind"] == "distribution"
    assert face["low"] <= face["high"] and face["level"] == 0.8
    assert noise["faces"] == [] and "error" in notes
    assert "no face found in noise.png" in result.stderr
    assert "'notes.jpg' is not a picture" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_predict_on_the_shipped_portraits(runs):
    result = runs["text"]
    assert result.returncode == 0, result.stderr
    assert "grace_hopper.jpg: 1 face(s)" in result.stdout
    assert "astronaut.png: 1 face(s)" in result.stdout
    assert result.stdout.count("  face 1: box (") == 2
    assert result.stdout.count("no interval: a single regression model") == 1  # said once
    assert "regression.pt: SMOKE mode, SYNTHETIC faces" in result.stderr  # said first


def test_only_models_trained_to_check_the_code_come_with_a_caveat():
    model = tiny("regression")
    full = predict.AgeEstimator(model, 32, "a.pt", {"mode": "full", "data_real": True})
    smoke = predict.AgeEstimator(model, 32, "b.pt", {"mode": "smoke", "data_real": True})
    assert predict.caveat([full]) is None and predict.caveat([predict.AgeEstimator(model, 32)]) is None
    assert "b.pt: SMOKE mode, real faces" in predict.caveat([full, smoke])


def test_cli_predict_refuses_a_bad_level(files, portraits, capsys):
    code = cli.main(["predict", "--checkpoint", str(files / "classification.pt"), "--level",
                     "80", str(portraits["astronaut"])])
    assert code == 2 and "between 0 and 1" in capsys.readouterr().err


def test_cli_predict_needs_a_photo(files, capsys):
    code = cli.main(["predict", "--checkpoint", str(files / "classification.pt")])
    assert code == 2 and "--portraits" in capsys.readouterr().err


def test_a_non_monotone_ordinal_output_becomes_a_distribution():
    """A barely trained CORN/CORAL head may say P(age > 1) > P(age > 0): the negative
    P(age = 1) is clipped to 0 and the rest renormalised, so intervals stay valid."""
    probs = predict.ordinal_to_distribution(torch.tensor([[0.3, 0.6]]))
    np.testing.assert_allclose(probs[0].numpy(), [0.7 / 1.3, 0.0, 0.6 / 1.3], atol=1e-6)


def test_chapter_03s_interval_by_hand_promises_what_interval_mass_says():
    """Chapter 03 computes an interval and its mass by hand (the lesson); agelib's
    interval_mass, which chapter 11 calls, must agree with it."""
    path = Path(__file__).resolve().parents[1] / "notebooks" / "03_classification.ipynb"
    cell = next("".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                if "".join(c["source"]).startswith("def interval(logits"))
    scope: dict = {"torch": torch}
    exec(cell.split("\nfor loss")[0], scope)  # the function alone, not the loop over runs
    logits = torch.randn(6, 117) * 3
    lo, hi, mass = scope["interval"](logits)
    expected = predict.interval_mass(logits.softmax(-1).numpy(), lo.numpy(), hi.numpy())
    np.testing.assert_allclose(mass.numpy(), expected, atol=1e-5)


# --------------------------------------------------------------------------- the demo
def test_an_upload_is_read_from_ipywidgets_8_and_7():
    """Catches _uploaded reading only ipywidgets 8's tuple (Colab's ipywidgets 7 gives a dict
    of name -> file, and every upload there failed)."""
    v8 = ({"name": "me.png", "type": "image/png", "content": memoryview(b"png!")},)
    v7 = {"me.png": {"metadata": {"name": "me.png"}, "content": b"png!"}}
    assert demo._uploaded(v8) == demo._uploaded(v7) == ("me.png", b"png!")
    assert demo._uploaded(()) is None and demo._uploaded({}) is None


def test_the_summary_states_the_level_asked_for_and_escapes_the_file_name():
    """Catches the text saying 80% whatever the level, and a file name put into HTML raw."""
    table = pd.DataFrame({"face": [0], "age": [30.0], "low": [25.0], "high": [36.0],
                          "interval": ["distribution"]})
    assert "me.png: 1 face(s); 50% intervals" in demo.summary("me.png", table, level=0.5)
    empty = demo.summary("<b>&.png", table.iloc[:0])
    assert "no face found in &lt;b&gt;&amp;.png" in empty and "<b>" not in empty


def test_annotate_uses_the_level_asked_for(monkeypatch):
    """Catches annotate not passing level (and min_prob) on: the widget's level did nothing."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # restored afterwards: seeding sets it
    settings.seed_everything(0)
    model = models.create_model(models.ModelConfig("resnet18", head="classification", img_size=32)).eval()
    estimator = predict.AgeEstimator(model, 32)
    photo = faces.shipped_portraits()["astronaut"]
    width = {level: float((t["high"] - t["low"]).iloc[0])
             for level in (0.5, 0.95) for t in [demo.annotate(photo, estimator, level=level)[1]]}
    assert width[0.5] < width[0.95]


# --------------------------------------------------------------------------- more detection checks
class FixedDetector:
    """MTCNN's answer for one face at ``box`` (landmarks on the template), recording the
    size of each image it searched."""

    def __init__(self, box, prob):
        self.box, self.prob, self.searched = np.array([box], float), np.array([prob]), []

    def detect(self, image, landmarks=True):
        self.searched.append(image.size)
        b = self.box[0]
        return self.box, self.prob, (b[:2] + (b[2:] - b[:2]) * faces.UTKFACE_LANDMARKS)[None]


def test_a_face_exactly_as_sure_as_min_prob_is_kept(monkeypatch):
    """Catches a strict `>` where detect_faces promises faces with probability >= min_prob."""
    monkeypatch.setattr(faces, "detector", lambda: FixedDetector([10, 10, 60, 60], 0.9))
    assert len(faces.detect_faces(Image.new("RGB", (100, 100)), min_prob=0.9, crop_size=32)) == 1


def test_a_wide_photo_is_searched_with_its_long_side_at_most_max_side(monkeypatch):
    """Catches a photo shrunk by its short side (a 3000 px panorama searched at full cost)."""
    found = FixedDetector([10, 10, 60, 60], 0.99)
    monkeypatch.setattr(faces, "detector", lambda: found)
    (face,) = faces.detect_faces(Image.new("RGB", (3000, 600)), crop_size=32)
    assert max(found.searched[0]) <= faces.MAX_SIDE
    assert face.box[2] == pytest.approx(60 * 3000 / found.searched[0][0])  # mapped back


def test_alignment_places_the_template_at_the_crop_size_asked_for():
    """Catches alignment scaling the template by the default 200 px whatever size is asked."""
    landmarks = faces.UTKFACE_LANDMARKS * 400 + 30  # a face twice a 200 px crop, shifted
    matrix = faces.alignment(landmarks, size=100)  # crop -> photo
    on_photo = np.c_[faces.UTKFACE_LANDMARKS * 100, np.ones(5)] @ matrix.T
    assert np.abs(on_photo[:, :2] - landmarks).max() < 1e-6
    photo = Image.new("RGB", (500, 500), (200, 100, 50))
    assert faces.align_face(photo, landmarks, 100).size == (100, 100)


def test_a_photo_just_over_the_pixel_limit_is_refused_too(monkeypatch):
    """Catches photos between one and two times MAX_IMAGE_PIXELS, where Pillow only warns,
    being opened anyway."""
    data = io.BytesIO()
    Image.new("RGB", (64, 64)).save(data, "PNG")  # 4,096 pixels: between 3,000 and 6,000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    with pytest.raises(faces.UnreadablePhoto, match="more than the 3,000 pixels"):
        faces.open_photo(data.getvalue())


def test_the_latest_template_record_is_the_newest(results):
    """Catches latest_template_record giving the oldest measurement instead of the newest."""
    folder = results / "landmarks"
    folder.mkdir(parents=True)
    for date, x in (("2026-01-01T00:00:00+00:00", 0.1), ("2026-06-01T00:00:00+00:00", 0.2)):
        record = {"data": "UTKFace", "template": [[x, x]] * 5, "date": date}
        (folder / f"{date[:10].replace('-', '')}-000000-UTKFace.json").write_text(
            json.dumps(record))
    assert faces.latest_template_record("UTKFace")["template"][0] == [0.2, 0.2]


def test_cli_predict_passes_min_prob_and_level(files, monkeypatch, capsys):
    """Catches `predict` ignoring --min-prob (or --level), which the note then misreports."""
    seen = {}
    monkeypatch.setattr(predict, "load_estimators", lambda checkpoints: ["model"])
    monkeypatch.setattr(predict, "caveat", lambda estimators: None)

    def fake_predict_faces(estimators, photo, level=0.8, min_prob=0.9):
        seen.update(level=level, min_prob=min_prob)
        return []

    monkeypatch.setattr(predict, "predict_faces", fake_predict_faces)
    code = cli.main(["predict", "--checkpoint", "m.pt", "--min-prob", "0.5", "--level", "0.9",
                     str(files / "noise.png")])
    assert code == 0 and seen == {"level": 0.9, "min_prob": 0.5}
    assert "probability >= 0.5" in capsys.readouterr().err


def test_a_fine_pattern_is_averaged_not_aliased_when_the_crop_shrinks_it():
    """Catches align_face sampling a large face directly (no draw-larger-then-antialias):
    a 1-pixel checkerboard shrunk 4 times must come out mid-grey, not a wrong flat shade."""
    board = ((np.indices((800, 800)).sum(axis=0) % 2) * 255).astype(np.uint8)
    photo = Image.fromarray(np.dstack([board] * 3))
    crop = np.asarray(faces.align_face(photo, faces.UTKFACE_LANDMARKS * 800 + 0.3, 200), float)
    assert abs(crop.mean() - 127.5) < 10


def test_the_template_sample_does_not_depend_on_the_order_of_the_samples(monkeypatch):
    """Catches measure_template drawing from the samples as they come instead of in file-name
    order (the same seed would measure other faces after a reload)."""
    import types

    monkeypatch.setattr(faces, "_crop_landmarks", lambda image, pad: np.full((5, 2), image))
    rows = pd.DataFrame({"file": [f"{i:02d}.jpg" for i in range(20)],
                         "sha1": [float(i) for i in range(20)]})

    def measured(samples):
        data = types.SimpleNamespace(name="x", real=False, fingerprint="f", samples=samples,
                                     open_image=lambda sha1: sha1)
        return faces.measure_template(data, n=3, seed=4, save=False)["template"]

    assert measured(rows) == measured(rows.iloc[::-1])


def test_estimates_use_the_evaluation_model_and_transform_and_leave_the_mode_as_it_was():
    """Catches ages taken in training mode (BatchNorm's batch statistics) or from augmented
    crops, and a model left in eval mode by a call made in the middle of training."""
    from agelib.data import cache, loaders

    model = tiny("classification").train()  # as a notebook has it halfway through training
    rng = np.random.default_rng(0)
    crops = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(3)]
    est = predict.estimate_ages([predict.AgeEstimator(model, 32)], crops)
    assert model.training  # put back as it was
    pixels = np.stack([np.asarray(cache.square_resize(c, 32)) for c in crops])
    transform = loaders.BatchTransform(32, train=False)
    with torch.no_grad():
        out = model.eval()(transform(torch.as_tensor(pixels).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(est.ages, model.head.to_age(out).numpy(), rtol=1e-5, atol=1e-5)


def test_the_latest_upload_is_the_one_shown_and_its_name_is_escaped():
    """Catches _uploaded taking the first file of ipywidgets 7's dict (which keeps earlier
    uploads: the widget kept showing the first photo), a file name put raw into the faces
    table's HTML, and a full-size PNG sent to the browser."""
    v7 = {"old.png": {"metadata": {"name": "old.png"}, "content": b"old"},
          "new.png": {"metadata": {"name": "new.png"}, "content": b"new"}}
    assert demo._uploaded(v7) == ("new.png", b"new")
    table = pd.DataFrame({"face": [0], "age": [30.0], "low": [25.0], "high": [36.0],
                          "interval": ["distribution"]})
    assert "<b>" not in demo.summary("<b>&.png", table).split("</p>")[0]
    big = Image.new("RGB", (2000, 1000))
    assert Image.open(io.BytesIO(demo._png(big))).size == (640, 320)


# --------------------------------------------------------------------------- from mutation testing
def test_a_head_whose_ages_start_above_0_gives_its_interval_in_years(monkeypatch):
    """Catches the interval, or a face's distribution, read as starting at age 0, not min_age."""
    torch.manual_seed(0)
    model = models.create_model(models.ModelConfig("resnet18", head="classification", img_size=32,
                                                   num_classes=20, min_age=10)).eval()
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # sure of class 5: age 15
        last.weight.zero_()
        last.bias.fill_(-30.0)
        last.bias[5] = 30.0
    monkeypatch.setattr(faces, "detector", lambda: FixedDetector([10, 10, 60, 60], 0.99))
    (p,) = predict.predict_faces(predict.AgeEstimator(model, 32), Image.new("RGB", (100, 100)))
    assert p.age == pytest.approx(15.0) and (p.low, p.high) == (15.0, 15.0)
    assert p.min_age == 10 and p.min_age + int(np.argmax(p.distribution)) == 15


def test_predict_faces_passes_min_prob_to_the_detector(monkeypatch):
    """Catches predict_faces ignoring min_prob: a face found at 60% is kept only when asked."""
    monkeypatch.setattr(faces, "detector", lambda: FixedDetector([10, 10, 60, 60], 0.6))
    estimator, photo = predict.AgeEstimator(tiny("regression"), 32), Image.new("RGB", (100, 100))
    assert predict.predict_faces(estimator, photo) == []
    assert len(predict.predict_faces(estimator, photo, min_prob=0.5)) == 1


def test_the_box_is_drawn_where_the_face_is():
    """Catches draw_predictions drawing the box with x and y swapped (a box beside the face)."""
    p = predict.FacePrediction((20.0, 80.0, 60.0, 160.0), 0.99, 30.0, None, None, "none")
    drawn = np.asarray(predict.draw_predictions(Image.new("RGB", (200, 200), (128, 128, 128)), [p]))
    gold, grey = (255, 215, 0), (128, 128, 128)
    assert tuple(drawn[120, 20]) == gold and tuple(drawn[120, 60]) == gold  # left, right sides
    assert tuple(drawn[160, 40]) == gold  # bottom
    assert tuple(drawn[40, 80]) == grey  # where the swapped box's left side would be


def test_the_crop_of_a_huge_photo_is_cut_from_the_full_resolution_photo(monkeypatch):
    """Catches crops cut from the smaller copy searched for faces (a face from the wrong place)."""
    monkeypatch.setattr(faces, "detector", lambda: FixedDetector([100, 100, 300, 300], 0.99))
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (16, 24, 3), np.uint8)).resize(
        (3072, 2048), Image.Resampling.BICUBIC)  # searched at 1024 x 683: 3 photo px a copy px
    (face,) = faces.detect_faces(photo, crop_size=32)
    assert face.box == pytest.approx((300, 300, 900, 900))
    expected = faces.align_face(photo, face.landmarks, 32)
    assert np.array_equal(np.asarray(face.crop), np.asarray(expected))


def test_every_face_of_a_crowd_gets_its_own_age():
    """Catches faces lost or shifted at the 64-crop batch boundary (a photo of a crowd)."""
    rng = np.random.default_rng(0)
    crops = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)) for _ in range(65)]
    torch.manual_seed(0)
    estimator = predict.AgeEstimator(models.create_model(models.ModelConfig(
        "test_resnet", head="classification", img_size=32)).eval(), 32)
    ages = predict.estimate_ages([estimator], crops).ages
    alone = predict.estimate_ages([estimator], [crops[i] for i in (0, 63, 64)]).ages
    assert ages.shape == (65,)
    np.testing.assert_allclose(ages[[0, 63, 64]], alone, rtol=1e-5, atol=1e-4)


def test_to_dict_keeps_each_end_of_the_interval():
    """Catches to_dict writing one end of the interval for both (`predict --json`'s output)."""
    p = predict.FacePrediction((1.04, 2.0, 3.0, 4.0), 0.98765, 34.444, 28.0, 41.0,
                               "distribution", 0.9)
    assert p.to_dict() == {"box": [1.0, 2.0, 3.0, 4.0], "probability": 0.9877, "age": 34.44,
                           "low": 28.0, "high": 41.0, "interval_kind": "distribution",
                           "level": 0.9}


def test_a_checkpoint_keeps_its_own_image_size_whatever_size_is_passed(files):
    """Catches size= overriding the side a checkpoint was trained at (its faces resized wrongly)."""
    assert predict.load_estimators(files / "classification.pt", size=64)[0].size == 32
