"""Finding the data a run uses, and saying loudly which it is.

:func:`load_faces` is the one entry point every chapter calls. It looks for
real UTKFace through the ``AGELIB_DATA`` setting (a folder of images, a folder
holding ``UTKFace/``, or a pack), and when no real data is present it uses the
built-in synthetic faces, so the course runs anywhere, with a banner that
cannot be missed. Scanning 20k files takes a while, so the result is cached
and reused until the folder changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image

from .. import settings
from ..files import written_whole
from . import cache, splits, synthetic, utkface

SYNTHETIC_N = 2000  # faces in the built-in synthetic set


def image_fingerprint(sha1s: Iterable[str]) -> str:
    """Short hash of a set of images (their content hashes): what a run record's
    ``data_fingerprint`` holds, so a folder can be recognised as a model's training data."""
    return hashlib.sha1("\n".join(sorted(sha1s)).encode()).hexdigest()[:12]


@dataclass
class Faces:
    """A labelled face dataset, deduplicated and ready to split.

    ``samples`` has one row per distinct image: ``sha1`` (its identity), ``file``,
    ``age``, ``gender``, ``race`` (missing where unknown) and ``n_files``.
    """

    name: str  # "UTKFace", "synthetic" or the pack's name
    real: bool  # False for synthetic faces: their numbers say nothing about people
    samples: pd.DataFrame
    report: utkface.DataReport
    files: pd.DataFrame | None = None  # every labelled file, copies included (None for a pack)
    _open: Callable[[str], Image.Image] | None = field(default=None, repr=False)
    cache_source: str | None = None  # what the image cache is keyed by, when not the name
    stored_size: int | None = None  # a pack's image side: larger sizes only upscale its faces

    def open_image(self, sha1: str) -> Image.Image:
        """The original image with this content hash (samples and left-out copies alike)."""
        return self._open(sha1)

    @property
    def is_utkface(self) -> bool:
        """Real UTKFace, the data that README's results and figures describe.

        Figures of other photos (your own table, a folder of another name) are saved
        beside the synthetic ones, so a run on them never replaces README's figures.
        """
        return self.real and self.name == "UTKFace"

    @property
    def fingerprint(self) -> str:
        """Short hash of the set of images: tells two copies of a dataset apart (and names
        the split, which depends on the images alone)."""
        return image_fingerprint(self.samples["sha1"])

    @property
    def labels_fingerprint(self) -> str:
        """Short hash of the images *and* their labels: a file renamed to correct its age
        keeps the image fingerprint but is other training data (a model cached before the
        fix must not be handed back after it)."""
        cols = [c for c in ("sha1", "age", "gender", "race") if c in self.samples]
        rows = self.samples[cols].sort_values("sha1").itertuples(index=False)
        text = "\n".join(",".join(map(str, row)) for row in rows)  # str(): unknowns too
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def images(self, size: int, sha1s: list[str] | None = None) -> np.ndarray:
        """Decoded ``(N, size, size, 3)`` uint8 images, from the cache after the first call."""
        if self.stored_size and size > self.stored_size:
            warnings.warn(f"{self.name} holds {self.stored_size} px faces: at {size} px every "
                          f"one is upscaled, blurred, and a model learns less than the size "
                          f"promises. Train at {self.stored_size} px (--image-size "
                          f"{self.stored_size}), or pack the original folder again at "
                          f"--size {size}.", stacklevel=2)
        ids = list(self.samples["sha1"] if sha1s is None else sha1s)
        return cache.build_cache(ids, lambda i: self.open_image(ids[i]), size,
                                 settings.data_home() / "cache",
                                 source=self.cache_source or self.name)

    def split(self, seed: int = 0) -> pd.Series:
        """The standard train/valid/test split (by ``sha1``), reloaded when saved before."""
        path = settings.data_home() / "splits" / f"{self.name}-{self.fingerprint}-seed{seed}.csv"
        saved = _saved_split(path)
        if saved is not None and set(saved.index) == set(self.samples["sha1"]):
            return saved
        split = splits.make_split(self.samples, seed=seed)
        splits.save_split(split, path)
        return split

    def banner(self) -> str:
        """What this dataset is, in one line for the top of every output."""
        if not self.real:
            return (f"DATA: SYNTHETIC faces ({len(self.samples)} images): results show the "
                    "code runs, not how well it estimates ages. See data/README.md to get "
                    "UTKFace.")  # asked for, or no real faces found: true either way
        r = self.report
        return (f"DATA: {self.name}, real faces: {r.n_files} files -> {len(self.samples)} "
                f"distinct images used ({r.n_duplicate_files} duplicate files merged, "
                f"{r.n_age_conflicts} age-conflicting images left out, {len(r.skipped)} skipped)")


