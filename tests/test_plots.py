"""The figures agelib draws: every face shown, and figures of synthetic faces kept out of
figures/ (README shows those)."""

import matplotlib.pyplot as plt
import numpy as np

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


def test_a_figure_of_synthetic_faces_goes_to_scratch_not_figures(home):
    """Catches save_figure ignoring real=False (a smoke run on a fresh clone overwrote the
    committed figures README shows)."""
    fig = plt.figure()
    path = plots.save_figure(fig, "mutation-hunt-check", real=False)
    plt.close(fig)
    assert path == home / "figures-scratch" / "mutation-hunt-check.png" and path.is_file()
    assert not (plots.figures_dir() / "mutation-hunt-check.png").exists()
