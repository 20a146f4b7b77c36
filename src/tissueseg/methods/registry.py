"""The methods by name, and the results tables of their tasks.

Every method file declares ``METHOD`` (:class:`~tissueseg.methods.base.Method`: its stages and its
result rows); a new method is one file plus its line in :data:`METHODS`. The CLI, the demo and the
benchmarks look methods up here and print their results with :func:`results_table`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tissueseg.methods import mlps, plimseg, unisemalign
from tissueseg.methods.base import Method, ResultRow, Task

if TYPE_CHECKING:
    from rich.table import Table

METHODS: dict[str, Method] = {m.name: m for m in (mlps.METHOD, plimseg.METHOD, unisemalign.METHOD)}


def get_method(name: str) -> Method:
    """The registered method ``name`` (a config's ``method``)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (fix: one of {', '.join(METHODS)})") from None


def result_rows(task: Task) -> list[ResultRow]:
    """Every row the task's methods report, in table order."""
    return sorted((r for m in METHODS.values() if m.task == task for r in m.rows), key=lambda r: r.order)


Getter = Callable[[dict], float | None]


@dataclass(frozen=True)
class Layout:
    """The columns of a task's results table."""

    title: str
    metrics: Callable[[Sequence[str]], list[tuple[str, Getter]]]  # class names → (header, score getter)
    split_column: bool = False  # "scored on": pseudo masks on train, the model on test
    seconds_column: bool = False  # "train s": each row's training time
    optional: tuple[str, ...] = ()  # metric headers shown only when some row has the score


LAYOUTS: dict[str, Layout] = {
    "wsss": Layout("Weakly supervised segmentation (IoU %, scored in the dataset's convention)",
                   lambda names: [("mIoU", lambda s: s["miou"]), ("FwIoU", lambda s: s["fwiou"]),
                                  *[(c, lambda s, c=c: s["iou"].get(c)) for c in names],
                                  ("loc. fg IoU", lambda s: s.get("localisation", {}).get("foreground_iou")),
                                  ("loc. mIoU", lambda s: s.get("localisation", {}).get("miou"))],
                   split_column=True, optional=("loc. fg IoU", "loc. mIoU")),
    "semi": Layout("Semi-supervised segmentation (test split, %)",
                   lambda names: [("mDice", lambda s: s["mdice"]), ("mJaccard", lambda s: s["mjaccard"]),
                                  ("Dice fg", lambda s: s["dice_fg"]), ("Jaccard fg", lambda s: s["jaccard_fg"]),
                                  ("obj F1", lambda s: s.get("object_f1"))], seconds_column=True),
}


def percent(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def results_table(results: dict, task: Task, class_names: Sequence[str] = (), title: str | None = None,
                  labelled: str | None = None) -> Table:
    """The task's rows that ran, in order. WSSS (CAM baseline, MLPS, PLIMSeg, fully supervised): pseudo
    masks per layer on train and stage 2 on test, mIoU, FwIoU, per-class IoU and, where background is
    scored, localisation (foreground IoU with the classes merged, and its mean with the background IoU,
    which is the background class's own IoU). Semi-supervised
    (supervised only → consistency only → UniSemAlign → fully supervised): mDice / mJaccard
    (UniSemAlign convention), foreground-only scores, object F1 and training time.
    """
    from rich.table import Table

    layout = LAYOUTS[task]
    lines: list[tuple[str, str, dict, str | None]] = []
    for row in result_rows(task):
        entry = results.get(row.key) or {}
        if row.pseudo_masks:
            layers = (results.get(f"{row.key}_pseudo_masks") or {}).get("layers", [])
            for l, layer in enumerate(layers):
                if layer is not None:
                    lines.append((f"{row.pseudo_masks} pseudo masks" + (f", layer {l + 1}" if len(layers) > 1 else ""),
                                  "train", layer, None))
        if entry.get("test") is not None:
            lines.append((row.title + (f" ({labelled})" if labelled and row.note_labelled else ""), "test",
                          entry["test"], str(entry.get("train_seconds", "-"))))
    metrics = [(h, get) for h, get in layout.metrics(class_names)
               if h not in layout.optional or any(get(scores) is not None for _, _, scores, _ in lines)]
    captions = [c for m in METHODS.values() if m.task == task and m.caption and (c := m.caption(results))]
    table = Table(title=title or layout.title, caption="; ".join(captions) or None)
    headers = ["row", *(["scored on"] if layout.split_column else []), *[h for h, _ in metrics],
               *(["train s"] if layout.seconds_column else [])]
    for col in headers:
        table.add_column(col, justify="left" if col in ("row", "scored on") else "right")
    for name, split, scores, seconds in lines:
        table.add_row(name, *([split] if layout.split_column else []), *[percent(get(scores)) for _, get in metrics],
                      *([seconds] if layout.seconds_column else []))
    return table
