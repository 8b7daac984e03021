"""Every run-wide setting of the course, read in one place.

Six environment variables steer a run, so that a notebook, a test and the
command line all behave the same way without editing code:

``AGELIB_DATA``
    The UTKFace folder to use (or a folder holding ``UTKFace/``, a pack ``.tar``,
    or a CSV of your own labelled photos: :func:`agelib.data.load_table`). When unset,
    ``<data home>/UTKFace`` is used; when no real data is found the course falls
    back to synthetic faces and says so loudly.
``AGELIB_HOME``
    Where downloads, caches and splits are written. Defaults to the
    repository's ``data/`` folder (ignored by git).
``AGELIB_SMOKE``
    ``1`` runs everything tiny (small subsets, small images, one short epoch) so
    each notebook finishes in about a minute or less on a 2-core CPU; anything else,
    or unset, is the full course.
``AGELIB_EPOCHS``
    The default training length of the mode, in epochs: one knob that scales the
    whole course to the GPU you have (chapters that train for longer or shorter
    ask for multiples of it). Records always say how many epochs ran.
``AGELIB_DEVICE``
    Force a device (``cpu``, ``cuda``, ``cuda:1``, ``mps``); unset, the best one
    available (:func:`get_device`).
``AGELIB_RESULTS``
    Where run records are written and read (``results/`` in the checkout; read by
    :func:`agelib.records.results_dir`), so your own runs can live apart from the
    course's committed ones.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: reading a setting never loads it
    import torch

#: Not a setting but a channel: a course run (``agelib.course.run_chapters``) names here the file
#: where each chapter's kernel notes the models it reused instead of training
#: (``training.note_reuse``), so its record can tell a first run's time from a rerun's.
REUSE_LOG = "AGELIB_REUSE_LOG"

#: The course's public home as GitHub "owner/name". The one place to change on
#: publishing: ``python -m agelib links --write`` rewrites README.md and every
#: notebook's install cell from it, and a test checks that they agree.
REPOSITORY = "OWNER/NAME"

PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_DIR = PACKAGE_DIR.parent


def repo_root() -> Path | None:
    """The course checkout this package runs from, or None for a plain install."""
    return _REPO_DIR if (_REPO_DIR / "pyproject.toml").exists() else None


def data_home() -> Path:
    """Folder for downloads, decoded-image caches and saved splits."""
    if env := os.environ.get("AGELIB_HOME"):
        return Path(env).expanduser()
    root = repo_root()
    return root / "data" if root else Path.home() / ".cache" / "agelib"


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to 1, true, yes or on."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def smoke_mode() -> bool:
    """True when ``AGELIB_SMOKE`` asks for the tiny, CPU-friendly run."""
    return env_flag("AGELIB_SMOKE")


@dataclass(frozen=True)
class RunMode:
    """How big a run is. Chapters read sizes from here instead of hard-coding them."""

    name: str  # "smoke" or "full"
    image_size: int  # side of the square images a model sees, in pixels
    n_train: int | None  # training images (None: the whole split)
    n_valid: int | None  # validation images (None: the whole split)
    n_test: int | None  # test images (None: the whole split)
    epochs: int  # default training length
    batch_size: int  # default batch size

    def describe(self, device: str | None = None) -> str:
        """One line that says what this mode is and where it runs, for the top of every
        output: a number read later (in a notebook, a log) never loses its context."""
        where = device or device_label()
        if self.name == "smoke":
            return (f"SMOKE mode on {where}: up to {self.n_train}/{self.n_valid}/{self.n_test} "
                    f"train/valid/test images at {self.image_size} px, {self.epochs} epoch(s). "
                    "Numbers are only a check that the code runs, not results.")
        slow = ("" if not where.startswith("cpu") else
                " On a CPU that takes hours: AGELIB_SMOKE=1 runs a check of minutes instead.")
        return (f"FULL mode on {where}: whole splits at {self.image_size} px, "
                f"{self.epochs} epoch(s) by default.{slow}")

    def caption(self, title: str) -> str:
        """``title`` with the mode stamped under it, for figures: a plot scrolled to (or
        copied into slides) keeps the warning that a smoke run's numbers are not results.

        >>> SMOKE.caption("test set")
        'test set\\n(smoke run: up to 256 training faces, 1 epoch(s); not a result)'
        """
        if self.name == "smoke":
            return (f"{title}\n(smoke run: up to {self.n_train} training faces, "
                    f"{self.epochs} epoch(s); not a result)")
        return f"{title}\n(full mode, {self.image_size} px)"


def device_label() -> str:
    """The device runs will use, named as run records name it ("cpu (x86_64)", "cuda (NVIDIA
    H100 ...)"); a bad ``AGELIB_DEVICE`` is named rather than raised, since training says why."""
    from .records import device_name

    try:
        return device_name(get_device())
    except ValueError:
        return f"an unusable AGELIB_DEVICE={os.environ.get('AGELIB_DEVICE')!r}"


