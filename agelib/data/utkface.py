"""Reading a UTKFace-style folder: labels from file names, checks, duplicates.

UTKFace stores its labels in file names, ``[age]_[gender]_[race]_[date&time].jpg.chip.jpg``,
and the real folder has quirks that a loader must survive: names with the race
field missing or a stray space, odd timestamp lengths, and the same image bytes
under several names, sometimes with different ages. This module turns a folder
into two tables:

* ``files``: one row per readable, labelled file (what the folder holds);
* ``samples``: one row per distinct image (what a model may train or test on),

plus a :class:`DataReport` that says what was skipped and why. Nothing is
dropped silently: every file is either in ``files`` or in ``report.skipped``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import pandas as pd
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: a file table's columns: the labels, then what :func:`inspect_image` found
FILE_COLUMNS = ["file", "age", "gender", "race", "timestamp", "irregular",
                "sha1", "width", "height", "mode", "bytes"]
MAX_AGE = 116  # the oldest label UTKFace uses
GENDERS = {0: "male", 1: "female"}
RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
_RACE_CODES = {str(r) for r in RACES}  # as a file name writes them


@dataclass(frozen=True)
class FaceLabels:
    """The labels one file name carries. ``race`` is None when the name omits it."""

    age: int
    gender: int
    race: int | None
    timestamp: str | None
    irregular: str = ""  # why the name is unusual, "" for a regular name


def parse_name(name: str) -> FaceLabels:
    """Read age, gender, race and timestamp from a UTKFace file name.

    >>> parse_name("39_1_2_20170116174525125.jpg.chip.jpg")
    FaceLabels(age=39, gender=1, race=2, timestamp='20170116174525125', irregular='')
    >>> parse_name("39_1_20170116174525125.jpg.chip.jpg").irregular
    'race field missing'
    >>> parse_name("45_1_3.jpg")  # a short third field is a race, not a date
    FaceLabels(age=45, gender=1, race=3, timestamp=None, irregular='timestamp missing')
    >>> parse_name("24_0_1_20170116220224657 .jpg.chip.jpg").age
    24
    >>> parse_name("35_0_0 20170116174525135.jpg").race
    0
    >>> parse_name("photo.jpg")
    Traceback (most recent call last):
    ...
    ValueError: 'photo.jpg': expected 'age_gender_race_datetime.jpg', found 1 field(s) separated by '_'
    """
    stem = name.split(".", 1)[0]
    notes = []
    if stem != stem.strip():
        notes.append("stray space")
    core = stem.strip()
    if any(c.isspace() for c in core):  # "35_0_0 2017...": a space typed for an underscore
        notes.append("space in place of '_'")
        core = "_".join(core.split())
    parts = core.split("_")

    def fail(why: str) -> ValueError:
        return ValueError(f"{name!r}: expected 'age_gender_race_datetime.jpg', {why}")

    if len(parts) < 2 or len(parts) > 4:
        raise fail(f"found {len(parts)} field(s) separated by '_'")
    if not parts[0].isdecimal():
        raise fail(f"age {parts[0]!r} is not a whole number")
    age = int(parts[0])
    if age > MAX_AGE:
        raise fail(f"age {age} is above {MAX_AGE}")
    if parts[1] not in ("0", "1"):
        raise fail(f"gender {parts[1]!r} is not 0 (male) or 1 (female)")
    race, timestamp = None, None
    if len(parts) == 4:
        if parts[2] not in _RACE_CODES:
            raise fail(f"race {parts[2]!r} is not one of 0-4")
        race, timestamp = int(parts[2]), parts[3]
    elif len(parts) == 3 and parts[2] in _RACE_CODES:  # "45_1_3.jpg": yours
        race = int(parts[2])
        notes.append("timestamp missing")
    elif len(parts) == 3:  # UTKFace's own: a date and time where the race belongs
        notes.append("race field missing")
        timestamp = parts[2]
    else:
        notes.append("race and timestamp missing")
    if timestamp is not None and not (timestamp.isdecimal() and len(timestamp) == 17):
        notes.append(f"timestamp of {len(timestamp)} characters")
    return FaceLabels(age, int(parts[1]), race, timestamp, "; ".join(notes))


EXIF_ORIENTATION = 0x0112  # the EXIF tag a phone sets instead of turning the pixels


def inspect_image(path: Path) -> dict:
    """Hash a file and check that it decodes as an image.

    The hash is of the bytes, so identical copies are found whatever their names.
    Decoding uses JPEG draft mode (a reduced-size decode): it still reads every
    compressed block, so truncated or corrupt files fail, at a fraction of the cost.
    Raises ValueError with the reason when the file is not a usable image.
    """
    raw = path.read_bytes()
    if not raw:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            width, height, mode = im.width, im.height, im.mode
            if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # shown turned a quarter
                width, height = height, width
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except Image.DecompressionBombError as err:  # a huge photo: say so, scan the rest
        raise ValueError(f"too large to decode safely: {err}") from None
    except Exception as err:  # damaged bytes make Pillow's decoders raise all kinds (OSError,
        # SyntaxError, a cut-short QOI file IndexError): each is this one file's problem
        raise ValueError(f"cannot decode: {err}") from None
    return {"sha1": hashlib.sha1(raw).hexdigest(), "width": width, "height": height,
            "mode": mode, "bytes": len(raw)}


@dataclass
class DataReport:
    """What a folder held and what became of each file."""

    folder: str
    n_files: int = 0  # entries in the folder, hidden files excepted
    n_readable: int = 0  # labelled files that decode
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"} per skipped file
    irregular_names: list[dict] = field(default_factory=list)  # {"file", "note"}, still used
    n_images: int = 0  # distinct images (by content) among the readable files
    n_duplicate_groups: int = 0  # images found under more than one name
    n_duplicate_files: int = 0  # files that are a copy of another one
    n_age_conflicts: int = 0  # duplicate groups whose names disagree on age (left out)
    n_attribute_conflicts: int = 0  # groups that disagree on gender or race only (kept)
    n_used: int = 0  # distinct images with a trustworthy age: the samples
    age_min: int | None = None
    age_max: int | None = None
    age_median: float | None = None
    modes: dict = field(default_factory=dict)  # Pillow mode -> count, e.g. {"RGB": 21376}

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [
            f"folder               {self.folder}",
            f"files                {self.n_files}",
            f"readable, labelled   {self.n_readable}",
            f"skipped              {len(self.skipped)}",
            f"irregular names      {len(self.irregular_names)} (parsed and used)",
            f"distinct images      {self.n_images}",
            f"duplicate groups     {self.n_duplicate_groups} "
            f"({self.n_duplicate_files} extra files)",
            f"  age conflicts      {self.n_age_conflicts} groups (left out: no trustworthy age)",
            f"  gender/race only   {self.n_attribute_conflicts} groups "
            "(kept: the majority's attribute, unknown on a tie)",
            f"images used          {self.n_used}",
            f"age range            {self.age_min}..{self.age_max} (median {self.age_median})",
        ]
        lines += [f"  skipped: {s['file']}: {s['reason']}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see --json)")
        lines += [f"  irregular: {s['file']}: {s['note']}" for s in self.irregular_names[:20]]
        return "\n".join(lines)


def image_folder(folder: str | Path) -> Path:
    """The folder of images meant: ``folder`` itself, or its ``UTKFace/`` when it holds one
    (the same rule as ``AGELIB_DATA``, so every command accepts the same folders)."""
    folder = Path(folder)
    return folder / "UTKFace" if (folder / "UTKFace").is_dir() else folder


def scan_folder(folder: str | Path, workers: int | None = None) -> tuple[pd.DataFrame, DataReport]:
    """Parse and check every file of a UTKFace-style folder.

    Returns ``files`` (one row per readable, labelled file) and the report, in
    which every other file appears with its reason. Raises FileNotFoundError or
    ValueError, with what to do, when the folder is missing or holds no images.
    """
    folder = image_folder(folder)
    _check_is_folder(folder)
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    report = DataReport(folder=folder.name, n_files=len(entries))
    labelled = _labelled_entries(folder, entries, report)
    if not labelled and not report.skipped:
        raise ValueError(f"The data folder '{folder}' is empty. Put the UTKFace images there "
                         "(`python -m agelib download`), or give the folder that holds them.")
    files = _inspect_entries(folder, labelled, report, workers)
    if files.empty:
        raise ValueError(f"No usable image in '{folder}': {len(report.skipped)} file(s) skipped, "
                         f"e.g. {report.skipped[0]['file']}: {report.skipped[0]['reason']}")
    return files, report


def _check_is_folder(folder: Path) -> None:
    """Refuse a file or a missing folder, saying which folder a scan wants and where to get it."""
    if folder.is_file():
        raise ValueError(f"'{folder}' is a file: give the folder that holds the labelled "
                         "images (UTKFace-named, e.g. 26_1_0_20170116171048641.jpg.chip.jpg)")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No data folder at '{folder}'. Get UTKFace with `python -m agelib download` "
            "(or see data/README.md), then give the folder of images: AGELIB_DATA for the "
            "chapters and `train`, the folder argument of `data`, --images for `evaluate`.")


def _labelled_entries(folder: Path, names: list[str], report: DataReport
                      ) -> list[tuple[str, FaceLabels]]:
    """The entries worth opening, with the labels their names carry. Judged from the names
    and the entries alone (cheap, no file read); every other entry goes to ``report.skipped``."""
    labelled = []
    for name in names:
        if not _is_utf8(name):  # bytes the file system could not decode: tables cannot hold it
            report.skipped.append({"file": name.encode("utf-8", "backslashreplace").decode(),
                                   "reason": "file name is not valid UTF-8: rename the file"})
            continue
        try:
            labelled.append((name, _entry_labels(folder / name)))
        except ValueError as err:
            report.skipped.append({"file": name, "reason": str(err)})
    return labelled


def _entry_labels(path: Path) -> FaceLabels:
    """The labels of a folder entry that may be a labelled image (ValueError: why it is not)."""
    if path.is_symlink() and not path.exists():
        raise ValueError("a broken link: its target is missing (or the link loops)")
    if path.is_dir():
        raise ValueError("a folder, not an image (not scanned)")
    if not path.name.lower().endswith(IMAGE_SUFFIXES):
        raise ValueError(f"not an image file name (expected one of {', '.join(IMAGE_SUFFIXES)})")
    return parse_name(path.name)


def _inspect_entries(folder: Path, labelled: list[tuple[str, FaceLabels]], report: DataReport,
                     workers: int | None) -> pd.DataFrame:
    """The file table of the labelled entries that decode; the others go to ``report.skipped``.

    Reading and decoding 20k files is the slow part of a scan, and mostly waiting on the
    disk and on Pillow's C code, so threads share it.
    """
    def check(item):
        name, labels = item
        try:
            return name, labels, inspect_image(folder / name), None
        except (ValueError, OSError) as err:
            return name, labels, None, str(err)

    rows = []
    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        for name, labels, info, error in pool.map(check, labelled):
            if error:
                report.skipped.append({"file": name, "reason": error})
                continue
            if labels.irregular:
                report.irregular_names.append({"file": name, "note": labels.irregular})
            rows.append({"file": name, **asdict(labels), **info})
    files = pd.DataFrame(rows, columns=FILE_COLUMNS).astype({"race": "Int64"})
    report.n_readable = len(files)
    report.modes = {str(k): int(v) for k, v in files["mode"].value_counts().items()}
    return files


def _is_utf8(name: str) -> bool:
    """Whether a name from ``os.listdir`` can be written to a table (CSV, JSON) as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir keeps undecodable bytes as lone surrogates
        return False
    return True