def _saved_split(path: Path) -> pd.Series | None:
    """The split saved at ``path``, or None when there is none or it cannot be read.

    A run cut short while saving leaves an empty file; stopping every later run on it would
    help no one, as the split is drawn again from the same seed (and saved over it).
    """
    if not path.exists():
        return None
    try:
        return splits.load_split(path)
    except ValueError as err:  # pandas' EmptyDataError and ParserError are ValueErrors too
        warnings.warn(f"The saved split '{path.name}' could not be read ({err}): it is drawn "
                      "again from its seed and saved over it.", stacklevel=3)
        return None


def _asked_for(source: str | os.PathLike | None) -> str | os.PathLike | None:
    """The data a caller asked for: ``source``, else the ``AGELIB_DATA`` setting."""
    return source if source is not None else os.environ.get("AGELIB_DATA")


def names_synthetic(asked: str | os.PathLike | None) -> bool:
    """Whether a data setting (an argument or ``AGELIB_DATA``) names the synthetic faces:
    ``"synthetic"``, spaces around it allowed (``" synthetic"`` from a sloppy export). Every
    command and the course's kernels read it by this one rule."""
    return asked is not None and str(asked).strip() == "synthetic"


def find_data(source: str | os.PathLike | None = None) -> Path | None:
    """Where the real data is: ``source``, else ``AGELIB_DATA``, else ``<data home>/UTKFace``.

    Returns None when nothing was asked for and nothing is at the default place.
    An explicit location that does not exist is an error, not a silent fallback.
    """
    asked = _asked_for(source)
    if asked:
        path = Path(asked).expanduser()
        if (path / "UTKFace").is_dir():
            path = path / "UTKFace"
        if not path.exists():
            where = "AGELIB_DATA points to" if source is None else "There is no data at"
            raise FileNotFoundError(
                f"{where} '{path}', which does not exist. Give the UTKFace folder (or unset "
                "AGELIB_DATA to use the synthetic faces); `python -m agelib download` "
                "fetches the data.")
        return path
    default = settings.data_home() / "UTKFace"
    return default if default.is_dir() and any(default.iterdir()) else None


def load_faces(source: str | os.PathLike | None = None, verbose: bool = True) -> Faces:
    """Load the dataset a run should use and print which one it is.

    ``source`` may be a UTKFace folder, a pack (``.tar``), a table of your own
    labelled photos (``.csv``, see :func:`load_table`) or ``"synthetic"``; by
    default the ``AGELIB_DATA`` setting decides (see :func:`find_data`).
    """
    # by name, as an argument or as AGELIB_DATA (" synthetic" from a sloppy export too)
    if names_synthetic(_asked_for(source)):
        faces = load_synthetic()
    else:
        path = find_data(source)
        if path is None:
            faces = load_synthetic()
        elif path.is_file() and path.suffix.lower() == ".csv":  # your own photos, labelled
            faces = load_table(path)
        elif path.is_file():
            faces = load_pack(path)
        else:
            faces = load_folder(path)
    if verbose:
        print(faces.banner())
    return faces


def load_folder(folder: str | os.PathLike, name: str | None = None, real: bool = True) -> Faces:
    """Scan (or reuse the cached scan of) a UTKFace-style folder and deduplicate it.

    The dataset is named after the folder ("UTKFace" for any folder of that name),
    so a folder of other photos named the UTKFace way is not recorded as UTKFace.
    A folder the synthetic generator wrote (it leaves a marker file) is always
    labelled synthetic, wherever it is and however it was reached.
    """
    folder = utkface.image_folder(folder)
    if name is None:
        own_name = folder.resolve().name
        name = "UTKFace" if own_name.lower() == "utkface" else own_name
    if (folder / synthetic.MARKER_NAME).exists():
        name, real = "synthetic", False
    files, report = _cached_scan(folder)
    samples = utkface.deduplicate(files, report)
    if samples.empty:
        raise ValueError(f"No usable sample in '{folder.name}': every image was left out "
                         f"({report.n_age_conflicts} age conflicts). Check the folder.")
    return Faces(name, real, samples, report, files, _opener(folder, files))


