"""The bench measures what it says: warm-up excluded, medians of windows, both pipelines.

Everything runs on the CPU at 32 px with batches of 4 (no ``torch.compile``).
"""

import json
import statistics
import time

import pytest
import torch

from agelib import bench, cli, models
from agelib.data.loaders import IMAGENET_MEAN, IMAGENET_STD

SIZE, BATCH = 32, 4
LOW = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))  # normalised black
HIGH = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))  # normalised white


def slow_then_fast(slow_calls: int, slow: float = 0.2, fast: float = 0.002):
    """A fake step whose first calls are slow, like a first CUDA call or a compile."""
    calls = []

    def step() -> int:
        calls.append(1)
        time.sleep(slow if len(calls) <= slow_calls else fast)
        return BATCH

    return step


def test_warmup_is_not_timed():
    result = bench.throughput(slow_then_fast(2), steps=3, warmup=2, windows=3)
    assert len(result["windows"]) == 3
    assert min(result["windows"]) > BATCH * 3 / 0.2  # no window paid for a slow call
    cold = bench.throughput(slow_then_fast(2), steps=3, warmup=0, windows=3)
    assert cold["windows"][0] < BATCH * 3 / 0.4 < cold["img_per_s"]  # only the first window


def test_the_median_window_is_reported():
    result = bench.throughput(slow_then_fast(3, slow=0.1), steps=3, warmup=0, windows=3)
    assert result["img_per_s"] == statistics.median(result["windows"])
    assert result["img_per_s"] > 5 * min(result["windows"])  # one slow window does not count


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="steps >= 1"):
        bench.throughput(lambda: 1, steps=0)


@pytest.fixture
def batch_sources(synthetic_faces):
    faces = synthetic_faces
    sha1s = bench.bench_images(faces, n_images=16)
    return faces, {
        "typical": bench.typical_batches(faces, SIZE, BATCH, num_workers=0, sha1s=sha1s),
        "typical (1 worker)": bench.typical_batches(faces, SIZE, BATCH, num_workers=1,
                                                    sha1s=sha1s),
        "resident": bench.resident_batches(faces, SIZE, BATCH, sha1s=sha1s),
    }


def test_each_pipeline_yields_normalised_batches(batch_sources):
    _, sources = batch_sources
    for name, batches in sources.items():
        for _ in range(5):  # 16 images at 4 a batch: crosses an epoch
            images, ages = next(batches)
            assert images.shape == (BATCH, 3, SIZE, SIZE), name
            assert images.dtype == torch.float32 and ages.shape == (BATCH,), name
            assert LOW - 0.05 <= images.min() and images.max() <= HIGH + 0.05, name
            assert images.std() > 0.2, name  # normalised pictures, not zeros
            assert ((ages >= 0) & (ages <= 120)).all(), name
        batches.close()


def test_training_and_data_throughput_with_the_switches(batch_sources):
    _, sources = batch_sources
    model = models.create_model(models.ModelConfig("resnet18"))
    before = next(model.parameters()).detach().clone()
    for switches in ({}, {"amp": True, "channels_last": True}):
        result = bench.training_throughput(model, sources["resident"], steps=1, warmup=1,
                                           windows=2, device="cpu", **switches)
        assert result["img_per_s"] > 0 and len(result["windows"]) == 2
        assert result["settings"]["amp"] == ("bfloat16" if switches else None)
        assert result["settings"]["channels_last"] == bool(switches)
        assert result["settings"]["fused"] is False and result["settings"]["compile"] is False
    assert not torch.equal(before, next(model.parameters()).detach())  # it really trained
    data = bench.data_throughput(sources["typical"], steps=2, warmup=1, windows=2)
    assert data["img_per_s"] > 0 and len(data["windows"]) == 2


def test_latency_still_works_and_takes_channels_last():
    model = models.create_model(models.ModelConfig("resnet18"))
    assert bench.latency(model, 1, SIZE, warmup=1, repeats=2) > 0
    assert bench.latency(model, 2, SIZE, warmup=1, repeats=2, channels_last=True,
                         dtype=torch.bfloat16) > 0


def test_clear_errors(synthetic_faces):
    with pytest.raises(ValueError, match="unknown pipeline"):
        bench.run_bench(pipelines=["dali"], faces=synthetic_faces)
    with pytest.raises(ValueError, match="smaller --batch-size"):
        next(bench.resident_batches(synthetic_faces, SIZE, 64,
                                    sha1s=bench.bench_images(synthetic_faces, 8)))


