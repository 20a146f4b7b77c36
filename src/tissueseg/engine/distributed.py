"""PyTorch DDP plumbing for `torchrun`: process group lifecycle, rank helpers, metric all-reduce.

Lifecycle. ``init_distributed`` starts the process group when launched by torchrun and registers
``shutdown_distributed`` to run at interpreter exit (without a barrier). The CLI's root command
(``cli.common.App``) ends the group earlier, right after each command, with a final barrier when
the command succeeded; a script can do the same with ``with distributed_session(): ...``.

Why the teardown matters (issue 13): gloo runs each collective on its own worker threads, and a
worker drops its references to the collective's tensors only *after* the caller's ``wait()`` has
returned. Dropping a tensor that Python also references takes the GIL. If the interpreter is
already finalising when that happens, CPython ends the worker thread by unwinding it through a C++
``noexcept`` destructor, and the process dies with "terminate called without an active exception"
(SIGABRT) although training finished, so torchrun reports the run as failed. ``destroy_process_group``
alone does not prevent it: a DistributedDataParallel model keeps the gloo group alive, so its
worker threads are not joined. The teardown therefore waits, with the GIL released, until gloo has
let go of every tensor this module handed it, then destroys the group, before finalisation starts.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

# Buffers handed to gloo that its worker threads may still hold; an entry disappears the moment the
# last reference goes (see ``all_reduce_sum``). Drained by ``shutdown_distributed``.
_in_flight: weakref.WeakSet[torch.Tensor] = weakref.WeakSet()
_owned = False  # this module started the process group, so it also ends it
_atexit_registered = False
RELEASE_TIMEOUT_S = 30.0


def is_distributed() -> bool:
    """True when launched by torchrun (WORLD_SIZE > 1) and the process group is up."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None, timeout: datetime.timedelta | None = None) -> None:
    """Start the process group when launched by torchrun; a no-op for a single process.

    ``backend`` defaults to NCCL with CUDA, else gloo. The group is ended by ``shutdown_distributed``,
    registered here to run at interpreter exit (and called earlier by ``distributed_session``).
    """
    global _owned, _atexit_registered
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, **({"timeout": timeout} if timeout is not None else {}))
    _owned = True
    if not _atexit_registered:
        # no barrier at exit: the process may be leaving on an error while its peers still train,
        # and a barrier would then hang it instead of letting torchrun see the failure
        atexit.register(shutdown_distributed, barrier=False)
        _atexit_registered = True


def _wait_for_release(timeout: float = RELEASE_TIMEOUT_S) -> bool:
    """Sleep (GIL released) until gloo has dropped every buffer in ``_in_flight``; False on timeout."""
    deadline = time.monotonic() + timeout
    while len(_in_flight):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def shutdown_distributed(barrier: bool = True) -> None:
    """End the process group started by ``init_distributed``; a no-op otherwise or when already ended.

    ``barrier``: first wait until every rank got here (only on a successful finish: a rank that
    failed must not wait for peers that will never arrive). Then wait until gloo's worker threads
    have released every tensor they were handed, and destroy the group. Call it last: afterwards
    every rank is a single process (rank 0).
    """
    global _owned
    if not (_owned and is_distributed()):
        return
    try:
        if barrier:
            dist.barrier()
    finally:
        _owned = False
        if not _wait_for_release():
            print(f"tissueseg: gloo still held {len(_in_flight)} tensor(s) after {RELEASE_TIMEOUT_S:.0f} s; "
                  "destroying the process group anyway", file=sys.stderr)
        dist.destroy_process_group()


@contextmanager
def distributed_session() -> Iterator[None]:
    """Scope of a script or command run under torchrun: on success (or ``sys.exit(0)``) a final
    barrier, then the teardown; on an error the teardown without the barrier, and the error goes on."""
    finished = False
    try:
        yield
        finished = True
    except SystemExit as exc:
        finished = exc.code in (None, 0)
        raise
    finally:
        shutdown_distributed(barrier=finished)


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place); identity for a single process.

    With gloo the reduction runs on a private copy that nothing else references, so the copy dies
    exactly when gloo's worker thread lets go of it; ``shutdown_distributed`` waits for that
    (module docstring). NCCL's teardown joins its own threads, so there the tensor goes as is.
    """
    if not is_distributed():
        return tensor
    if dist.get_backend() != dist.Backend.GLOO:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor
    buffer = tensor.detach().clone(memory_format=torch.contiguous_format)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    _in_flight.add(buffer)
    with torch.no_grad():
        tensor.copy_(buffer)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()