def load_table(table: str | os.PathLike | pd.DataFrame, root: str | os.PathLike | None = None,
               name: str | None = None, real: bool = True) -> Faces:
    """Your own labelled photos, from a table rather than UTKFace's file names.

    ``table`` is a CSV file (or a DataFrame) with a ``file`` column (paths relative to
    ``root``, by default the CSV's folder) and an ``age`` column in whole years;
    ``gender`` (0 male, 1 female) and ``race`` (UTKFace's codes 0-4) may be given, and are
    unknown where left out. Every file is checked and hashed as a UTKFace scan does, and
    copies are merged by the same rule (:func:`utkface.deduplicate`), so the result splits,
    caches and trains like UTKFace: ``AGELIB_DATA=labels.csv`` works for every command.
    A missing, unreadable or badly labelled file is skipped, its reason in ``report``.

    >>> import tempfile; from PIL import Image
    >>> folder = Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"img_{i}.png")
    >>> (folder / "labels.csv").write_text("file,age\\nimg_0.png,30\\nimg_1.png,41\\nimg_2.png,old")
    48
    >>> faces = load_table(folder / "labels.csv", name="mine")
    >>> faces.samples[["file", "age"]].to_dict("records")
    [{'file': 'img_0.png', 'age': 30}, {'file': 'img_1.png', 'age': 41}]
    >>> faces.report.skipped
    [{'file': 'img_2.png', 'reason': "age 'old' is not a whole number of years"}]
    """
    rows, root, name = _read_table(table, root, name)
    missing = {"file", "age"} - set(rows.columns)
    if missing:
        raise ValueError(f"The table of labels lacks the column(s) {sorted(missing)}: it needs "
                         f"file and age (gender, race optional); it has {list(rows.columns)}")
    if rows.empty:
        raise ValueError("The table of labels lists no photo: add one line per photo under its "
                         "first line (file,age and optionally gender,race)")
    report = utkface.DataReport(folder=root.resolve().name, n_files=len(rows))
    files = _inspect_table(rows, root, report)
    if files.empty:
        first = report.skipped[0]
        raise ValueError(f"No usable image in the table: {len(report.skipped)} row(s) skipped, "
                         f"e.g. {first['file']}: {first['reason']}")
    report.n_readable = len(files)
    report.modes = {str(k): int(v) for k, v in files["mode"].value_counts().items()}
    samples = utkface.deduplicate(files, report)
    if samples.empty:
        raise ValueError(f"No usable sample in the table: every image was left out "
                         f"({report.n_age_conflicts} copies that disagree on the age)")
    return Faces(name, real, samples, report, files, _opener(root, files))


def _read_table(table: str | os.PathLike | pd.DataFrame, root: str | os.PathLike | None,
                name: str | None) -> tuple[pd.DataFrame, Path, str]:
    """The rows of a table of labels, the folder its paths start from and the dataset's name
    (both default to the CSV's folder, where the photos usually are)."""
    if isinstance(table, pd.DataFrame):
        root = Path(root or ".")
        return table, root, name or root.resolve().name
    path = Path(table).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No table of labels at '{path}': give a CSV with the "
                                "columns file and age (gender, race optional)")
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"'{path}' is empty: give a CSV whose first line names its columns "
                         "(file,age and optionally gender,race), then one line per photo"
                         ) from None
    root = Path(root) if root is not None else path.parent
    return rows, root, name or path.parent.resolve().name


def _inspect_table(rows: pd.DataFrame, root: Path, report: utkface.DataReport) -> pd.DataFrame:
    """The file table of the rows whose labels are valid and whose image decodes, checked as
    a folder scan checks its files; every other row goes to ``report.skipped``."""
    labelled = []
    for row in rows.to_dict("records"):
        try:
            labelled.append((str(row["file"]), _table_labels(row)))
        except ValueError as err:
            report.skipped.append({"file": str(row["file"]), "reason": str(err)})
    files = []
    for file, labels in labelled:
        try:
            files.append({"file": file, **labels, "timestamp": None, "irregular": "",
                          **utkface.inspect_image(root / file)})
        except (ValueError, OSError) as err:
            reason = "no such file" if isinstance(err, FileNotFoundError) else str(err)
            report.skipped.append({"file": file, "reason": reason})
    return pd.DataFrame(files, columns=utkface.FILE_COLUMNS).astype({"gender": "Int64",
                                                                     "race": "Int64"})


def _opener(root: Path, files: pd.DataFrame) -> Callable[[str], Image.Image]:
    """Opens the original of a content hash, the copies left out of the samples too (the
    chapters about the data show them)."""
    by_sha1 = dict(zip(files["sha1"], files["file"]))
    return lambda sha1: Image.open(root / by_sha1[sha1])


def _table_labels(row: dict) -> dict:
    """Age, gender and race from one row of a table of labels (ValueError: why not)."""
    def whole(field: str, low: int, high: int, what: str) -> int | None:
        value = row.get(field)
        if isinstance(value, float) and value.is_integer():  # a DataFrame's 30.0
            value = int(value)
        text = "" if value is None or pd.isna(value) else str(value).strip()
        if re.fullmatch(r"\d+\.0*", text):  # "30.0": pandas writes a column with gaps so
            text = text.split(".")[0]
        if not text and field != "age":
            return None
        if not text.isdecimal() or not low <= int(text) <= high:
            raise ValueError(f"{field} {text!r} is not {what}")
        return int(text)

    return {"age": whole("age", 0, utkface.MAX_AGE + 14, "a whole number of years"),
            "gender": whole("gender", 0, 1, "0 (male) or 1 (female)"),
            "race": whole("race", 0, 4, "one of UTKFace's race codes 0-4")}


