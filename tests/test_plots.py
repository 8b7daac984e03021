"""The figures agelib draws: every face shown, and figures of synthetic faces kept out of
figures/ (README shows those)."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from agelib import plots


def test_face_grid_shows_every_face_with_its_own_title():
    """Catches the last, partial row dropped (5 faces in rows of 4 drew 4), titles shifted."""
    images = np.stack([np.full((8, 8, 3), 40 * i, dtype=np.uint8) for i in range(5)])
    fig = plots.face_grid(images, titles=list("abcde"), ncols=4)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 8 and len(shown) == 5
    assert [ax.get_title() for ax in shown] == list("abcde")
    assert [int(ax.images[0].get_array()[0, 0, 0]) for ax in shown] == [0, 40, 80, 120, 160]
    plt.close(fig)


def test_a_figure_of_synthetic_faces_goes_to_scratch_not_figures(home, tmp_path, monkeypatch):
    """Catches save_figure ignoring real=False (a smoke run on a fresh clone overwrote the
    committed figures README shows)."""
    committed = tmp_path / "figures"  # stands in for figures/: the bug must not write there
    monkeypatch.setattr(plots, "figures_dir", lambda: committed)
    fig = plt.figure()
    path = plots.save_figure(fig, "mutation-hunt-check", real=False)
    plt.close(fig)
    assert path == home / "figures-scratch" / "mutation-hunt-check.png" and path.is_file()
    assert not (committed / "mutation-hunt-check.png").exists()


def test_figures_go_to_the_checkouts_figures_folder_wherever_python_runs(tmp_path, monkeypatch):
    """Catches figures_dir relative to the working directory (a chapter runs in notebooks/,
    so its figures landed in notebooks/figures/, not README's figures/)."""
    from agelib import settings

    monkeypatch.chdir(tmp_path)
    assert plots.figures_dir() == settings.repo_root() / "figures"


def test_face_grid_labels_each_row_and_leaves_room_for_titles():
    """Catches row labels written along the first row instead of down the first column, and
    titled faces squeezed into the height of untitled ones."""
    images = np.zeros((6, 8, 8, 3), dtype=np.uint8)
    fig = plots.face_grid(images, ncols=3, row_labels=["young", "old"])
    assert [ax.get_ylabel() for ax in fig.axes] == ["young", "", "", "old", "", ""]
    titled = plots.face_grid(images, titles=["a\nb"] * 6, ncols=3)
    assert titled.get_size_inches()[1] > fig.get_size_inches()[1]
    plt.close(fig)
    plt.close(titled)


def test_face_grid_says_when_titles_are_missing():
    """Catches fewer titles than faces failing with a bare IndexError from inside the loop."""
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="2 titles for 3 faces"):
        plots.face_grid(images, titles=["a", "b"])
    plt.close("all")
