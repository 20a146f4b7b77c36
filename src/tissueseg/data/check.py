"""What ``tissueseg data check`` prints: counts per split, label frequencies and every problem."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tissueseg.data.sample import TissueDataset


def summarize(dataset: TissueDataset) -> dict:
    """Counts and problems of an opened dataset, as plain JSON-serialisable data.

    Returns
    -------
    dict with ``format``, ``root``, ``classes``, ``splits`` ({split: {images, with_mask,
    with_labels, cases}}), ``label_frequencies`` ({split: {label class: images with it}}),
    ``problems`` (one string each, "error: …" or "warning: …") and ``fatal`` (any error).
    """
    splits, label_frequencies = {}, {}
    for name in dataset.splits:
        records = [r for r in dataset.records if r.split == name]
        labelled = [r.labels for r in records if r.labels is not None]
        splits[name] = {"images": len(records),
                        "with_mask": sum(r.mask_path is not None for r in records),
                        "with_labels": len(labelled),
                        "cases": len({r.case_id for r in records})}
        label_frequencies[name] = {cls: sum(labels[i] for labels in labelled)
                                   for i, cls in enumerate(dataset.info.label_classes)}
    return {"format": dataset.info.format,
            "root": str(dataset.root),
            "classes": list(dataset.info.classes),
            "splits": splits,
            "label_frequencies": label_frequencies,
            "problems": [str(p) for p in dataset.problems],
            "fatal": bool(dataset.fatal_problems)}


def render_report(summary: dict) -> Group:
    """A rich renderable of :func:`summarize`'s output: header, split table, label table, problems."""
    parts: list = [Text.assemble(("dataset ", "bold"), summary["root"], (f"  [{summary['format']}]", "cyan")),
                   Text(f"classes: {', '.join(summary['classes'])}")]
    split_table = Table(title="splits")
    for column in ("split", "images", "with mask", "with labels", "cases"):
        split_table.add_column(column, justify="left" if column == "split" else "right")
    for name, counts in summary["splits"].items():
        split_table.add_row(name, *(str(counts[key]) for key in ("images", "with_mask", "with_labels", "cases")))
    parts.append(split_table)
    label_classes = list(next(iter(summary["label_frequencies"].values()), {}))
    if label_classes:
        label_table = Table(title="images per image-level label")
        label_table.add_column("class")
        for name in summary["label_frequencies"]:
            label_table.add_column(name, justify="right")
        for cls in label_classes:
            label_table.add_row(cls, *(str(freq.get(cls, 0)) for freq in summary["label_frequencies"].values()))
        parts.append(label_table)
    errors = sum(p.startswith("error") for p in summary["problems"])
    warnings = len(summary["problems"]) - errors
    verdict = ("FAIL", "bold red") if summary["fatal"] else ("OK", "bold green")
    parts.append(Text.assemble(verdict, f": {errors} errors, {warnings} warnings"))
    parts.extend(Text(p, style="red" if p.startswith("error") else "yellow") for p in summary["problems"])
    return Group(*parts)
