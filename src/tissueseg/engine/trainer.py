"""The one shared training loop: devices, bf16 AMP, channels_last, gradient accumulation, poly LR,
atomic checkpoints with exact resume, JSON-lines log, progress bar, NaN guard and DDP under torchrun.

A method supplies only what its paper defines: the model, a ``step`` function returning its losses
for one batch, and optionally an ``evaluate`` function returning validation metrics.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tissueseg.data.io import save_atomic
from tissueseg.engine import distributed as dist_utils
from tissueseg.models.device import autocast, resolve_device

if TYPE_CHECKING:
    from tissueseg.config import OptimConfig, RunSettings

StepFn = Callable[[nn.Module, dict[str, Any]], Mapping[str, torch.Tensor]]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method (method-specific weights live in the method)."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    optimizer: str = "sgd"  # sgd | adamw
    poly_power: float = 0.9
    grad_accum: int = 1
    amp: bool = True  # bf16 autocast, used on CUDA only
    channels_last: bool = True
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    log_every: int = 10
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    grad_clip_norm: float | None = None  # clip the global gradient norm before each optimiser step

    @classmethod
    def of(cls, run: RunSettings, stage: OptimConfig) -> TrainConfig:
        """A run's numeric settings (seed, device, AMP, workers) with one stage's optimiser section."""
        return cls(epochs=stage.epochs, batch_size=stage.batch_size, lr=stage.lr, weight_decay=stage.weight_decay,
                   amp=run.amp, channels_last=run.channels_last, num_workers=run.data.num_workers, seed=run.seed,
                   device=run.device, max_steps_per_epoch=stage.max_steps_per_epoch,
                   grad_clip_norm=stage.grad_clip_norm)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so CPU runs are reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    """Move a (nested) batch to ``device``; 4-D float tensors go channels_last when asked."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float) -> float:
    """Poly schedule lr = base·(1 − it/max)^power (DeepLab, used by MLPS and UniSemAlign)."""
    return base_lr * (1 - min(iteration, max_iterations) / max(max_iterations, 1)) ** power


def load_best(model: nn.Module, path: Path, device: torch.device, submodule: str | None = None,
              fix: str | None = None, what: str = "model") -> nn.Module:
    """Load the weights of a checkpoint the Trainer wrote (``*_best.pt``) into ``model``; eval mode, on ``device``.

    ``submodule``: when the checkpoint holds a larger network (keys ``<submodule>.…``), only that part
    is loaded (a bare checkpoint of the part loads as it is). ``fix``: a missing file raises
    FileNotFoundError naming ``what`` is missing and this fix.
    """
    if fix is not None and not path.exists():
        raise FileNotFoundError(f"{path}: no trained {what} in this run folder (fix: {fix})")
    state = torch.load(path, map_location=device, weights_only=False)["model"]
    prefix = f"{submodule}." if submodule else None
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model.to(device).eval()


