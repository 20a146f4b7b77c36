"""What a method file declares about itself for :mod:`tissueseg.methods.registry`: its stages and result rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Task = Literal["wsss", "semi"]
WSSS_STAGES = ("train-cls", "pseudo-masks", "train-seg", "evaluate")  # `tissueseg wsss <stage> CONFIG.yaml`


@dataclass(frozen=True)
class ResultRow:
    """One row of a task's results table: ``results[key]["test"]`` scored on the test split."""

    key: str
    title: str
    order: int  # place in the task's table (reference bounds first and last)
    pseudo_masks: str | None = None  # WSSS: title of the pseudo-mask rows in ``results[f"{key}_pseudo_masks"]``
    note_labelled: bool = False  # semi-supervised: the row says how many training images were labelled


@dataclass(frozen=True)
class Method:
    """A method as the CLI, the demo and the benchmarks run it.

    ``run(run_context, references)`` is the whole recipe (``references``: the reference rows too)
    and returns the results dict the task's table reads; ``stages`` are the CLI's stage commands of
    the task, each ``stage(run_context)``; ``evaluate_key(run_context)`` names the row the
    ``evaluate`` stage's scores belong to; ``caption(results)`` adds a line under the table.
    """

    name: str
    task: Task
    run: Callable[..., dict]
    stages: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    rows: tuple[ResultRow, ...] = ()
    evaluate_key: Callable[[Any], str] | None = None
    caption: Callable[[dict], str | None] | None = None


def wsss_stages(*functions: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    """A weakly supervised method's functions for :data:`WSSS_STAGES`, in that order."""
    if len(functions) != len(WSSS_STAGES):
        raise ValueError(f"a WSSS method has {len(WSSS_STAGES)} stages ({', '.join(WSSS_STAGES)})")
    return dict(zip(WSSS_STAGES, functions))