def test_sdpa_switch_is_restored():
    from timm.layers import use_fused_attn

    before = use_fused_attn()
    with bench.fused_attention(False):
        assert not use_fused_attn()
    assert use_fused_attn() == before
    plain = bench.bench_model("hybrid_atto", SIZE, sdpa=False)
    assert not plain.backbone.blocks[0].attn.fused_attn
    assert use_fused_attn() == before


def test_cli_json_has_device_versions_settings_and_both_pipelines(synthetic_faces, tmp_path,
                                                                   capsys):
    out = tmp_path / "bench" / "cpu.json"
    code = cli.main(["bench", "--model", "resnet18", "--size", str(SIZE), "--batch-size",
                     str(BATCH), "--steps", "1", "--warmup", "1", "--windows", "2",
                     "--workers", "0", "--images", "16", "--latency-batch", "1",
                     "--latency-batch", "4", "--latency-repeats", "2", "--source", "synthetic",
                     "--device", "cpu", "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result == json.loads(out.read_text())
    assert result["device"]["type"] == "cpu" and result["device"]["name"]
    assert {"torch", "timm", "fastai", "agelib"} <= set(result["versions"])
    assert result["versions"]["torch"] == torch.__version__.split("+")[0]
    assert result["settings"]["batch_size"] == BATCH and result["settings"]["compile"] is False
    assert result["data"] == {"name": "synthetic", "real": False, "n_images": 16}
    rows = {r["pipeline"]: r for r in result["results"]}
    assert set(rows) == {"typical", "resident"}
    for row in rows.values():
        assert row["model"] == "resnet18" and row["size"] == SIZE
        assert row["train_img_per_s"] > 0 and len(row["train_windows"]) == 2
        assert row["data_img_per_s"] > 0 and row["setup_s"] >= 0
    assert [(r["batch"], r["ms"] > 0) for r in result["latency"]] == [(1, True), (4, True)]
    assert "/tmp" not in captured.out


# --------------------------------------------------------------------------- saved benches, README
def bench_result(device="NVIDIA H100", mode="full", typical=1000.0, resident=3500.0, date="2026-11-23"):
    """A run_bench result with two pipelines, as saved by bench.save_bench."""
    rows = [{"model": "resnet18", "size": 128, "pipeline": p, "data_img_per_s": v * 2,
             "train_img_per_s": v} for p, v in [("typical", typical), ("resident", resident)]]
    return {"device": {"type": "cuda", "name": device}, "mode": mode, "date": date,
            "data": {"name": "UTKFace (128 px WebP pack)", "real": True, "n_images": 14591},
            "settings": {"batch_size": 256, "amp": "bfloat16", "channels_last": True,
                         "compile": False, "sdpa": True}, "results": rows, "latency": []}


def test_speed_table_compares_each_pipeline_with_the_typical_one():
    table = bench.speed_table(bench_result())
    assert list(table["pipeline"]) == ["typical", "resident"]
    assert table["speedup"].tolist() == pytest.approx([1.0, 3.5])


def test_saved_benches_load_back_and_make_the_readme_table(tmp_path):
    first = bench.save_bench(bench_result(resident=2000.0, date="2026-11-22"), tmp_path)
    assert first.parent == tmp_path and first.name.endswith("-cuda-full.json")
    time.sleep(1.1)  # file names carry the second
    bench.save_bench(bench_result(), tmp_path)
    (tmp_path / "notes.json").write_text("{")  # cut short: skipped, by name
    with pytest.warns(UserWarning, match="skipped notes.json: not a readable bench result"):
        runs = bench.load_bench_runs(tmp_path)
    assert len(runs) == 2
    table = bench.readme_bench_table(runs)
    assert ("| cuda (NVIDIA H100) | full | UTKFace (128 px WebP pack) | resnet18 | 128 | 256 | "
            "bfloat16, channels-last | resident | 7,000 | 3,500 | 3.50× | 2026-11-23 |"
            ) in table  # the data says what was decoded
    assert "2026-11-22" not in table  # the later run of the same device and mode replaced it
    assert len(table.splitlines()) == 2 + 2  # header, rule, two pipelines
    assert "no full-mode bench recorded" in bench.readme_bench_table([])
    smoke = bench_result(resident=99_000.0, mode="smoke", date="2026-11-30")
    assert bench.readme_bench_table(runs + [smoke]) == table  # a smoke bench is a check, not a row
    text = f"a\n{bench.BENCH_START}\nold\n{bench.BENCH_END}\nb"
    assert bench.readme_with_bench(text, runs) == f"a\n{bench.BENCH_START}\n{table}\n{bench.BENCH_END}\nb"


def test_a_compiled_bench_and_one_without_the_data_column_are_rows_of_their_own():
    eager = bench_result(date="2026-11-23")
    compiled = bench_result(resident=9000.0, date="2026-11-24")
    compiled["settings"] = {**compiled["settings"], "compile": "max-autotune"}
    no_data = bench_result(date="2026-11-25")
    no_data["settings"] = {**no_data["settings"], "batch_size": 128}
    for row in no_data["results"]:
        row.pop("data_img_per_s")  # saved with --no-data-only
    table = bench.readme_bench_table([eager, compiled, no_data])
    assert "| bfloat16, channels-last | resident | 7,000 | 3,500 |" in table  # eager, kept
    assert "| bfloat16, channels-last, compiled (max-autotune) | resident |" in table
    assert "| 128 | bfloat16, channels-last | resident |  | 3,500 |" in table
    assert len(table.splitlines()) == 2 + 6


# --------------------------------------------------------------------------- the latency table
def test_latency_only_cli_counts_parameters_and_times_each_batch(tmp_path, capsys):
    out = tmp_path / "latency.json"
    code = cli.main(["bench", "--latency-only", "--model", "resnet18", "--model", "hybrid_atto",
                     "--size", "32", "--latency-batch", "1", "--latency-batch", "2",
                     "--latency-repeats", "2", "--warmup", "1", "--device", "cpu", "--json",
                     "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["kind"] == "latency" and result["settings"]["amp"] is None  # fp32 on a CPU
    rows = {(r["model"], r["batch"]): r for r in result["latency"]}
    assert set(rows) == {("resnet18", 1), ("resnet18", 2), ("hybrid_atto", 1), ("hybrid_atto", 2)}
    from agelib import models
    expected = models.count_parameters(models.create_model(models.named_config("resnet18", img_size=32)))
    assert rows[("resnet18", 1)]["params"] == expected
    assert all(r["ms"] > 0 and r["size"] == 32 for r in rows.values())


def latency_result(device="NVIDIA H100", mode="full", amp="bfloat16", date="2026-11-24"):
    rows = [{"model": m, "size": 224, "batch": b, "ms": ms, "params": p}
            for m, p, b, ms in [("resnet18", 11.2e6, 1, 1.0), ("resnet18", 11.2e6, 64, 4.0),
                                ("hybrid_paper", 33.0e6, 1, 2.9), ("hybrid_paper", 33.0e6, 64, 30.0)]]
    return {"kind": "latency", "device": {"type": "cuda", "name": device}, "mode": mode,
            "date": date, "settings": {"amp": amp, "compile": False}, "results": [], "latency": rows}


def test_readme_latency_table_shows_full_mode_latency_runs_only():
    runs = [bench_result(), latency_result(mode="smoke"), latency_result(date="2026-11-23"),
            latency_result()]
    table = bench.readme_latency_table(runs)
    assert "| cuda (NVIDIA H100) | bfloat16 | hybrid_paper | 33.00 | 224 | 2.9 | 30.0 | 2026-11-24 |" in table
    assert "2026-11-23" not in table and len(table.splitlines()) == 2 + 2  # the latest, two models
    assert "no latency run" in bench.readme_latency_table([bench_result(), latency_result(mode="smoke")])
    # a latency run never replaces the training-speed table of its device
    assert "3,500" in bench.readme_bench_table(runs)


def test_a_cuda_graph_run_is_its_own_row_of_the_latency_table():
    graphed = latency_result()
    graphed["settings"]["cuda_graph"] = True
    table = bench.readme_latency_table([latency_result(), graphed])
    assert "| cuda (NVIDIA H100) | bfloat16 | hybrid_paper |" in table
    assert "| cuda (NVIDIA H100) | bfloat16, CUDA graph | hybrid_paper |" in table


def test_channels_last_is_its_own_row_and_a_later_run_of_one_model_hides_no_other():
    later = latency_result(date="2026-11-25")
    later["latency"] = [r for r in later["latency"] if r["model"] == "hybrid_paper"]
    channels_last = latency_result(date="2026-11-26")
    channels_last["settings"]["channels_last"] = True
    table = bench.readme_latency_table([latency_result(), later, channels_last])
    assert "| cuda (NVIDIA H100) | bfloat16 | resnet18 | 11.20 | 224 | 1.0 | 4.0 | 2026-11-24 |" in table
    assert "| cuda (NVIDIA H100) | bfloat16 | hybrid_paper | 33.00 | 224 | 2.9 | 30.0 | 2026-11-25 |" in table
    assert "| cuda (NVIDIA H100) | bfloat16, channels-last | resnet18 |" in table
    assert len(table.splitlines()) == 2 + 4


def test_cuda_graphs_refuse_a_cpu_tensor_saying_what_to_do():
    model = bench.bench_model("hybrid_atto", 32)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device.*without cuda_graph"):
        bench.cuda_graphed(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="pick one of cuda_graph and compile"):
        bench.run_latency(["hybrid_atto"], size=32, cuda_graph=True, compile="reduce-overhead",
                          device="cpu")


def test_the_cli_keeps_cuda_graphs_to_latency_runs(capsys):
    assert cli.main(["bench", "--cuda-graph", "--device", "cpu"]) == 2
    assert "--cuda-graph times inference only: add --latency-only" in capsys.readouterr().err


def test_a_later_bench_of_one_model_does_not_hide_another_models_rows():
    hybrid = bench_result(date="2026-11-24", resident=5400.0)
    hybrid["results"] = [{**r, "model": "hybrid_paper", "size": 224} for r in hybrid["results"]]
    rerun = bench_result(date="2026-11-25", resident=4000.0)  # resnet18 again, later
    table = bench.readme_bench_table([bench_result(), hybrid, rerun])
    rows = table.splitlines()[2:]
    assert len(rows) == 4  # two models x two pipelines, each its latest
    assert any("hybrid_paper | 224 | 256 | bfloat16, channels-last | resident |" in r
               and "5,400 | 5.40×" in r for r in rows)
    assert any("resnet18 | 128 | 256 | bfloat16, channels-last | resident |" in r
               and "4,000 | 4.00× | 2026-11-25" in r
               for r in rows)
    assert "3,500" not in table  # the older resnet18 run was replaced row by row


def test_throughput_counts_images_not_steps(monkeypatch):
    import itertools

    clock = itertools.count(0.0, 0.5)  # each reading of the clock half a second later
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    # one window of 4 steps of 32 images between two readings: 128 images in 0.5 s
    assert bench.throughput(lambda: 32, steps=4, warmup=0, windows=1)["img_per_s"] == 256


class Scheduled(torch.nn.Module):
    """A model whose forward passes sleep for the given seconds, one after another."""

    def __init__(self, seconds):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seconds = list(seconds)

    def forward(self, x):
        time.sleep(self.seconds.pop(0))
        return x.mean((1, 2, 3))


def test_latency_leaves_out_the_warmup_and_takes_the_median():
    """Catches a latency that times the warm-up passes or averages in one slow pass."""
    model = Scheduled([0.15, 0.15, 0.0, 0.3, 0.0])  # two slow warm-ups, then one slow repeat
    assert bench.latency(model, 1, 8, warmup=2, repeats=3) < 0.05


def test_the_bench_times_training_faces_only(synthetic_faces):
    """Catches bench images drawn from the test or valid split."""
    split = synthetic_faces.split(0)
    for n in (None, 20):
        sha1s = bench.bench_images(synthetic_faces, n_images=n)
        assert set(split[sha1s]) == {"train"} and len(set(sha1s)) == len(sha1s)


def test_resident_batches_are_augmented_and_always_full(synthetic_faces):
    """Catches a resident pipeline timed without augmentation (unfair to the typical one)
    or with a last partial batch."""
    one = bench.bench_images(synthetic_faces, n_images=1)
    batches = bench.resident_batches(synthetic_faces, SIZE, 1, sha1s=one)
    views = [next(batches)[0] for _ in range(4)]  # one face, cropped and flipped at random
    assert not all(torch.equal(views[0], v) for v in views[1:])
    batches.close()
    batches = bench.resident_batches(synthetic_faces, SIZE, BATCH,
                                     sha1s=bench.bench_images(synthetic_faces, n_images=6))
    assert [len(next(batches)[1]) for _ in range(4)] == [BATCH] * 4  # 6 faces: 2 left over
    batches.close()
