"""Measuring speed honestly: warm-up excluded, medians of repeated timed windows.

A single timing is noise: the first calls pay for memory allocation, kernel
selection, ``torch.compile`` and caches, and GPU work is asynchronous. Every
measurement here therefore runs warm-up calls first, synchronises the device
around each timed stretch, repeats, and reports the median:

* :func:`latency`: seconds for one forward pass (inference), batch 1 or 64, eager
  or replayed as a CUDA graph (:func:`cuda_graphed`);
* :func:`throughput`: images per second of any ``step()`` that returns how many
  images it handled, timed in ``windows`` windows of ``steps`` calls;
* :func:`training_throughput`: that, for a training step (forward, loss,
  backward, AdamW step), with mixed precision, ``channels_last``, a fused
  optimiser and ``torch.compile`` each switchable;
* :func:`data_throughput`: the data path alone, so one sees where time goes.

Two data pipelines are compared side by side in one run by :func:`run_bench`:

``typical``
    What most training scripts do: a ``torch.utils.data.DataLoader`` whose
    worker processes open each JPEG with PIL, apply torchvision's
    ``RandomResizedCrop``, flip, ``ToTensor`` and ``Normalize`` per image, then
    pinned memory and a copy to the device.
``resident``
    The course's way: the images are decoded once (see
    :mod:`agelib.data.cache`), moved to the device once as a uint8 tensor, and a
    batch is an index into it, augmented on the device for the whole batch by
    :class:`agelib.data.loaders.BatchTransform`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from . import settings

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]  # endless (images, ages) on the device
PIPELINES = ("typical", "resident")
#: The loss each head kind trains with in a benchmark (speed does not depend on the choice).
LOSS_FOR_HEAD = {"regression": "l1", "classification": "cross_entropy", "coral": "coral",
                 "corn": "corn"}
#: the packages whose versions a bench result records (:func:`environment`)
VERSIONED = ("agelib", "torch", "torchvision", "timm", "fastai", "numpy", "pillow")
#: what every saved bench result has (:func:`load_bench_runs` skips files without them)
RESULT_FIELDS = ("device", "mode", "settings")


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work: GPU calls return before they finish, so a clock read
    without this times the launch, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """The mixed-precision type to use: bfloat16 where the device supports it, else float16.

    bfloat16 keeps float32's range, so it needs no loss scaling; float16 does.

    >>> amp_dtype("cpu")
    torch.bfloat16
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.bfloat16  # CPU autocast: bf16


def _resolved_amp(amp: bool | None, device: torch.device) -> torch.dtype | None:
    """The autocast type that ``amp`` asks for (None: on for CUDA only), or None for float32."""
    use_amp = amp if amp is not None else device.type == "cuda"
    return amp_dtype(device) if use_amp else None


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    """How a result names a precision: ``"bfloat16"``, or None for float32."""
    return str(dtype).removeprefix("torch.") if dtype else None


def _autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True
              ) -> torch.autocast:
    """Autocast to ``dtype``, or explicitly off (None), so that one ``with`` serves both."""
    return (torch.autocast(device.type, dtype=dtype, cache_enabled=cache) if dtype is not None
            else torch.autocast(device.type, enabled=False))


