"""Fetching UTKFace for users who are online, and checking what arrived.

The authors distribute the "Aligned & Cropped Faces" as ``UTKFace.tar.gz``
(about 100 MB, 23,708 images) from the project page
https://susanqq.github.io/UTKFace/, hosted on Google Drive. Drive links change
and sometimes refuse scripted downloads, so :func:`download_utkface` also takes
another URL or an archive you downloaded by hand (``archive=``), and always
checks the result: a gzip'd tar, safe member names, and enough images whose
names carry labels.

Licence: UTKFace is for non-commercial research only; the images' copyright
stays with their owners. Do not redistribute them.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

from . import utkface

PROJECT_PAGE = "https://susanqq.github.io/UTKFace/"
#: Google Drive file "UTKFace.tar.gz" linked from the project page.
DRIVE_ID = "0BxYys69jI14kYVM3aVhKS1VhRUk"
DRIVE_RESOURCE_KEY = "0-dabpv_3J0C0cditpiAfhAw"
URL = ("https://drive.usercontent.google.com/download?export=download&confirm=t"
       f"&id={DRIVE_ID}&resourcekey={DRIVE_RESOURCE_KEY}")
MIN_IMAGES = 20_000  # the archive holds 23,708; far fewer means a broken download
LICENCE = ("UTKFace is available for non-commercial research purposes only; the copyright "
           "of the images stays with their owners. Do not redistribute them.")


def download_utkface(dest: str | Path, url: str = URL, archive: str | Path | None = None,
                     min_images: int = MIN_IMAGES) -> Path:
    """Download (or take ``archive``), check and unpack UTKFace into ``dest/UTKFace``.

    Returns the image folder. Raises RuntimeError with what to do when the
    download fails or what arrived is not the dataset; nothing half-unpacked
    is left in ``dest``.
    """
    dest = Path(dest)
    target = dest / "UTKFace"
    if target.is_dir() and any(target.iterdir()):
        try:  # a copy cut short (an interrupted cp) must not pass for the dataset
            _check(target, min_images, what=f"'{target.name}/' in {dest.name or 'the data home'}")
        except RuntimeError as err:
            raise RuntimeError(f"{err} Move or delete that folder, then run the download "
                               "again.") from None
        print(f"UTKFace already present ({sum(1 for _ in target.iterdir())} files); nothing to do.")
        return target
    if archive and not Path(archive).is_file():
        raise FileNotFoundError(f"No archive at '{archive}': give the path of the "
                                "UTKFace.tar.gz you downloaded.")
    print(LICENCE)
    with tempfile.TemporaryDirectory(dir=_made(dest)) as tmp:
        tmp = Path(tmp)
        path = Path(archive) if archive else _fetch(url, tmp / "UTKFace.tar.gz")
        unpacked = _unpack(path, tmp / "unpacked")
        _check(unpacked, min_images)
        if target.is_dir():  # empty (checked above): moved onto, it would hold the images a
            target.rmdir()  # level down, where nothing looks for them
        shutil.move(str(unpacked), target)
    print(f"UTKFace ready: {sum(1 for _ in target.iterdir())} files in {target.name}/")
    return target


def _made(dest: Path) -> Path:
    """``dest``, created if need be: the download is unpacked beside its final place, so the
    move into it is a rename (no second copy of 100 MB, nothing half-moved)."""
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def _fetch(url: str, out: Path) -> Path:
    print(f"Downloading UTKFace (about 100 MB) from {url.split('?')[0]} ...")
    request = urllib.request.Request(url, headers={"User-Agent": "agelib"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(out, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
            expected = int(response.headers.get("Content-Length") or 0)
        if expected and out.stat().st_size < expected:  # the connection dropped midway
            raise OSError(f"the connection ended after {out.stat().st_size:,} of "
                          f"{expected:,} bytes")
    except OSError as err:
        raise RuntimeError(
            f"Could not download UTKFace ({err}). Download 'UTKFace.tar.gz' (Aligned & Cropped "
            f"Faces) from {PROJECT_PAGE} yourself, then run "
            "`python -m agelib download --archive PATH/UTKFace.tar.gz`, or point AGELIB_DATA at "
            "a copy you have. Until then every chapter runs on the synthetic faces.") from None
    return out


def _unpack(archive: Path, out: Path) -> Path:
    """Unpack a tar(.gz) safely and return the folder that holds the images."""
    head = archive.read_bytes()[:512] if archive.is_file() else b""
    if b"<html" in head.lower() or b"<!doctype" in head.lower():
        raise RuntimeError("The download is a web page, not the archive (Google Drive asked "
                           f"for confirmation). Download it by hand from {PROJECT_PAGE} and "
                           "pass --archive.")
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(out, filter="data")  # refuses absolute paths, '..' and links out
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:  # EOFError: cut short
        # tarfile's own first line may end in a colon before its per-method details
        first = str(err).splitlines()[0].rstrip(": ") if str(err) else type(err).__name__
        raise RuntimeError(f"'{archive.name}' is not a readable tar archive ({first}): an "
                           "interrupted download? Download it again.") from None
    folders = [p for p in [out, *out.rglob("*")] if p.is_dir()]
    return max(folders, key=lambda p: sum(1 for f in p.iterdir() if f.is_file()))


def _check(folder: Path, min_images: int, what: str = "The archive") -> None:
    """The archive (or a folder already there) must hold enough labelled images; say what
    is wrong otherwise."""
    names = [f.name for f in folder.iterdir() if f.is_file()]
    labelled = sum(_is_labelled(name) for name in names)
    if labelled < min_images:
        raise RuntimeError(f"{what} holds {labelled} labelled images (of {len(names)} "
                           f"files); UTKFace has over {min_images}. The download is incomplete "
                           "or is another dataset.")


def _is_labelled(name: str) -> bool:
    """Whether a file name carries UTKFace labels (as every image of the archive's does)."""
    try:
        utkface.parse_name(name)
    except ValueError:
        return False
    return True