SMOKE = RunMode("smoke", image_size=64, n_train=256, n_valid=64, n_test=64, epochs=1, batch_size=32)
FULL = RunMode("full", image_size=128, n_train=None, n_valid=None, n_test=None, epochs=20,
               batch_size=128)


def epochs_override() -> int | None:
    """``AGELIB_EPOCHS`` as a count of epochs (None when unset); anything else is an error."""
    epochs = os.environ.get("AGELIB_EPOCHS", "").strip()
    if not epochs:
        return None
    if not epochs.isdigit() or int(epochs) < 1:
        raise ValueError(f"AGELIB_EPOCHS={epochs!r}: give a whole number of epochs, 1 or more")
    return int(epochs)


def run_mode(**overrides) -> RunMode:
    """The mode chosen by ``AGELIB_SMOKE``, with optional per-chapter overrides.

    >>> run_mode(image_size=32).image_size
    32
    """
    mode = SMOKE if smoke_mode() else FULL
    if epochs := epochs_override():
        mode = replace(mode, epochs=epochs)
    unknown = set(overrides) - set(RunMode.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown RunMode field(s) {sorted(unknown)}; "
                         f"valid: {sorted(RunMode.__dataclass_fields__)}")
    return replace(mode, **overrides)


def _device_available(kind: str) -> bool:
    """Whether torch can use a device of this type here (``"cpu"`` always can)."""
    import torch

    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":  # torch.backends.mps is missing from some builds
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return True


def get_device(prefer: str | None = None) -> torch.device:
    """The best available torch device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (or ``AGELIB_DEVICE``) forces one, e.g. ``"cpu"`` to compare speeds.
    """
    import torch

    choice = prefer or os.environ.get("AGELIB_DEVICE")
    if choice:
        where = f"device {choice!r}" if prefer else f"AGELIB_DEVICE={choice}"
        try:
            device = torch.device(choice)
        except RuntimeError:
            raise ValueError(f"{where} is not a device torch knows: use cpu, cuda, cuda:N or "
                             "mps, or unset it to take the best one available") from None
        if not _device_available(device.type):
            raise ValueError(f"{where}, but torch finds no {device.type} device here: unset "
                             "it to take the best one available")
        return device
    for kind in ("cuda", "mps"):  # in order of preference
        if _device_available(kind):
            return torch.device(kind)
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> int:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed


def optional_import(module: str, package: str, purpose: str):
    """``module`` imported, or an ImportError that says how to install it.

    The core of agelib (data, models, losses, metrics, training) needs only PyTorch,
    timm, fastai and the scientific stack; face detection, Grad-CAM, ONNX export, the
    widget and the off-the-shelf baseline come with the ``course`` extra.

    >>> optional_import("no_such_module", "no-such-package", "this example")
    Traceback (most recent call last):
    ...
    ImportError: this example needs no-such-package: pip install no-such-package (or everything the course uses: pip install "agelib[course]")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{purpose} needs {package}: pip install {package} (or everything "
                          'the course uses: pip install "agelib[course]")') from None


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Python's and each named package's version (None when absent): what a number ran on."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in names:
        if name == "agelib":  # the code running, installed or not (a checkout on PYTHONPATH)
            versions[name] = agelib_version()
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def agelib_version() -> str:
    """The version of the agelib that is running. Read from the package itself, not pip's
    metadata: a checkout on ``PYTHONPATH`` (as on a lent GPU) has none, and an install's
    can lag behind the code it points at. A test keeps it equal to pyproject.toml's."""
    from . import __version__

    return __version__