def cuda_graphed(model: nn.Module, example: torch.Tensor,
                 dtype: torch.dtype | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` for inputs shaped like ``example``, replayed as one captured CUDA graph.

    One forward pass of a small model at batch 1 is hundreds of short kernels, and
    launching them one by one from Python can take longer than running them. A
    CUDA graph records the launches once and replays them all with one call; the
    capture takes about a second (``torch.compile``'s "reduce-overhead" mode
    does the same after minutes of compiling). The returned function copies its
    input into the graph's own buffer and returns the graph's output buffer, which
    the next call overwrites: copy it to keep it. Autocast's cache of weights cast
    to ``dtype`` cannot be captured, so each replay casts them again, which an eager
    loop inside one autocast block does only once: if anything, the graph's gain is
    understated.
    """
    if example.device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, not {example.device.type!r}: "
                         "time this model without cuda_graph on this machine")
    static = example.clone()
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side), _autocast(example.device, dtype, cache=False):
        for _ in range(3):  # warm up on a side stream (cuDNN and cuBLAS pick their kernels)
            model(static)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), _autocast(example.device, dtype, cache=False):
        out = model(static)  # recorded, not run

    def replay(x: torch.Tensor) -> torch.Tensor:
        if x.shape != static.shape or x.dtype != static.dtype:
            raise ValueError(f"this graph was captured for {tuple(static.shape)} {static.dtype} "
                             f"inputs, not {tuple(x.shape)} {x.dtype}: capture one per shape")
        static.copy_(x)
        graph.replay()
        return out

    return replay


@torch.inference_mode()
def latency(model: nn.Module, batch: int = 1, size: int = 224, device="cpu", warmup: int = 3,
            repeats: int = 10, dtype: torch.dtype | None = None,
            channels_last: bool = False, cuda_graph: bool = False) -> float:
    """Median seconds for one forward pass of ``batch`` images of ``size`` pixels.

    ``cuda_graph`` times the pass replayed as a CUDA graph (see :func:`cuda_graphed`).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    run = cuda_graphed(model, x, dtype) if cuda_graph else model
    times = []
    with _autocast(device, None if cuda_graph else dtype):  # a graph holds its own precision
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            run(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(step: Callable[[], int], steps: int = 10, warmup: int = 3, windows: int = 3,
               device="cpu") -> dict:
    """Images per second of ``step`` (which returns how many images it handled).

    ``warmup`` calls run first and are not timed; then ``windows`` windows of
    ``steps`` calls are timed, the device synchronised at both ends of each. The
    median window is the answer: one slow window (a garbage collection, another
    process) does not move it. Returns ``{"img_per_s": median, "windows": [...]}``.

    >>> result = throughput(lambda: 32, steps=5, warmup=2, windows=3)  # a "step" of 32 images
    >>> len(result["windows"]), result["img_per_s"] == sorted(result["windows"])[1]
    (3, True)
    """
    if steps < 1 or windows < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1, windows >= 1 and warmup >= 0; got steps={steps}, "
                         f"windows={windows}, warmup={warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(windows):
        _sync(device)
        start, images = time.perf_counter(), 0
        for _ in range(steps):
            images += step()
        _sync(device)
        rates.append(images / (time.perf_counter() - start))
    return {"img_per_s": statistics.median(rates), "windows": rates}


def _compiled(model: nn.Module, compile: bool | str) -> Callable:
    """``model`` through ``torch.compile`` when asked (``True``, or a mode name), else itself."""
    return torch.compile(model, mode=None if compile is True else compile) if compile else model


def _loss_for(model: nn.Module) -> Callable:
    """A loss that fits the model's head (:data:`LOSS_FOR_HEAD`), so any model can be timed."""
    from . import losses

    head = getattr(model, "head", None)
    kind = getattr(head, "kind", "regression")
    return losses.get_loss(LOSS_FOR_HEAD[kind], head=head)


def training_throughput(model: nn.Module, batches: Batches, steps: int = 10, warmup: int = 3,
                        windows: int = 3, amp: bool | None = None, channels_last: bool = False,
                        compile: bool | str = False, fused: bool | None = None,
                        loss: Callable | None = None, lr: float = 1e-3, device=None) -> dict:
    """Training images per second: forward, loss, backward and an AdamW step per batch.

    ``amp``: autocast in :func:`amp_dtype` (None: on for CUDA only); ``channels_last``:
    NHWC layout for model and batches; ``fused``: AdamW's fused kernel (None: on for
    CUDA); ``compile``: ``torch.compile`` the model (``True`` or a mode such as
    ``"reduce-overhead"``, which replays CUDA graphs). Compilation happens in the
    warm-up, so give it a few warm-up steps. The result adds the settings used.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).train()
    dtype = _resolved_amp(amp, device)
    fused = device.type == "cuda" if fused is None else fused
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = _compiled(model, compile)
    loss_fn = loss or _loss_for(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=fused)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> int:
        images, ages = next(batches)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, dtype):
            out = run(images)
        value = loss_fn(out.float(), ages)  # losses in float32, whatever autocast did
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
        return images.shape[0]

    result = throughput(step, steps, warmup, windows, device)
    result["settings"] = {"amp": _dtype_name(dtype),
                          "channels_last": channels_last, "fused": fused,
                          "compile": compile or False}
    return result


def data_throughput(batches: Batches, steps: int = 10, warmup: int = 3, windows: int = 3,
                    device="cpu") -> dict:
    """Images per second of the data path alone: batches made and on the device, no model."""
    return throughput(lambda: next(batches)[0].shape[0], steps, warmup, windows, device)


# --------------------------------------------------------------------------- the two pipelines
class JpegFaces(torch.utils.data.Dataset):
    """The typical dataset: open and decode one image file per item, transform it with PIL."""

    def __init__(self, faces, sha1s: list[str], transform: Callable):
        self.faces, self.sha1s, self.transform = faces, list(sha1s), transform
        ages = faces.samples.set_index("sha1")["age"]
        self.ages = torch.tensor(ages.loc[self.sha1s].to_numpy(), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.sha1s)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from .data import cache

        with self.faces.open_image(self.sha1s[i]) as im:
            image = cache.to_rgb(im)
            image.load()
        return self.transform(image), self.ages[i]


def default_workers() -> int:
    """Loader worker processes for the typical pipeline: every core but the main process's.

    The typical pipeline is measured at its best on the machine at hand (15 workers
    on a 16-core GPU machine, 1 on Colab's 2 cores), so that the resident path's
    speed-up is not flattered by a starved baseline.
    """
    return max(1, (os.cpu_count() or 2) - 1)


def typical_loader(faces, size: int, batch_size: int, num_workers: int | None = None,
                   sha1s: list[str] | None = None, device=None,
                   seed: int = 0) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` as most scripts write it: per-image PIL decode and torchvision
    augmentation in ``num_workers`` processes (None: :func:`default_workers`), shuffled,
    pinned memory on CUDA.

    The workers are forked (Linux); elsewhere they are spawned and must pickle
    ``faces``, so use ``num_workers=0`` there if that fails.
    """
    from torchvision import transforms as T

    from .data.loaders import IMAGENET_MEAN, IMAGENET_STD

    sha1s = _check_count(faces, sha1s, batch_size)
    num_workers = default_workers() if num_workers is None else num_workers
    augment = T.Compose([T.RandomResizedCrop(size, scale=(0.8, 1.0)), T.RandomHorizontalFlip(),
                         T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    device = torch.device(device) if device is not None else torch.device("cpu")
    return torch.utils.data.DataLoader(
        JpegFaces(faces, sha1s, augment), batch_size=batch_size, shuffle=True,
        num_workers=num_workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))


def _check_count(faces, sha1s: list[str] | None, batch_size: int) -> list[str]:
    """``sha1s`` (None: every face), refused when too few for one batch: both pipelines drop
    the last partial batch, so fewer images than a batch would never yield one."""
    sha1s = list(faces.samples["sha1"] if sha1s is None else sha1s)
    if len(sha1s) < batch_size:
        raise ValueError(f"only {len(sha1s)} images for a batch of {batch_size}: use a smaller "
                         "--batch-size or more images")
    return sha1s


def typical_batches(faces, size: int, batch_size: int, num_workers: int | None = None,
                    sha1s: list[str] | None = None, device=None, seed: int = 0) -> Batches:
    """Endless batches from :func:`typical_loader`, copied to ``device`` (non-blocking)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    loader = typical_loader(faces, size, batch_size, num_workers, sha1s, device, seed)
    while True:
        for images, ages in loader:
            yield images.to(device, non_blocking=True), ages.to(device, non_blocking=True)


def resident_batches(faces, size: int, batch_size: int, sha1s: list[str] | None = None,
                     device=None, seed: int = 0) -> Batches:
    """Endless batches indexed from images held on ``device``, augmented there per batch.

    The images are decoded (or read from the cache) and moved to the device once,
    when the first batch is asked for; that one-off cost is not part of a window.
    """
    from .data.loaders import BatchTransform

    device = torch.device(device) if device is not None else torch.device("cpu")
    sha1s = _check_count(faces, sha1s, batch_size)
    pixels = torch.tensor(faces.images(size, sha1s))  # a copy of the read-only cache
    # (N, 3, S, S) uint8, 4x smaller than float32, moved to the device once
    pixels = pixels.permute(0, 3, 1, 2).contiguous().to(device)
    ages = faces.samples.set_index("sha1")["age"].loc[sha1s].to_numpy()
    ages = torch.tensor(ages, dtype=torch.float32, device=device)
    transform = BatchTransform(size, train=True).to(device)
    gen = torch.Generator().manual_seed(seed)
    n = len(sha1s)
    while True:
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n - batch_size + 1, batch_size):  # drop the last partial batch
            idx = order[start:start + batch_size]
            yield transform(pixels[idx], gen), ages[idx]