def _most_common(values: pd.Series) -> int | None:
    """The most frequent non-missing value; None when values are missing or tied."""
    counts = values.dropna().value_counts()
    if counts.empty or (len(counts) > 1 and counts.iloc[0] == counts.iloc[1]):
        return None
    return int(counts.index[0])


def deduplicate(files: pd.DataFrame, report: DataReport | None = None) -> pd.DataFrame:
    """One row per distinct image, with one documented rule for disagreeing labels.

    Copies (same bytes, several names) become one sample, so a photo can never
    sit in both the training and the test split. The rule for copies whose
    names disagree:

    * on **age**: the group is left out of ``samples``, because no one knows
      which age is right (it stays in ``files`` and is counted in the report,
      so chapters can study it as label noise);
    * on **gender or race** only: the sample is kept and that attribute is the
      most common value, or unknown (missing) on a tie.

    >>> files = pd.DataFrame({"file": ["a", "b", "c", "d"], "sha1": ["x", "x", "y", "z"],
    ...     "age": [30, 31, 5, 7], "gender": [0, 0, 1, 1], "race": [1, 1, 2, 0]})
    >>> deduplicate(files)[["sha1", "age", "n_files"]].to_dict("records")
    [{'sha1': 'y', 'age': 5, 'n_files': 1}, {'sha1': 'z', 'age': 7, 'n_files': 1}]
    """
    files = files.sort_values("file")
    copies = files.duplicated("sha1", keep=False)
    single = files.loc[~copies, ["sha1", "file", "age", "gender", "race"]].assign(
        n_files=1, files=files.loc[~copies, "file"])
    rows = []
    n_age = n_attr = 0
    for sha1, group in files[copies].groupby("sha1", sort=False):
        ages = sorted(set(group["age"]))
        if len(ages) > 1:
            n_age += 1
            continue
        if group["gender"].nunique() > 1 or group["race"].nunique() > 1:
            n_attr += 1
        rows.append({"sha1": sha1, "file": group["file"].iloc[0], "age": ages[0],
                     "gender": _most_common(group["gender"]), "race": _most_common(group["race"]),
                     "n_files": len(group), "files": "|".join(group["file"])})
    merged = pd.DataFrame(rows, columns=single.columns)
    samples = (pd.concat([single, merged]) if rows else single).astype(
        {"age": int, "gender": "Int64", "race": "Int64", "n_files": int})
    samples = samples.sort_values("file", ignore_index=True)
    if report is not None:
        _count_into(report, files, samples, n_age, n_attr)
    return samples


