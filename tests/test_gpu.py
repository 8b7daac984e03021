"""What only a GPU can check: the fast path really runs there, in the precision it claims.

Marked ``gpu``: skipped on a machine without CUDA (CI), run on a lent GPU by
``bash .ci/gpu test``. Tiny models and the session's synthetic faces at 32 px.
"""

import warnings

import pytest
import torch

from conftest import tiny_mode

from agelib import bench, data, models, training

pytestmark = pytest.mark.gpu
MODE = tiny_mode()


def test_resident_images_move_to_the_gpu_once(synthetic_faces):
    dls = data.face_dataloaders(synthetic_faces, mode=MODE, size=32, device="cuda")
    assert dls.train.dataset.images.is_cuda and dls.train.dataset.images.dtype == torch.uint8
    where = dls.train.dataset.images.data_ptr()
    for x, y in dls.train:  # a whole epoch: batches are cut from the resident tensor
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    x, y = dls.train.one_batch()
    assert dls.train.dataset.images.data_ptr() == where  # never copied again


class ProbeFastPath(training.Callback):
    """What a training step really ran: the first convolution's output dtype (autocast),
    its weights' memory layout (channels-last) and whether AdamW was the fused one."""

    def before_fit(self):
        self.conv = next(m for m in self.learn.model.modules() if isinstance(m, torch.nn.Conv2d))
        self.dtypes = set()
        self.hook = self.conv.register_forward_hook(
            lambda module, inputs, out: self.dtypes.add(out.dtype) if self.training else None)

    def after_fit(self):
        self.hook.remove()
        self.channels_last = self.conv.weight.is_contiguous(memory_format=torch.channels_last)
        self.fused = all(g.get("fused") for g in self.learn.opt.opt.param_groups)


def test_training_on_the_gpu_takes_the_fast_path_and_learns(synthetic_faces, results):
    cfg = training.TrainConfig(model=models.ModelConfig("test_resnet"), loss="l1", epochs=2,
                               image_size=32, lr=3e-3)
    probe = ProbeFastPath()
    run = training.train_age_model(cfg, faces=synthetic_faces, mode=MODE, device="cuda",
                                   verbose=False, cbs=[probe])
    assert run.record["device"].startswith("cuda (")
    assert next(run.model.parameters()).is_cuda
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert probe.dtypes == {half}  # autocast really ran, on every training batch
    assert probe.channels_last and probe.fused
    assert run.record["test_mae"] < 60  # finite and in years: bf16 autocast did not break it


def test_a_hybrid_trains_on_the_gpu_with_mixed_precision(synthetic_faces, results):
    cfg = training.TrainConfig(model=models.named_config("hybrid_atto", img_size=32),
                               loss="adaptive", lr=5e-4, schedule="warmup_cosine", epochs=1,
                               image_size=32)
    run = training.train_age_model(cfg, faces=synthetic_faces, mode=MODE, device="cuda",
                                   verbose=False)
    assert run.record["test_mae"] == run.record["test_mae"]  # not NaN


class CountSyncs(training.Callback):
    """Count host-device synchronisations during the training (or validation) batches only."""

    def __init__(self, phase: str = "train"):
        self.caught = []
        setattr(self, f"before_{phase}", self._start)
        setattr(self, f"after_{phase}", self._stop)

    def _start(self):
        self.recording = warnings.catch_warnings(record=True)
        self.caught = self.recording.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def _stop(self):
        torch.cuda.set_sync_debug_mode(0)
        self.recording.__exit__(None, None, None)
        self.syncs = [w for w in self.caught if "synchroniz" in str(w.message)]


def test_training_batches_do_not_wait_for_the_gpu(synthetic_faces):
    """No CPU round trip per training batch, so Python queues batch n+1 while the GPU runs
    batch n: a handful of syncs per epoch at most, never one per batch. The progress bar
    stays on, as in a notebook: it reads the loss only when it redraws (its first five
    batches, then at most five times a second)."""
    dls = data.face_dataloaders(synthetic_faces, mode=MODE, size=32, batch_size=2,
                                device="cuda", grayscale=0.5, rotate=10, jitter=0.2)
    model = models.create_model(models.ModelConfig("test_resnet", img_size=32)).cuda()
    learn = training.make_learner(dls, training.speed_up(model, torch.device("cuda")), "l1")
    counter = CountSyncs()
    with learn.no_logging():
        learn.fit(1, 1e-3, cbs=[counter])
    batches = len(dls.train)
    assert batches >= 32
    assert len(counter.syncs) < batches // 2, [str(w.message)[:120] for w in counter.syncs[:5]]


def test_latency_on_the_gpu_runs_in_bf16():
    result = bench.run_latency(["hybrid_atto"], size=64, batches=[1, 4], repeats=3, warmup=1,
                               device="cuda")
    assert result["settings"]["amp"] in ("bfloat16", "float16")
    assert result["device"]["type"] == "cuda" and result["device"]["name"]
    assert all(0 < row["ms"] < 1000 for row in result["latency"])


def test_a_cuda_graph_replays_the_same_ages_faster_at_batch_1():
    model = bench.bench_model("hybrid_atto", 64).cuda().eval()
    x = torch.randn(1, 3, 64, 64, device="cuda")
    with torch.inference_mode():
        replay = bench.cuda_graphed(model, x, torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            eager = model(x).float()
        fresh = torch.randn_like(x)  # new input, same buffers: the graph must follow it
        graphed = replay(fresh).float().clone()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            expected = model(fresh).float()
    assert torch.allclose(graphed, expected, rtol=2e-2, atol=2e-2)
    assert not torch.allclose(eager, expected)  # the inputs differed, so must the ages
    eager_ms = bench.latency(model, 1, 64, "cuda", warmup=3, repeats=20, dtype=torch.bfloat16)
    graph_ms = bench.latency(model, 1, 64, "cuda", warmup=3, repeats=20, dtype=torch.bfloat16,
                             cuda_graph=True)
    assert graph_ms < eager_ms
    with pytest.raises(ValueError, match="captured for"):
        replay(torch.randn(2, 3, 64, 64, device="cuda"))  # one graph per input shape


def test_validation_batches_do_not_wait_for_the_gpu(synthetic_faces):
    """The validation loss and predictions stay on the GPU until the epoch's metrics."""
    dls = data.face_dataloaders(synthetic_faces, mode=MODE, size=32, batch_size=2, device="cuda")
    model = models.create_model(models.ModelConfig("test_resnet", img_size=32)).cuda()
    learn = training.make_learner(dls, training.speed_up(model, torch.device("cuda")), "l1")
    counter = CountSyncs("validate")
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3, cbs=[counter])
    batches = len(dls.valid)
    assert batches >= 8
    assert len(counter.syncs) < batches // 2, [str(w.message)[:120] for w in counter.syncs[:5]]