class JsonLog:
    """Append-only JSON-lines log (rank 0 only)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        if not dist_utils.is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to host memory: a snapshot later in-place updates cannot change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return type(obj)((k, host_copy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints on a background thread, so training goes on while they are pickled and written.

    :meth:`write` takes payloads already in host memory (:func:`host_copy`) and returns; one write is
    in flight at a time. :meth:`wait` joins it and re-raises its error; the Trainer waits before the next write
    and whenever ``fit`` returns or raises, so a finished (or stopped) ``fit`` leaves its files complete.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, payloads: list[tuple[Any, Path]]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(payloads,), name="checkpoint-writer")
        self._thread.start()

    def _run(self, payloads: list[tuple[Any, Path]]) -> None:
        try:
            for obj, path in payloads:
                save_atomic(obj, path)
        except BaseException as e:  # re-raised in the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def shown_metrics(metrics: Mapping[str, Any]) -> str:
    """``name value`` pairs of the float metrics, for the console."""
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


class Trainer:
    """Train ``model`` with a method's ``step`` function; see the module docstring.

    Parameters
    ----------
    model : the network (unwrapped); moved to the device here.
    config : shared optimisation settings.
    out_dir : run folder; checkpoints in ``out_dir/checkpoints``, log in ``out_dir/log.jsonl``.
    param_groups : optional ``[{"params": [...], "lr_mult": 10.0}, ...]`` (e.g. decoder head ×10).
    name : stage name used in log lines and checkpoint file names.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, out_dir: str | os.PathLike,
                 param_groups: list[dict] | None = None, name: str = "train", console: Console | None = None):
        dist_utils.init_distributed()
        self.config = config
        self.name = name
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.log = JsonLog(self.out_dir / "log.jsonl")
        self.console = console or Console()
        self.progress = 0.0  # fraction of the training iterations done, for schedules inside a step
        self.best: float | None = None  # best validation score so far (``select`` of fit), for ``evaluate``
        self.writer = CheckpointWriter()
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        model = model.to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        for g in groups:
            g.setdefault("lr_mult", 1.0)
            g["lr"] = config.lr * g["lr_mult"]
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        elif config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {config.optimizer!r} (fix: use 'sgd' or 'adamw')")
        self.wrapped = (DistributedDataParallel(model, find_unused_parameters=True)
                        if dist_utils.is_distributed() else model)

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / f"{self.name}_last.pt"

    @property
    def best_path(self) -> Path:
        return self.ckpt_dir / f"{self.name}_best.pt"

    def _save(self, epoch: int, step_in_epoch: int, global_step: int, best: float | None,
              best_metrics: Mapping[str, float] | None, new_best: bool = False, wait: bool = False) -> None:
        """Write ``<name>_last.pt`` (and, with ``new_best``, ``<name>_best.pt``) in the background;
        ``wait``: finish before returning."""
        if not dist_utils.is_main_process():
            return
        model = host_copy(unwrap(self.model).state_dict())  # one snapshot for both files
        payloads = [({"model": model, "optimizer": host_copy(self.optimizer.state_dict()), "epoch": epoch,
                      "step_in_epoch": step_in_epoch, "global_step": global_step, "best": best,
                      "best_metrics": dict(best_metrics or {}), "config": asdict(self.config),
                      "torch_rng": torch.get_rng_state()}, self.last_path)]
        if new_best:
            payloads.insert(0, ({"model": model, "metrics": dict(best_metrics or {}), "config": asdict(self.config)},
                                self.best_path))
        self.writer.write(payloads)
        if wait:
            self.writer.wait()

    def _resume(self) -> tuple[int, int, int, float | None, dict]:
        if not self.last_path.exists():
            return 0, 0, 0, None, {}
        state = torch.load(self.last_path, map_location=self.device, weights_only=False)
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.log.write("resume", stage=self.name, epoch=state["epoch"], step_in_epoch=state["step_in_epoch"])
        if dist_utils.is_main_process():
            self.console.print(f"{self.name}: resuming from {self.last_path} "
                               f"(epoch {state['epoch'] + 1}, step {state['step_in_epoch']})", markup=False)
        return state["epoch"], state["step_in_epoch"], state["global_step"], state["best"], state["best_metrics"]

    # -- loop --------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, epoch: int, skip_batches: int, collate_fn) -> DataLoader:
        """This rank's batches for ``epoch`` in a seeded order, minus those already trained on."""
        sampler = DistributedSampler(dataset, num_replicas=dist_utils.world_size(), rank=dist_utils.rank(),
                                     shuffle=True, seed=self.config.seed, drop_last=True)
        sampler.set_epoch(epoch)
        indices = list(sampler)[skip_batches * self.config.batch_size:]
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=indices, drop_last=True,
                          num_workers=self.config.num_workers, collate_fn=collate_fn,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def steps_per_epoch(self, dataset: Dataset) -> int:
        per_rank = math.ceil(len(dataset) / dist_utils.world_size()) if dist_utils.world_size() > 1 else len(dataset)
        steps = per_rank // self.config.batch_size
        if self.config.max_steps_per_epoch:
            steps = min(steps, self.config.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(f"[{self.name}] {len(dataset)} training samples are fewer than one batch of "
                             f"{self.config.batch_size} (fix: lower batch_size or add data)")
        return steps

    def fit(self, train_set: Dataset, step: StepFn, evaluate: EvalFn | None = None, select: str = "miou",
            collate_fn: Callable | None = None,
            on_epoch_start: Callable[[nn.Module, int], None] | None = None,
            evaluate_start: EvalFn | None = None) -> dict[str, Any]:
        """Train for ``config.epochs``; returns the best validation metrics (or the last losses).

        The best model by ``select`` (higher is better) is kept in ``<name>_best.pt``; without
        ``evaluate`` the final model is the best one. ``evaluate_start`` scores the starting weights
        (a warm start) before the first step, and they stay the best model until an epoch beats them.
        Rerunning resumes where it stopped.
        """
        cfg = self.config
        self._step_fn = step
        steps = self.steps_per_epoch(train_set)
        max_iterations = steps * cfg.epochs
        epoch, skip, global_step, self.best, best_metrics = self._resume()
        if epoch >= cfg.epochs:
            return best_metrics
        main = dist_utils.is_main_process()
        if evaluate_start is not None and global_step == 0 and evaluate is not None:
            metrics = dict(evaluate_start(unwrap(self.model)))
            self.best, best_metrics = metrics.get(select), {"epoch": 0, **metrics}
            self.log.write("epoch", stage=self.name, epoch=0, improved=True, **metrics)
            if main:
                self.console.print(f"{self.name} start: {shown_metrics(metrics)}", markup=False)
            self._save(0, 0, 0, self.best, best_metrics, new_best=True)
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
                          disable=not main) as bar:
                task = bar.add_task(self.name, total=max_iterations, completed=global_step, info="")
                while epoch < cfg.epochs:
                    if on_epoch_start is not None:
                        on_epoch_start(unwrap(self.model), epoch)
                    self.model.train()
                    running: dict[str, float] = {}
                    window = LossWindow()
                    done = skip
                    try:
                        for batch in self._loader(train_set, epoch, skip, collate_fn):
                            if done >= steps:
                                break
                            window.add(done, self._train_step(batch, global_step, max_iterations))
                            global_step += 1
                            done += 1
                            bar.update(task, completed=global_step)
                            if global_step % cfg.log_every == 0:
                                losses = self._read(window, running, epoch)
                                bar.update(task, info=f"epoch {epoch + 1}/{cfg.epochs} loss {losses['loss']:.4f}")
                                self.log.write("step", stage=self.name, epoch=epoch, step=global_step,
                                               lr=self.optimizer.param_groups[0]["lr"], **losses)
                            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and done < steps:
                                self._read(window, running, epoch)
                                self._save(epoch, done, global_step, self.best, best_metrics)
                    except KeyboardInterrupt:
                        self._read(window, running, epoch, across_ranks=False)
                        self._save(epoch, done, global_step, self.best, best_metrics, wait=True)
                        self.log.write("interrupted", stage=self.name, epoch=epoch, step_in_epoch=done)
                        raise
                    self._read(window, running, epoch)
                    n_steps = done - skip
                    skip = 0
                    epoch_losses = {k: v / max(n_steps, 1) for k, v in running.items()}
                    metrics = dict(evaluate(unwrap(self.model))) if evaluate is not None else {}
                    improved = evaluate is None or self.best is None or metrics.get(select, -math.inf) > self.best
                    if improved:
                        self.best = metrics.get(select) if evaluate is not None else None
                        best_metrics = {"epoch": epoch + 1, **metrics,
                                        **{f"train_{k}": v for k, v in epoch_losses.items()}}
                    self.log.write("epoch", stage=self.name, epoch=epoch + 1, improved=improved,
                                   **{f"train_{k}": v for k, v in epoch_losses.items()}, **metrics)
                    if main and metrics:
                        bar.console.print(f"{self.name} epoch {epoch + 1}: {shown_metrics(metrics)}", markup=False)
                    epoch += 1
                    self._save(epoch, 0, global_step, self.best, best_metrics, new_best=improved)
        finally:
            self.writer.wait()  # the files are complete once fit returns or raises
        return best_metrics

    def _read(self, window: LossWindow, running: dict[str, float], epoch: int,
              across_ranks: bool = True) -> dict[str, float]:
        """Read the window's losses (the host sync), stop on a non-finite loss, add them to ``running``.

        Returns the last step's losses (empty when the window was empty).
        """
        rows = window.read(across_ranks)
        for step_in_epoch, losses in rows:
            if not math.isfinite(losses["loss"]):
                self.log.write("nonfinite_loss", stage=self.name, epoch=epoch, step=step_in_epoch, **losses)
                raise NonFiniteLossError(
                    f"[{self.name}] loss became {losses['loss']} at epoch {epoch + 1}, step {step_in_epoch}; "
                    f"the last good checkpoint is kept at {self.last_path} (fix: lower the learning rate, "
                    f"check the inputs for NaN/empty masks, or disable AMP)")
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + v
        return rows[-1][1] if rows else {}

    def _train_step(self, batch: Any, global_step: int, max_iterations: int) -> dict[str, torch.Tensor]:
        """One optimiser step; returns its detached losses on the device (no host sync)."""
        cfg = self.config
        self.progress = global_step / max(max_iterations, 1)
        for g in self.optimizer.param_groups:
            g["lr"] = poly_lr(cfg.lr * g["lr_mult"], global_step, max_iterations, cfg.poly_power)
        batch = to_device(batch, self.device, cfg.channels_last)
        chunks = _split_batch(batch, cfg.grad_accum)
        totals: dict[str, torch.Tensor] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for chunk in chunks:
            with autocast(self.device, cfg.amp):
                losses = self._step_fn(self.wrapped, chunk)
            (losses["loss"] / len(chunks)).backward()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() / len(chunks)
        if cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
        self.optimizer.step()
        return totals


