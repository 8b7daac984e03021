"""Measuring speed honestly: warm-up excluded, medians of repeated timed windows.

A single timing is noise: the first calls pay for memory allocation, kernel
selection and caches, and GPU work is asynchronous. :func:`latency` therefore
runs warm-up calls first, synchronises the device around each timed call,
repeats, and reports the median.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.inference_mode()
def latency(model: nn.Module, batch: int = 1, size: int = 224, device="cpu", warmup: int = 3,
            repeats: int = 10, dtype: torch.dtype | None = None) -> float:
    """Median seconds for one forward pass of ``batch`` images of ``size`` pixels."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                else torch.autocast(device.type, enabled=False))
    times = []
    with autocast:
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)
