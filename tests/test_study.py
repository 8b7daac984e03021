"""Chapter 07's study tables, from records whose answers are known by construction."""

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from agelib import plots, records, study

PARTS = {"cnn": "stage1.pt", "vit": "stage2.pt"}


def run(variant: str, seed: int, test_mae: float, backbone: str = "hybrid_atto",
        tag: str = "cpu-study", valid_gap: float = 0.3, **config) -> dict:
    """A full-mode record of the CPU study (the fields the tables read)."""
    return {"id": f"{tag}-{backbone}-{variant}-{seed}", "tag": tag, "variant": variant,
            "backbone": backbone, "head": "regression", "loss": "adaptive", "pretrained": False,
            "data": "UTKFace", "mode": "full", "epochs": 20, "image_size": 64, "seed": seed,
            "params": 1_000_000, "valid_mae": test_mae + valid_gap, "test_mae": test_mae,
            "test_cs5": 0.5, "device": "cpu (x)", "seconds": 1800.0,
            "date": f"2026-01-0{seed + 1}T00:00:00+00:00", "config": {"model": {}, **config}}


@pytest.fixture
def raw() -> pd.DataFrame:
    return pd.DataFrame([
        run("stage 1", 0, 9.0, backbone="convnext_atto"),
        run("stage 1", 1, 8.8, backbone="convnext_atto"),
        run("stage 2", 0, 13.0, backbone="vit_tiny_patch16_224"),
        run("from scratch", 0, 9.7), run("from scratch", 1, 9.3),
        run("three-stage", 0, 8.2, init_from=PARTS), run("three-stage", 1, 8.0, init_from=PARTS),
        # distilled: seed 0 only, and the better test MAE but the worse validation MAE
        run("three-stage + distilled", 0, 7.9, valid_gap=0.9, init_from=PARTS,
            distill_from="teacher.pt"),
        run("2 CPU cores, 20 epochs", 0, 6.3, backbone="resnet18", tag="cpu-baseline"),
    ])


def test_the_comparison_picks_each_role_on_validation_and_measures_it_against_the_best_part(raw):
    table = study.comparison(records.report_table(raw), raw).set_index("role")
    assert list(table.index) == ["best part alone", "best hybrid, same budget",
                                 "best hybrid, with levers", "the ResNet-18 (teacher)"]
    assert table.loc["best part alone", "model"] == "convnext_atto (stage 1)"
    assert table.loc["best part alone", "test MAE"] == pytest.approx(8.9)
    assert table.loc["best hybrid, same budget", "vs best part"] == pytest.approx(8.9 - 9.5)
    # chosen on validation: three-stage (valid 8.4), not the distilled run (test 7.9, valid 8.8)
    assert table.loc["best hybrid, with levers", "model"] == "hybrid_atto (three-stage)"
    assert table.loc["best hybrid, with levers", "vs best part"] == pytest.approx(0.8)
    assert table.loc["the ResNet-18 (teacher)", "test MAE"] == pytest.approx(6.3)
    assert set(table["study"]) == {"cpu-study"}  # the teacher's own tag is no study


def test_lever_effects_compare_only_the_seeds_both_runs_have(raw):
    levers = [("three-stage start", "from scratch", "three-stage"),
              ("distillation", "three-stage", "three-stage + distilled"),
              ("not run", "from scratch", "ConvNeXt start")]
    effects = study.lever_effects(raw, "cpu-study", levers).set_index("lever")
    assert list(effects.index) == ["three-stage start", "distillation"]
    start = effects.loc["three-stage start"]
    assert (start["before"], start["after"]) == pytest.approx((9.5, 8.1))
    assert (start["seed 0"], start["seed 1"]) == pytest.approx((-1.5, -1.3))
    assert (start["change"], start["seeds"]) == pytest.approx((-1.4, 2))
    distil = effects.loc["distillation"]  # seed 0 alone: 8.2 -> 7.9
    assert (distil["before"], distil["change"], distil["seeds"]) == pytest.approx((8.2, -0.3, 1))
    assert math.isnan(distil["seed 1"])


def test_seed_noise_is_the_range_of_each_repeated_run(raw):
    low, high, n = study.seed_noise(records.per_seed(raw, "cpu-study"))
    assert (low, high, n) == pytest.approx((0.2, 0.4, 3))  # stage 1, three-stage; from scratch
    assert study.seed_noise(records.per_seed(raw[raw["seed"] == 0], "cpu-study")) is None


def test_hours_per_seed_sum_each_seeds_runs(raw):
    hours = study.hours_per_seed(raw, "cpu-study")
    assert hours.to_dict() == pytest.approx({0: 2.5, 1: 1.5})  # 5 and 3 runs of half an hour