class LossWindow:
    """The losses of the steps since they were last read, kept on the device.

    Reading them is the loop's only host sync per step window: every ``log_every`` steps, before a
    checkpoint and at the end of an epoch, so the host queues steps ahead of the GPU in between. A
    non-finite loss is therefore found up to ``log_every`` steps late, but always before a checkpoint.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, torch.Tensor]]] = []

    def add(self, step_in_epoch: int, losses: dict[str, torch.Tensor]) -> None:
        self.steps.append((step_in_epoch, losses))

    def read(self, across_ranks: bool = True) -> list[tuple[int, dict[str, float]]]:
        """(step in epoch, losses) of each step, emptying the window; under DDP (``across_ranks``) the
        mean over ranks, so every rank logs and stops alike."""
        if not self.steps:
            return []
        flat = torch.stack([v.reshape(()) for _, losses in self.steps for v in losses.values()])
        if across_ranks and dist_utils.is_distributed():
            flat = dist_utils.all_reduce_sum(flat) / dist_utils.world_size()
        values = iter(flat.tolist())
        rows = [(i, {k: next(values) for k in losses}) for i, losses in self.steps]
        self.steps = []
        return rows


def _split_batch(batch: Any, parts: int) -> list[Any]:
    """Split a dict batch into ``parts`` micro-batches along dim 0 for gradient accumulation."""
    if parts <= 1:
        return [batch]
    if isinstance(batch, Mapping):
        split = {k: (torch.tensor_split(v, parts) if isinstance(v, torch.Tensor) else [v] * parts)
                 for k, v in batch.items()}
        return [{k: split[k][i] for k in batch} for i in range(parts)]
    raise TypeError("gradient accumulation needs dict batches")
