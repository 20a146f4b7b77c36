"""Process-group teardown (issue 13), in process on a one-rank gloo group: metric buffers are drained
before the group is destroyed, the final barrier runs only after success, foreign groups are left alone.
The two-rank torchrun run itself is tests/engine/test_ddp.py."""

from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist

from tissueseg.engine import distributed as dist_utils


@pytest.fixture
def gloo_group(tmp_path, monkeypatch):
    """A one-rank gloo group, marked as started by tissueseg (``init_distributed`` skips WORLD_SIZE 1)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setattr(dist_utils, "_owned", True)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_all_reduce_sum_drains_its_buffers_before_the_group_is_destroyed(gloo_group):
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3).t()  # non-contiguous
    out = dist_utils.all_reduce_sum(x)
    assert out is x and torch.equal(x, torch.arange(6, dtype=torch.float64).reshape(2, 3).t())
    dist_utils.shutdown_distributed()
    assert not dist.is_initialized() and len(dist_utils._in_flight) == 0
    dist_utils.shutdown_distributed()  # a second call (e.g. the atexit one) is a no-op


@pytest.mark.parametrize(("exc", "barrier"), [(None, True), (SystemExit(0), True), (SystemExit(1), False),
                                              (RuntimeError("boom"), False)])
def test_session_barriers_only_after_success(gloo_group, monkeypatch, exc, barrier):
    calls = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (calls.append(1), real_barrier(*a, **k)))
    with pytest.raises(type(exc)) if exc is not None else nullcontext():
        with dist_utils.distributed_session():
            dist_utils.all_reduce_sum(torch.ones(3))
            if exc is not None:
                raise exc
    assert bool(calls) == barrier and not dist.is_initialized()


def test_a_group_tissueseg_did_not_start_is_left_alone(gloo_group, monkeypatch):
    monkeypatch.setattr(dist_utils, "_owned", False)
    dist_utils.shutdown_distributed()
    assert dist.is_initialized()

