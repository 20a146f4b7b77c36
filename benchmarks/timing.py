"""Shared by the speed benchmarks: time training steps after warm-up, and read the peak memory."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch


def images_per_second(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, batch: int,
                      steps: int, warmup: int, device: torch.device, amp: bool) -> tuple[float, float]:
    """Time training steps (``loss_fn`` under bf16 autocast when ``amp``, backward, optimiser step).

    ``warmup`` untimed steps first; returns (images/s, peak GiB): the CUDA allocator's peak since the
    call on GPU, else the process's peak RSS so far.
    """
    from tissueseg.models.device import autocast

    def step() -> None:
        with autocast(device, enabled=amp):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

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