def test_the_per_seed_figure_draws_a_row_per_run_worst_at_the_top_and_the_bar(raw):
    per_seed = records.per_seed(raw, "cpu-study")
    fig = plots.per_seed_figure(per_seed, "cpu-study", bars=[(6.3, "ResNet-18")])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == len(per_seed) == 5
    assert labels[0] == "vit_tiny_patch16_224 (stage 2)"  # the worst mean, drawn first
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [6.3]
    plt.close(fig)


# --------------------------------------------------------------------------- roles and the per-seed figure
def _study_run(variant, seed, test_mae, valid_mae, backbone="hybrid_atto", tag="study",
               **config) -> dict:
    """:func:`run` with its validation MAE given (the GPU study's tag by default)."""
    return run(variant, seed, test_mae, backbone, tag, valid_gap=valid_mae - test_mae, **config)


def test_a_run_distilled_from_a_teacher_alone_counts_as_levered():
    """Catches levered() looking only at init_from (a hybrid trained from scratch with a
    teacher was shown as the same budget as the parts)."""
    raw = pd.DataFrame([
        _study_run("stage 1", 0, 9.0, 9.3, backbone="convnext_atto"),
        _study_run("from scratch", 0, 9.7, 10.0),
        _study_run("distilled", 0, 8.5, 8.8, distill_from="teacher.pt"),
    ])
    assert study.levered(raw) == {("hybrid_atto", "distilled")}
    table = study.comparison(records.report_table(raw), raw).set_index("role")
    assert table.loc["best hybrid, same budget", "model"] == "hybrid_atto (from scratch)"
    assert table.loc["best hybrid, with levers", "model"] == "hybrid_atto (distilled)"


def test_the_gpu_studys_teacher_is_recorded_in_its_own_tag_but_is_no_part():
    """The GPU study records its teacher under its own tag (variant "teacher").
    Catches the teacher counted as a part, and the teacher role given to any run of the tag."""
    raw = pd.DataFrame([
        _study_run("stage 1", 0, 9.0, 9.3, backbone="convnext_atto"),
        _study_run("stage 2", 0, 13.0, 13.3, backbone="vit_tiny_patch16_224"),
        _study_run("from scratch", 0, 9.7, 10.0),
        _study_run("three-stage", 0, 5.9, 6.1, init_from={"cnn": "a.pt", "vit": "b.pt"}),
        _study_run("teacher", 0, 6.0, 6.3, backbone="resnet18"),
    ])
    table = study.comparison(records.report_table(raw), raw).set_index("role")
    assert table.loc["best part alone", "model"] == "convnext_atto (stage 1)"
    assert table.loc["the ResNet-18 (teacher)", "model"] == "resnet18 (teacher)"
    assert table.loc["the ResNet-18 (teacher)", "vs best part"] == pytest.approx(3.0)


def test_the_teacher_is_chosen_on_validation_too():
    """Catches the teacher picked on test MAE (the test set only reports)."""
    raw = pd.DataFrame([
        _study_run("stage 1", 0, 9.0, 9.3, backbone="convnext_atto", tag="cpu-study"),
        _study_run("20 epochs", 0, 6.6, 6.0, backbone="resnet18", tag="cpu-baseline"),
        _study_run("40 epochs", 0, 6.2, 6.4, backbone="resnet18", tag="cpu-baseline"),
    ])
    table = study.comparison(records.report_table(raw), raw).set_index("role")
    assert table.loc["the ResNet-18 (teacher)", "model"] == "resnet18 (20 epochs)"
    assert table.loc["the ResNet-18 (teacher)", "test MAE"] == pytest.approx(6.6)


def test_the_per_seed_figure_orders_rows_by_their_mean_and_marks_it_with_every_seed():
    """Catches rows ordered by their worst seed, the tick at the median, seeds past two dropped."""
    per_seed = pd.DataFrame([[5.0, 5.0, 11.0], [8.0, 8.0, 8.0]],  # means 7 and 8; max 11 and 8
                            index=pd.MultiIndex.from_tuples([("a", "spread"), ("b", "steady")],
                                                            names=["backbone", "variant"]),
                            columns=pd.Index([0, 1, 2], name="seed"))
    fig = plots.per_seed_figure(per_seed, "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b (steady)", "a (spread)"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["mean"].get_xdata()) == pytest.approx([8.0, 7.0])
    assert {"seed 0", "seed 1", "seed 2"} <= set(lines)
    plt.close(fig)


def test_a_lever_whose_runs_share_no_seed_is_left_out():
    """Catches a pair with no common seed kept as a row of NaNs (0 seeds): there is no
    seed-by-seed comparison to make, so the table must not claim one."""
    raw = pd.DataFrame([run("from scratch", 0, 9.0), run("three-stage", 1, 8.0)])
    effects = study.lever_effects(raw, "cpu-study", [("start", "from scratch", "three-stage")])
    assert effects.empty
