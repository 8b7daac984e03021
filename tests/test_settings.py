"""Run-wide settings (agelib.settings) and where the data is found (sources.find_data)."""

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agelib import records, settings
from agelib.data import sources


@pytest.mark.parametrize("value, smoke", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("", False), ("no", False), ("false", False), ("2", False)])
def test_smoke_mode_parses_the_variable(monkeypatch, value, smoke):
    monkeypatch.setenv("AGELIB_SMOKE", value)
    assert settings.smoke_mode() is smoke


def test_smoke_mode_is_off_when_unset(monkeypatch):
    monkeypatch.delenv("AGELIB_SMOKE", raising=False)
    assert settings.smoke_mode() is False
    assert settings.run_mode() == settings.FULL


def test_run_mode_follows_smoke_and_takes_overrides(monkeypatch):
    monkeypatch.setenv("AGELIB_SMOKE", "1")
    assert settings.run_mode() == settings.SMOKE
    mode = settings.run_mode(image_size=32, epochs=3)
    assert (mode.name, mode.image_size, mode.epochs, mode.n_train) == ("smoke", 32, 3, 256)
    assert settings.SMOKE.image_size == 64  # the preset itself is untouched


def test_run_mode_rejects_unknown_fields_and_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("AGELIB_SMOKE", "1")
    with pytest.raises(ValueError) as err:
        settings.run_mode(img_size=32, epochs=2)
    message = str(err.value)
    assert "['img_size']" in message
    for name in ("batch_size", "epochs", "image_size", "n_test", "n_train", "n_valid", "name"):
        assert name in message


def test_agelib_epochs_scales_the_default_length_of_either_mode(monkeypatch):
    monkeypatch.setenv("AGELIB_EPOCHS", "7")
    monkeypatch.delenv("AGELIB_SMOKE", raising=False)
    assert settings.run_mode().epochs == 7
    assert settings.run_mode(epochs=3).epochs == 3  # a chapter's explicit choice still wins
    monkeypatch.setenv("AGELIB_SMOKE", "1")
    assert (settings.run_mode().name, settings.run_mode().epochs) == ("smoke", 7)
    assert settings.FULL.epochs == 20  # the preset itself is untouched


@pytest.mark.parametrize("value", ["0", "-2", "ten", "2.5"])
def test_agelib_epochs_rejects_what_is_not_a_count(monkeypatch, value):
    monkeypatch.setenv("AGELIB_EPOCHS", value)
    with pytest.raises(ValueError, match="AGELIB_EPOCHS"):
        settings.run_mode()
    from agelib import cli  # what a GPU call asks first: the same check, the same words

    assert cli.main(["course", "--pending"]) == 2


def test_run_mode_describes_itself():
    assert settings.SMOKE.describe("cpu (x86_64)").startswith(
        "SMOKE mode on cpu (x86_64): up to 256/64/64")
    assert settings.FULL.describe("cpu").startswith("FULL mode on cpu: whole splits at 128 px")
    # the device the runs will use, named as their records name it
    assert settings.SMOKE.describe().startswith(
        f"SMOKE mode on {records.device_name(settings.get_device())}: ")


def test_data_home_honours_agelib_home(monkeypatch, tmp_path):
    monkeypatch.setenv("AGELIB_HOME", str(tmp_path / "h"))
    assert settings.data_home() == tmp_path / "h"
    monkeypatch.setenv("AGELIB_HOME", "~/agelib-test-home")
    assert settings.data_home() == Path.home() / "agelib-test-home"


def test_data_home_defaults_to_the_checkout_data_folder(monkeypatch):
    monkeypatch.delenv("AGELIB_HOME", raising=False)
    root = settings.repo_root()
    assert settings.data_home() == (root / "data" if root else Path.home() / ".cache" / "agelib")