def _count_into(report: DataReport, files: pd.DataFrame, samples: pd.DataFrame,
                n_age_conflicts: int, n_attribute_conflicts: int) -> None:
    """Fill in what deduplication found, so the report accounts for every file it merged
    or left out."""
    sizes = files.groupby("sha1").size()
    report.n_images = int(len(sizes))
    report.n_duplicate_groups = int((sizes > 1).sum())
    report.n_duplicate_files = int((sizes - 1).sum())
    report.n_age_conflicts, report.n_attribute_conflicts = n_age_conflicts, n_attribute_conflicts
    report.n_used = len(samples)
    if len(samples):
        report.age_min, report.age_max = int(samples.age.min()), int(samples.age.max())
        report.age_median = float(statistics.median(samples.age))


def read_files_table(source: str | os.PathLike | IO[bytes]) -> pd.DataFrame:
    """A file table saved as CSV (by a folder scan's cache or inside a pack), read back
    with the dtypes :func:`scan_folder` gives it (empty notes stay empty strings)."""
    files = pd.read_csv(source, dtype={"file": str, "sha1": str, "timestamp": str,
                                       "irregular": str}, keep_default_na=False,
                        na_values={"race": [""], "gender": [""]})  # unknown, in a CSV of yours
    files["race"] = files["race"].astype("Int64")
    if files["gender"].isna().any():  # as the table's own scan gives it: UTKFace names
        files["gender"] = files["gender"].astype("Int64")  # always say it (int64)
    return files


def duplicate_groups(files: pd.DataFrame) -> pd.DataFrame:
    """Every image found under more than one name, with its labels side by side.

    One row per group: the names, their ages, the age spread, and whether any
    label disagrees. Chapter 01 shows these; chapter 10 uses them to tell label
    noise from model error.
    """
    multi = files[files.duplicated("sha1", keep=False)].sort_values(["sha1", "file"])
    groups = multi.groupby("sha1").agg(
        files=("file", list), ages=("age", list), genders=("gender", list),
        races=("race", lambda r: [None if pd.isna(x) else int(x) for x in r]))
    groups["age_spread"] = groups["ages"].map(lambda a: max(a) - min(a))
    groups["age_conflict"] = groups["age_spread"] > 0
    groups["attribute_conflict"] = pd.Series([len(set(g)) > 1 or len(set(r) - {None}) > 1
                                              for g, r in zip(groups.genders, groups.races)],
                                             index=groups.index, dtype=bool)
    return groups.reset_index().sort_values("age_spread", ascending=False, ignore_index=True)
