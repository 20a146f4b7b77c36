"""Shared by the speed benchmarks: time a training step after warm-up, and read the peak memory."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch


def images_per_second(step: Callable[[], None], batch: int, steps: int, warmup: int,
                      device: torch.device) -> tuple[float, float]:
    """Run ``step`` ``warmup`` times, then time ``steps`` runs; returns (images/s, peak GiB).

    Peak memory is the CUDA allocator's peak since the call on GPU, else the process's peak RSS so far.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return batch * steps / (time.perf_counter() - start), peak