# --------------------------------------------------------------------------- find_data
def test_find_data_refuses_an_explicit_missing_path(monkeypatch, tmp_path, home):
    monkeypatch.setenv("AGELIB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="AGELIB_DATA") as err:
        sources.find_data()
    assert "nowhere" in str(err.value)
    with pytest.raises(FileNotFoundError, match="python -m agelib download"):
        sources.find_data(tmp_path / "elsewhere")


def test_find_data_steps_into_a_utkface_subfolder(monkeypatch, tmp_path, home):
    (tmp_path / "UTKFace").mkdir()
    assert sources.find_data(tmp_path) == tmp_path / "UTKFace"
    monkeypatch.setenv("AGELIB_DATA", str(tmp_path))
    assert sources.find_data() == tmp_path / "UTKFace"
    assert sources.find_data(tmp_path / "UTKFace") == tmp_path / "UTKFace"


def test_find_data_accepts_a_pack_file(tmp_path, home):
    pack = tmp_path / "faces.tar"
    pack.write_bytes(b"")
    assert sources.find_data(pack) == pack


def test_find_data_is_none_when_nothing_is_set_or_found(monkeypatch, home):
    monkeypatch.delenv("AGELIB_DATA", raising=False)
    assert sources.find_data() is None
    (home / "UTKFace").mkdir()
    assert sources.find_data() is None  # an empty default folder is no data


def test_find_data_uses_the_default_folder_when_it_holds_files(monkeypatch, home):
    monkeypatch.delenv("AGELIB_DATA", raising=False)
    (home / "UTKFace").mkdir()
    (home / "UTKFace" / "1_0_0_20170101000000000.jpg.chip.jpg").write_bytes(b"x")
    assert sources.find_data() == home / "UTKFace"


def test_load_faces_falls_back_to_synthetic_only_when_nothing_is_asked(monkeypatch, home,
                                                                       tmp_path):
    monkeypatch.setenv("AGELIB_DATA", str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError):
        sources.load_faces()


# --------------------------------------------------------------------------- seeds and devices
def test_seed_everything_makes_random_draws_repeatable(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # restored afterwards: seeding sets it
    assert settings.seed_everything(7) == 7
    first = (torch.rand(5), np.random.rand(3), random.random())
    settings.seed_everything(7)
    second = (torch.rand(5), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]
    settings.seed_everything(8)
    assert not torch.equal(torch.rand(5), first[0])


def test_get_device_picks_the_best_available(monkeypatch):
    monkeypatch.delenv("AGELIB_DEVICE", raising=False)
    if torch.cuda.is_available():
        expected = "cuda"
    elif torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert settings.get_device().type == expected


@pytest.mark.parametrize("cuda, mps, expected", [(False, False, "cpu"), (False, True, "mps"),
                                                (True, True, "cuda")])
def test_get_device_takes_the_best_accelerator_there_is(monkeypatch, cuda, mps, expected):
    """Catches CUDA skipped by the automatic choice (a GPU machine trained on its CPU)."""
    monkeypatch.delenv("AGELIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert settings.get_device() == torch.device(expected)


def test_get_device_honours_agelib_device_and_prefer(monkeypatch):
    monkeypatch.setenv("AGELIB_DEVICE", "meta")
    assert settings.get_device() == torch.device("meta")
    assert settings.get_device("cpu") == torch.device("cpu")


def test_a_bad_or_absent_agelib_device_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("AGELIB_DEVICE", "gpu")
    with pytest.raises(ValueError, match="AGELIB_DEVICE=gpu is not a device torch knows"):
        settings.get_device()
    monkeypatch.setenv("AGELIB_DEVICE", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="AGELIB_DEVICE=cuda, but torch finds no cuda device"):
        settings.get_device()
    from agelib import cli

    assert cli.environment_info()["device"].startswith("unusable (AGELIB_DEVICE=cuda")


def test_agelib_has_a_version_when_imported_from_a_checkout_without_install(monkeypatch):
    """The GPU run puts the checkout on PYTHONPATH instead of installing it: agelib is
    there all the same, and chapter 00 must not call it missing."""
    from importlib import metadata

    import agelib

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    versions = settings.package_versions(["agelib", "no-such-package"])
    assert versions["agelib"] == agelib.__version__
    assert versions["no-such-package"] is None


def test_run_mode_names_a_bad_device_instead_of_failing(monkeypatch):
    monkeypatch.setenv("AGELIB_DEVICE", "tpu9")
    assert "AGELIB_DEVICE='tpu9'" in settings.SMOKE.describe()


def test_agelib_lists_its_modules_and_imports_each_when_first_used():
    import subprocess
    import sys
    from pathlib import Path

    import agelib

    folder = Path(agelib.__file__).parent
    on_disk = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")} | {"data"}
    assert set(agelib.__all__) == on_disk
    code = ("import sys, agelib; light = 'torch' not in sys.modules; "
            "agelib.losses; print(light, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]  # nothing heavy until a module is used


def _detect():
    from agelib import faces
    return faces.detector.__wrapped__()  # past the cache: build it now


def _grad_cam():
    from agelib import interpret
    return interpret._cam_class("gradcam")


def _widget():
    from agelib import demo
    return demo.age_widget([])


def _onnx_export(tmp_path):
    from agelib import export, models
    return export.to_onnx(models.create_model(models.ModelConfig("test_resnet")),
                          tmp_path / "m.onnx", 32)


@pytest.mark.parametrize("module, call", [("facenet_pytorch", _detect),
                                          ("pytorch_grad_cam", _grad_cam),
                                          ("ipywidgets", _widget), ("onnx", _onnx_export)])
def test_a_missing_course_package_says_how_to_install_it(module, call, monkeypatch, tmp_path):
    """The library's core installs without the course's extras; a function that needs one
    of them names its package, and the extra that brings them all."""
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'pip install .*"agelib\[course\]"'):
        call(tmp_path) if call is _onnx_export else call()


# --------------------------------------------------------------------------- run mode and seeds
@pytest.mark.parametrize("value", ["0", "no", "false"])
def test_agelib_smoke_set_to_no_is_the_full_mode(monkeypatch, value):
    """Catches run_mode testing that AGELIB_SMOKE is set rather than parsing it: `course --full`
    sets AGELIB_SMOKE=0 for its kernels, which then ran the smoke mode."""
    monkeypatch.delenv("AGELIB_EPOCHS", raising=False)
    monkeypatch.setenv("AGELIB_SMOKE", value)
    assert settings.run_mode() == settings.FULL


def test_seed_everything_gives_other_draws_for_another_seed(monkeypatch):
    """Catches a seed that is not passed on to NumPy (every seed drew the same NumPy numbers,
    so 'another seed' changed nothing NumPy decides)."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # restored afterwards: seeding sets it
    draws = {}
    for seed in (1, 2):
        settings.seed_everything(seed)
        draws[seed] = (tuple(np.random.rand(3)), random.random())
    assert draws[1][0] != draws[2][0] and draws[1][1] != draws[2][1]


# --------------------------------------------------------------------------- mutation hunt
def test_a_bad_device_asked_by_argument_is_named_as_such(monkeypatch):
    """Catches the error blaming AGELIB_DEVICE for a device passed as an argument."""
    monkeypatch.delenv("AGELIB_DEVICE", raising=False)
    with pytest.raises(ValueError, match="^device 'gpu' is not a device torch knows"):
        settings.get_device("gpu")


def test_seed_everything_seeds_the_hash_of_child_processes(monkeypatch):
    """Catches PYTHONHASHSEED left alone: subprocesses (DataLoader workers, the course's
    kernels) then hash strings differently on every run."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # restored afterwards
    settings.seed_everything(5)
    assert os.environ["PYTHONHASHSEED"] == "5"


def test_the_full_mode_says_its_size_and_length():
    """Catches the full mode's figure caption or its one-line description losing the image
    size or the number of epochs (a figure then says nothing of what it was run at)."""
    assert settings.FULL.caption("test set") == "test set\n(full mode, 128 px)"
    assert settings.FULL.describe("cuda (GPU)").endswith("at 128 px, 20 epoch(s) by default.")


def test_the_full_mode_on_a_cpu_warns_it_takes_hours_and_says_what_to_do():
    """Catches a learner's `train` without AGELIB_SMOKE starting hours of CPU work unwarned."""
    line = settings.FULL.describe("cpu (x86_64)")
    assert "at 128 px, 20 epoch(s) by default." in line
    assert "hours" in line and "AGELIB_SMOKE=1" in line
    assert "hours" not in settings.FULL.describe("cuda (NVIDIA H200)")


def test_repo_root_is_none_outside_a_checkout(monkeypatch, tmp_path):
    """Catches repo_root naming the package's parent folder on a plain install (site-packages
    then held data/ and results/)."""
    monkeypatch.setattr(settings, "_REPO_DIR", tmp_path)
    assert settings.repo_root() is None
    (tmp_path / "pyproject.toml").write_text("")
    assert settings.repo_root() == tmp_path
