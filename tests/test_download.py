"""Fetching and checking UTKFace (agelib.data.download), offline with file:// URLs."""

import io
import tarfile

import pytest
from conftest import face_image, jpeg_bytes

from agelib.data import download

NAMES = [f"{20 + i}_{i % 2}_{i % 5}_2017011715000{i:04d}.jpg.chip.jpg" for i in range(6)]


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_archive(path, members: dict) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            add(tar, name, data)
    return path.as_uri()


@pytest.fixture
def archive(tmp_path):
    members = {f"UTKFace/{name}": jpeg_bytes(face_image(i, 24)) for i, name in enumerate(NAMES)}
    members["UTKFace/README.txt"] = b"not labelled"
    return make_archive(tmp_path / "UTKFace.tar.gz", members)


def test_download_unpacks_into_dest_utkface(archive, tmp_path):
    dest = tmp_path / "dest"
    folder = download.download_utkface(dest, url=archive, min_images=5)
    assert folder == dest / "UTKFace"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*NAMES, "README.txt"])
    assert [p.name for p in dest.iterdir()] == ["UTKFace"]  # no temporary folder left behind
    assert (folder / NAMES[0]).read_bytes() == jpeg_bytes(face_image(0, 24))


def test_download_takes_an_archive_at_the_top_level(tmp_path):
    members = {name: jpeg_bytes(face_image(i, 24)) for i, name in enumerate(NAMES)}
    make_archive(tmp_path / "flat.tar.gz", members)
    folder = download.download_utkface(tmp_path / "dest", archive=tmp_path / "flat.tar.gz",
                                       min_images=6)
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)


def test_download_of_a_web_page_points_to_the_project_page(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html><body>Google Drive can't scan this file</body></html>")
    dest = tmp_path / "dest"
    with pytest.raises(RuntimeError, match="web page") as err:
        download.download_utkface(dest, url=page.as_uri(), min_images=1)
    assert download.PROJECT_PAGE in str(err.value) and "--archive" in str(err.value)
    assert list(dest.iterdir()) == []


def test_download_refuses_a_member_that_escapes_and_leaves_nothing(tmp_path):
    members = {f"UTKFace/{name}": jpeg_bytes(face_image(i, 24)) for i, name in enumerate(NAMES)}
    members["../evil"] = b"gotcha"
    url = make_archive(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(RuntimeError, match="not a readable tar archive"):
        download.download_utkface(dest, url=url, min_images=1)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "deep" / "evil").exists()


def test_download_refuses_an_absolute_member(tmp_path):
    url = make_archive(tmp_path / "abs.tar.gz", {str(tmp_path / "abs-evil"): b"x"})
    with pytest.raises(RuntimeError):
        download.download_utkface(tmp_path / "dest", url=url, min_images=1)
    assert not (tmp_path / "abs-evil").exists()


def test_download_refuses_an_archive_with_too_few_labelled_images(archive, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(RuntimeError, match="6 labelled images \\(of 7 files\\)") as err:
        download.download_utkface(dest, url=archive, min_images=100)
    assert "incomplete" in str(err.value)
    assert list(dest.iterdir()) == []


def test_download_of_a_file_that_is_not_a_tar_says_so(tmp_path):
    junk = tmp_path / "UTKFace.tar.gz"
    junk.write_bytes(b"\x00\x01 definitely not gzip" * 50)
    with pytest.raises(RuntimeError, match="not a readable tar archive"):
        download.download_utkface(tmp_path / "dest", archive=junk, min_images=1)


def test_unreachable_url_tells_the_user_to_use_archive(tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(RuntimeError, match="Could not download") as err:
        download.download_utkface(dest, url="file:///nonexistent/UTKFace.tar.gz", min_images=1)
    assert "--archive" in str(err.value) and download.PROJECT_PAGE in str(err.value)
    assert list(dest.iterdir()) == []


def test_present_data_is_not_downloaded_again(tmp_path, capsys):
    folder = tmp_path / "dest" / "UTKFace"
    folder.mkdir(parents=True)
    (folder / NAMES[0]).write_bytes(b"kept")
    result = download.download_utkface(tmp_path / "dest", url="file:///nonexistent/x.tar.gz",
                                       min_images=1)
    assert result == folder and (folder / NAMES[0]).read_bytes() == b"kept"
    assert "already present" in capsys.readouterr().out
    # a copy cut short is not the dataset: said, and left as it is
    with pytest.raises(RuntimeError, match="'UTKFace/' in dest holds 1 labelled images.*Move "
                                           "or delete that folder"):
        download.download_utkface(tmp_path / "dest", archive=tmp_path / "x.tar.gz", min_images=5)
    assert (folder / NAMES[0]).read_bytes() == b"kept"


def test_an_archive_cut_short_says_so(archive, tmp_path):
    whole = (tmp_path / "UTKFace.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RuntimeError, match=r"not a readable tar archive \([^:]*\): an interrupted download"):
        download.download_utkface(tmp_path / "dest", archive=tmp_path / "cut.tar.gz",
                                  min_images=1)


def test_a_missing_archive_is_named_as_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="No archive at .*nope.tar.gz"):
        download.download_utkface(tmp_path / "data", archive=tmp_path / "nope.tar.gz")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("page", ['<!doctype html>\n<HTML lang="en"><head>',
                                  '\n  <html lang="en">'])
def test_a_web_page_is_recognised_however_its_tags_are_written(tmp_path, page):
    """Catches a web-page check that only knows one spelling of the html tag."""
    (tmp_path / "page.html").write_text(page + "<title>Google Drive - Virus scan warning</title>")
    with pytest.raises(RuntimeError, match="web page"):
        download.download_utkface(tmp_path / "dest", url=(tmp_path / "page.html").as_uri(),
                                  min_images=1)


def test_a_file_that_is_no_archive_at_all_says_so_in_one_clean_line(tmp_path):
    """Catches tarfile's multi-line reason cut to a dangling "...successfully:)"."""
    (tmp_path / "page.tar.gz").write_bytes(bytes(range(256)) * 4)  # not an archive at all
    with pytest.raises(RuntimeError, match="not a readable tar archive") as err:
        download.download_utkface(tmp_path / "dest", archive=tmp_path / "page.tar.gz",
                                  min_images=1)
    assert ":)" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("flat", [False, True])
def test_download_into_an_empty_utkface_folder_fills_that_folder(tmp_path, flat):
    """Catches images moved *inside* an existing empty ``dest/UTKFace`` (as
    ``dest/UTKFace/UTKFace`` or ``dest/UTKFace/unpacked``) instead of into it."""
    members = {("" if flat else "UTKFace/") + name: jpeg_bytes(face_image(i, 24))
               for i, name in enumerate(NAMES)}
    make_archive(tmp_path / "UTKFace.tar.gz", members)
    dest = tmp_path / "dest"
    (dest / "UTKFace").mkdir(parents=True)  # made by hand, or left by an earlier attempt
    folder = download.download_utkface(dest, archive=tmp_path / "UTKFace.tar.gz", min_images=6)
    assert folder == dest / "UTKFace"
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)