def make_batches(pipeline: str, faces, size: int, batch_size: int, device=None,
                 num_workers: int | None = None, sha1s: list[str] | None = None,
                 seed: int = 0) -> Batches:
    """The batch source a pipeline name stands for (one of :data:`PIPELINES`)."""
    if pipeline == "typical":
        return typical_batches(faces, size, batch_size, num_workers, sha1s, device, seed)
    if pipeline == "resident":
        return resident_batches(faces, size, batch_size, sha1s, device, seed)
    raise ValueError(f"unknown pipeline {pipeline!r}; choose from {PIPELINES}")


# --------------------------------------------------------------------------- the whole bench
def environment(device: torch.device) -> dict:
    """Device and library versions, so a number is never read without its context."""
    versions = settings.package_versions(VERSIONED)
    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    info = {"type": device.type, "name": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return {"device": info, "versions": versions}


@contextlib.contextmanager
def fused_attention(enabled: bool):
    """Build timm attention blocks with (or without) ``scaled_dot_product_attention``.

    timm reads the switch when a block is created, so models must be made inside.
    """
    from timm.layers import set_fused_attn, use_fused_attn

    before = use_fused_attn()
    set_fused_attn(enabled)
    try:
        yield
    finally:
        set_fused_attn(before)


def bench_model(name: str, size: int, sdpa: bool = True) -> nn.Module:
    """A randomly initialised model for timing: a registered configuration or a timm name."""
    from . import models

    with fused_attention(sdpa):
        config = (models.named_config(name, img_size=size, pretrained=False)
                  if name in models.REGISTRY else models.ModelConfig(name, img_size=size))
        return models.create_model(config)


def bench_images(faces, n_images: int | None = None, seed: int = 0) -> list[str]:
    """The training split's images, so that timing never touches a test face: all of them, or a
    random ``n_images`` of them drawn with ``seed`` (the same ones on every run)."""
    split = faces.split(0)
    train = [s for s in faces.samples["sha1"] if split.get(s) == "train"]
    if n_images is not None:
        gen = torch.Generator().manual_seed(seed)
        train = [train[i] for i in torch.randperm(len(train), generator=gen)[:n_images]]
    return train


def run_bench(models: Sequence[str] = ("resnet18",), sizes: Sequence[int] = (128,),
              pipelines: Sequence[str] = PIPELINES, batch_size: int = 256, steps: int = 20,
              warmup: int = 5, windows: int = 5, num_workers: int | None = None,
              amp: bool | None = None,
              channels_last: bool = False, compile: bool | str = False,
              fused: bool | None = None, sdpa: bool = True, data_only: bool = True,
              latency_batches: Sequence[int] = (1, 64), latency_repeats: int = 20, faces=None,
              n_images: int | None = None, device=None, log: Callable[[str], None] | None = None
              ) -> dict:
    """Train and data throughput per (model, size, pipeline), latency per (model, size, batch).

    Everything that shaped the numbers is in the result: device, versions,
    settings, the dataset and every window, so a JSON file is a complete record.
    """
    from . import data

    unknown = sorted(set(pipelines) - set(PIPELINES))
    if unknown:
        raise ValueError(f"unknown pipeline(s) {unknown}; choose from {PIPELINES}")
    device = torch.device(device) if device is not None else settings.get_device()
    num_workers = default_workers() if num_workers is None else num_workers
    faces = faces if faces is not None else data.load_faces(verbose=False)
    sha1s = bench_images(faces, n_images)
    log = log or (lambda line: None)
    train_settings = {"amp": amp, "channels_last": channels_last, "compile": compile,
                      "fused": fused}
    out = {**environment(device), "mode": settings.run_mode().name,
           "data": {"name": faces.name, "real": faces.real, "n_images": len(sha1s)},
           "settings": {"batch_size": batch_size, "steps": steps, "warmup": warmup,
                        "windows": windows, "num_workers": num_workers, "sdpa": sdpa,
                        "latency_repeats": latency_repeats, **train_settings},
           "results": [], "latency": []}
    for name in models:
        for size in sizes:
            model = bench_model(name, size, sdpa)
            for pipeline in pipelines:
                batches = make_batches(pipeline, faces, size, batch_size, device, num_workers,
                                       sha1s)
                row, used = _bench_pipeline(model, batches, steps, warmup, windows, device,
                                            data_only, train_settings)
                out["settings"].update(used)  # what "auto" resolved to (amp, fused)
                out["results"].append({"model": name, "size": size, "pipeline": pipeline, **row})
                log(f"{name} {size}px {pipeline:<9} train {row['train_img_per_s']:8.1f} img/s"
                    + (f"  data alone {row['data_img_per_s']:8.1f} img/s" if data_only else ""))
            used = out["settings"]  # infer with the precision and layout training used
            out["latency"] += _latencies(
                model, name, size, latency_batches, warmup, latency_repeats, device,
                getattr(torch, used["amp"]) if used.get("amp") else None,
                used.get("channels_last", False), compile, log)
    return out


def _bench_pipeline(model: nn.Module, batches: Batches, steps: int, warmup: int, windows: int,
                    device: torch.device, data_only: bool, train_settings: dict
                    ) -> tuple[dict, dict]:
    """One (model, size, pipeline) row: set-up time, data alone, training; then the
    batch source is closed (which ends a DataLoader's worker processes). Also returns the
    training settings as resolved (what ``None``, "auto", became for amp and fused)."""
    start = time.perf_counter()
    next(batches)  # the one-off set-up (resident: decode and upload) happens here
    row = {"setup_s": time.perf_counter() - start}
    try:
        if data_only:
            d = data_throughput(batches, steps, warmup, windows, device)
            row["data_img_per_s"], row["data_windows"] = d["img_per_s"], d["windows"]
        t = training_throughput(model, batches, steps, warmup, windows, device=device,
                                **train_settings)
        row["train_img_per_s"], row["train_windows"] = t["img_per_s"], t["windows"]
    finally:
        batches.close()
    return row, t["settings"]


def _latencies(model: nn.Module, name: str, size: int, batches: Sequence[int], warmup: int,
               repeats: int, device: torch.device, dtype: torch.dtype | None = None,
               channels_last: bool = False, compile: bool | str = False,
               log: Callable[[str], None] | None = None, cuda_graph: bool = False
               ) -> list[dict]:
    """Inference latency rows, one per batch size (compiled or captured as a CUDA graph
    first when asked: launch overhead matters most for small batches)."""
    run = _compiled(model.eval(), compile)
    rows = []
    for batch in batches:
        ms = 1000 * latency(run, batch, size, device, max(warmup, 1), repeats, dtype, channels_last,
                            cuda_graph)
        rows.append({"model": name, "size": size, "batch": batch, "ms": ms})
        if log:
            log(f"{name} {size}px latency at batch {batch}: {ms:.2f} ms")
    return rows


def run_latency(models: Sequence[str] = ("hybrid_paper",), size: int = 224,
                batches: Sequence[int] = (1, 64), device=None, warmup: int = 3, repeats: int = 20,
                amp: bool | None = None, compile: bool | str = False, cuda_graph: bool = False,
                log: Callable[[str], None] | None = None, channels_last: bool = False) -> dict:
    """Parameters and inference latency per model and batch: the paper's size-and-speed table.

    No data is needed (random images of ``size`` pixels). ``amp`` (default: on
    for CUDA) runs in bf16/fp16 as a deployed model would. ``cuda_graph`` replays
    each pass as a captured CUDA graph (``compile`` such as ``"reduce-overhead"``
    does the same through ``torch.compile``, at minutes of compile time): it
    matters most at batch 1, where launching hundreds of small kernels costs more
    than computing them.
    """
    if cuda_graph and compile:
        raise ValueError("pick one of cuda_graph and compile: both replay CUDA graphs")
    from . import models as models_

    device = torch.device(device) if device is not None else settings.get_device()
    dtype = _resolved_amp(amp, device)
    log = log or (lambda line: None)
    out = {**environment(device), "kind": "latency", "mode": settings.run_mode().name,
           "settings": {"size": size, "warmup": warmup, "latency_repeats": repeats,
                        "amp": _dtype_name(dtype),
                        "compile": compile, "cuda_graph": cuda_graph,
                        "channels_last": channels_last},
           "results": [], "latency": []}
    for name in models:
        model = bench_model(name, size)
        params = models_.count_parameters(model)
        log(f"{name}: {params / 1e6:.2f}M parameters")
        out["latency"] += [{**row, "params": params} for row in _latencies(
            model, name, size, batches, warmup, repeats, device, dtype, channels_last, compile,
            log, cuda_graph)]
    return out


# --------------------------------------------------------------------------- bench records
BENCH_START, BENCH_END = "<!-- bench:start -->", "<!-- bench:end -->"
LATENCY_START, LATENCY_END = "<!-- latency:start -->", "<!-- latency:end -->"


def save_bench(result: dict, folder: Path | None = None) -> Path:
    """Write a :func:`run_bench` result to ``results/bench/<date>-<device>-<mode>.json``."""
    import datetime as dt
    import json

    from . import records

    folder = Path(folder) if folder else records.results_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    result = {**result, "date": result.get("date") or now.isoformat(timespec="seconds")}
    path = folder / f"{now:%Y%m%d-%H%M%S}-{result['device']['type']}-{result['mode']}.json"
    path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return path


def load_bench_runs(folder: Path | None = None) -> list[dict]:
    """Every saved bench result, oldest first (a file that is not one is skipped, by name)."""
    from . import records

    folder = Path(folder) if folder else records.results_dir() / "bench"
    return records.read_json_folder(folder, "bench result", RESULT_FIELDS)


def speed_table(result: dict) -> "pd.DataFrame":
    """One row per (model, size, pipeline): data-alone and training img/s, and the speed-up
    of each pipeline over the typical one in the same run."""
    import pandas as pd

    rows = pd.DataFrame(result["results"])
    cols = ["model", "size", "pipeline", "data_img_per_s", "train_img_per_s"]
    rows = rows.reindex(columns=cols)  # a bench run with --no-data-only has no data column
    typical = rows[rows["pipeline"] == "typical"].set_index(["model", "size"])["train_img_per_s"]
    rows["speedup"] = [r.train_img_per_s / typical.get((r.model, r.size), float("nan"))
                       for r in rows.itertuples()]
    return rows


def readme_bench_table(runs: list[dict]) -> str:
    """README's table: the latest full-mode measurement of each (device, precision and
    switches, batch, model, size, pipeline) in the saved results, so that a later bench of
    one model (or a compiled one) does not hide another's. Smoke benches (a few steps, one
    worker: a check that the bench runs) are left out. The speed-up is always against the
    typical pipeline of the same run, and the data column says what the typical pipeline
    decoded (the original JPEGs or a WebP pack)."""
    latest: dict[tuple, tuple] = {}
    for run in runs:  # oldest first: a later run of the same row replaces it
        if run.get("results") and run.get("mode") == "full":
            switches = _precision(run["settings"])  # a compiled run is not an eager one
            for r in speed_table(run).itertuples():
                key = (_device_label(run), run["mode"], switches, run["settings"].get("batch_size"),
                       r.model, r.size, r.pipeline)
                latest[key] = (r, run)
    if not latest:
        return ("_no full-mode bench recorded yet (`python -m agelib bench --save`; smoke "
                "benches only check that the bench runs)_")
    lines = ["| device | mode | data | model | px | batch | precision | pipeline "
             "| data only, img/s | training, img/s | vs typical | date |",
             "|---|---|---|---|---:|---:|---|---|---:|---:|---:|---|"]
    for (device, mode, switches, *_), (r, run) in latest.items():
        source = run.get("data", {}).get("name", "")  # the typical path decodes these files
        data = f"{r.data_img_per_s:,.0f}" if r.data_img_per_s == r.data_img_per_s else ""
        speedup = f"{r.speedup:.2f}×" if r.speedup == r.speedup else ""
        lines.append(f"| {device} | {mode} | {source} | {r.model} | {r.size} | "
                     f"{run['settings']['batch_size']} | {switches} | {r.pipeline} | {data} | "
                     f"{r.train_img_per_s:,.0f} | {speedup} | {str(run.get('date', ''))[:10]} |")
    return "\n".join(lines)


def readme_with_bench(text: str, runs: list[dict]) -> str:
    """README text with the bench block between its markers regenerated."""
    from . import records

    return records.replace_block(text, BENCH_START, BENCH_END, readme_bench_table(runs))


def _device_label(run: dict) -> str:
    """A result's device as the tables name it: kind and model, e.g. ``cuda (NVIDIA H200)``."""
    return f"{run['device']['type']} ({run['device']['name']})"


def readme_latency_table(runs: list[dict]) -> str:
    """README's size-and-speed table: one row per device, setting and model, from the latest
    full-mode latency run that measured that model (so a later run of one model does not
    hide the others), parameters and milliseconds per batch size. The precision column
    names every switch that changes the speed: bf16/fp16, channels-last, CUDA graphs or
    ``torch.compile``."""
    latest: dict[tuple, tuple[dict, dict]] = {}
    for run in runs:  # oldest first: a later measurement of the same row replaces it
        if run.get("kind") != "latency" or run["mode"] != "full":
            continue
        by_model: dict[tuple, dict] = {}
        for row in run["latency"]:
            by_model.setdefault((row["model"], row["size"], row["params"]), {})[row["batch"]] = row["ms"]
        for (model, size, params), ms in by_model.items():
            key = (_device_label(run), _precision(run["settings"]), model, size)
            latest[key] = ({"params": params, "ms": ms}, run)
    if not latest:
        return "_no latency run recorded yet (`python -m agelib bench --latency-only --save`)_"
    batches = sorted({b for row, _ in latest.values() for b in row["ms"]})
    lines = ["| device | precision | model | params (M) | px | "
             + " | ".join(f"batch {b}, ms" for b in batches) + " | date |",
             "|---|---|---|---:|---:|" + "---:|" * len(batches) + "---|"]
    for (device, precision, model, size), (row, run) in latest.items():
        cells = " | ".join(f"{row['ms'][b]:.1f}" if b in row["ms"] else "" for b in batches)
        lines.append(f"| {device} | {precision} | {model} | {row['params'] / 1e6:.2f} | {size} | "
                     f"{cells} | {str(run.get('date', ''))[:10]} |")
    return "\n".join(lines)


def _precision(settings_: dict) -> str:
    """The number format and the switches of a bench or latency run, as the tables' precision
    column says them: runs that differ in any of them are other rows, never one."""
    parts = [settings_.get("amp") or "float32"]
    if settings_.get("channels_last"):
        parts.append("channels-last")
    if replay := _replay(settings_):
        parts.append(replay)
    if settings_.get("sdpa") is False:
        parts.append("no SDPA")
    return ", ".join(parts)


def _replay(settings_: dict) -> str | None:
    """How a run launched its kernels, when not one by one from Python (a CUDA graph, or
    ``torch.compile``, whose "reduce-overhead" mode also replays graphs)."""
    if settings_.get("cuda_graph"):
        return "CUDA graph"
    compile = settings_.get("compile")
    if not compile:
        return None
    return f"compiled ({compile})" if isinstance(compile, str) else "compiled"


def readme_with_latency(text: str, runs: list[dict]) -> str:
    """README text with the latency block between its markers regenerated."""
    from . import records

    return records.replace_block(text, LATENCY_START, LATENCY_END, readme_latency_table(runs))
