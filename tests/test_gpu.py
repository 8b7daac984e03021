"""What only a GPU can check: the fast path really runs there, in the precision it claims.

Marked ``gpu``: skipped on a machine without CUDA (CI), run on a lent GPU by
``bash .ci/gpu test``. Tiny models and the session's synthetic faces at 32 px.
"""

import pytest
import torch

from conftest import tiny_mode

from agelib import bench, data, models, training

pytestmark = pytest.mark.gpu
MODE = tiny_mode()


def test_resident_images_move_to_the_gpu_once(synthetic_faces):
    dls = data.face_dataloaders(synthetic_faces, mode=MODE, size=32, device="cuda")
    assert dls.train.dataset.images.is_cuda and dls.train.dataset.images.dtype == torch.uint8
    x, y = dls.train.one_batch()
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32


def test_training_on_the_gpu_records_the_device_and_learns(synthetic_faces, results):
    cfg = training.TrainConfig(model=models.ModelConfig("test_resnet"), loss="l1", epochs=2,
                               image_size=32, lr=3e-3)
    run = training.train_age_model(cfg, faces=synthetic_faces, mode=MODE, device="cuda",
                                   verbose=False)
    assert run.record["device"].startswith("cuda (")
    assert next(run.model.parameters()).is_cuda
    assert run.record["test_mae"] < 60  # finite and in years: bf16 autocast did not break it


def test_a_hybrid_trains_on_the_gpu_with_mixed_precision(synthetic_faces, results):
    cfg = training.TrainConfig(model=models.named_config("hybrid_atto", img_size=32),
                               loss="adaptive", lr=5e-4, schedule="warmup_cosine", epochs=1,
                               image_size=32)
    run = training.train_age_model(cfg, faces=synthetic_faces, mode=MODE, device="cuda",
                                   verbose=False)
    assert run.record["test_mae"] == run.record["test_mae"]  # not NaN


def test_latency_on_the_gpu_runs_in_bf16():
    result = bench.run_latency(["hybrid_atto"], size=64, batches=[1, 4], repeats=3, warmup=1,
                               device="cuda")
    assert result["settings"]["amp"] in ("bfloat16", "float16")
    assert result["device"]["type"] == "cuda" and result["device"]["name"]
    assert all(0 < row["ms"] < 1000 for row in result["latency"])