def load_synthetic(n: int = SYNTHETIC_N, seed: int = 0) -> Faces:
    """The built-in synthetic faces, generated once into ``<data home>/synthetic``."""
    folder = synthetic.write_synthetic_faces(settings.data_home() / "synthetic", n=n, seed=seed)
    return load_folder(folder, name="synthetic", real=False)


def load_pack(path: str | os.PathLike) -> Faces:
    """A dataset carried as a pack (see :mod:`agelib.data.cache`).

    Its name says it is a pack and at what size, e.g. "UTKFace (128 px WebP
    pack)": the images were resized and re-encoded once, so every record and
    table made from them says so rather than passing them off as the originals.
    The original folder's report and file table travel inside, when packed.
    """
    pack = cache.Pack(path)
    real = bool(pack.info.get("real", False))
    name = pack.info.get("name", "UTKFace" if real else "synthetic")
    name = f"{name} ({pack.info.get('size', '?')} px {pack.info.get('format', 'WebP')} pack)"
    # two packs of one dataset may differ in size or quality: their caches must not mix
    size = pack.info.get("size")
    return Faces(name, real, pack.samples, _pack_report(pack), pack.files, pack.open,
                 cache_source=f"{name} {pack.signature}",
                 stored_size=int(size) if str(size).isdigit() else None)


def _pack_report(pack: cache.Pack) -> utkface.DataReport:
    """The original folder's report when it was packed; else what the samples alone tell
    (a pack made without one holds no skipped files or copies to count)."""
    if pack.info.get("report"):
        return utkface.DataReport(**pack.info["report"])
    samples = pack.samples
    return utkface.DataReport(folder=pack.path.name, n_files=len(samples),
                              n_readable=len(samples), n_images=len(samples),
                              n_used=len(samples), age_min=int(samples.age.min()),
                              age_max=int(samples.age.max()),
                              age_median=float(samples.age.median()))


def write_faces_pack(faces: Faces, size: int, path: str | os.PathLike, quality: int = 80) -> Path:
    """Pack ``faces`` at ``size`` px: samples, file table, report and the left-out copies."""
    images = faces.images(size)
    extra = {}
    if faces.files is not None:  # images whose names disagree on the age: ch01 and ch10 show them
        left_out = sorted(set(faces.files["sha1"]) - set(faces.samples["sha1"]))
        extra = {s: np.asarray(cache.square_resize(faces.open_image(s), size, draft=True))
                 for s in left_out}
    return cache.write_pack(faces.samples, images, path, quality=quality, name=faces.name,
                            real=faces.real, files=faces.files, report=faces.report.to_dict(),
                            extra=extra)


def _size_and_time(entry: os.DirEntry) -> tuple[int, int]:
    """What tells a changed file apart; a broken link has none (the scan says why it skips it)."""
    try:
        stat = entry.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _cached_scan(folder: Path) -> tuple[pd.DataFrame, utkface.DataReport]:
    """``utkface.scan_folder``, reusing the saved result while the folder is unchanged."""
    if not folder.is_dir():  # missing, or a file: the scan says so, and what to give instead
        return utkface.scan_folder(folder)
    listing = sorted((e.name, *_size_and_time(e))
                     for e in os.scandir(folder) if not e.name.startswith("."))
    key = hashlib.sha1(repr((str(folder.resolve()), listing)).encode()).hexdigest()[:16]
    base = settings.data_home() / "cache" / f"scan-{key}"
    table, meta = base.with_suffix(".csv"), base.with_suffix(".json")
    saved = _saved_scan(table, meta)
    if saved is not None:
        return saved
    files, report = utkface.scan_folder(folder)
    with written_whole(table) as partial:
        files.to_csv(partial, index=False)
    with written_whole(meta) as partial:
        partial.write_text(report.to_json())
    return files, report


def _saved_scan(table: Path, meta: Path) -> tuple[pd.DataFrame, utkface.DataReport] | None:
    """A scan saved by :func:`_cached_scan`, or None when there is none or it cannot be read
    (cut short by a crash, or written by another agelib): scanning again loses nothing."""
    if not (table.exists() and meta.exists()):
        return None
    try:
        return utkface.read_files_table(table), utkface.DataReport(**json.loads(meta.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
