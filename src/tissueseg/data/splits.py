"""Case-level splits: a patient's images always stay together, so no part leaks into another."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tissueseg.data.sample import Record

SPLIT_NAMES = ("train", "val", "test")


def _shuffled_cases(records: Sequence[Record], seed: int) -> tuple[list[str], dict[str, int]]:
    """Case ids in a seeded random order (independent of record order) and their image counts."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.case_id] = counts.get(record.case_id, 0) + 1
    cases = sorted(counts)
    order = np.random.default_rng(seed).permutation(len(cases))
    return [cases[i] for i in order], counts


def split_by_case(records: Sequence[Record], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  seed: int = 0) -> dict[str, list[Record]]:
    """Split records into train / val / test by case, with about ``fractions`` of the images in each.

    Cases are shuffled with ``seed``; walking them in that order, a case goes to the part
    whose share of the cumulative image count contains the case's midpoint. Records keep
    their input order within a part.

    Parameters
    ----------
    records : records to split (e.g. ``dataset.records``).
    fractions : image fractions of train, val and test; non-negative, summing to 1.
    seed : the same seed and records give the same split.

    Returns
    -------
    ``{"train": [...], "val": [...], "test": [...]}``.

    Raises
    ------
    ValueError : bad fractions, or a part with a positive fraction got no case (too few cases).
    """
    fractions_array = np.asarray(fractions, dtype=float)
    if fractions_array.shape != (3,) or (fractions_array < 0).any() or not np.isclose(fractions_array.sum(), 1.0):
        raise ValueError(f"fractions {fractions} must be three non-negative numbers summing to 1 "
                         "(train, val, test)")
    cases, counts = _shuffled_cases(records, seed)
    sizes = np.array([counts[case] for case in cases], dtype=float)
    midpoints = (np.cumsum(sizes) - sizes / 2) / max(sizes.sum(), 1.0)
    parts = np.searchsorted(np.cumsum(fractions_array)[:-1], midpoints, side="right")
    part_of = {case: SPLIT_NAMES[part] for case, part in zip(cases, parts)}
    split = {name: [r for r in records if part_of[r.case_id] == name] for name in SPLIT_NAMES}
    empty = [name for name, fraction in zip(SPLIT_NAMES, fractions) if fraction > 0 and not split[name]]
    if empty:
        raise ValueError(f"{len(cases)} cases are too few to give every part a case: {', '.join(empty)} "
                         f"would be empty (fix: use more cases, or set those fractions to 0)")
    return split


def labelled_split(records: Sequence[Record], fraction: float | None = None, n_labelled: int | None = None,
                   seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Pick whole cases to label, for semi-supervised training; the rest is unlabelled.

    The target is ``n_labelled`` images, or ``round(fraction * len(records))`` (at
    least 1). Rule: walk the cases in seeded random order and take every case that still
    fits within the target; stop once it is reached exactly. If the walk ends short
    (no remaining case fits), add the smallest remaining case (first in the walk order
    on ties), so the labelled set has at least the target and overshoots it by less
    than that case's size.

    Parameters
    ----------
    records : the training records to divide.
    fraction, n_labelled : give exactly one.
    seed : the same seed and records give the same division.

    Returns
    -------
    (labelled, unlabelled) records, each in input order; no case is in both.
    """
    if (fraction is None) == (n_labelled is None):
        raise ValueError("give exactly one of fraction and n_labelled")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} must be in (0, 1]")
    target = n_labelled if n_labelled is not None else max(1, round(fraction * len(records)))
    if not 0 < target <= len(records):
        raise ValueError(f"n_labelled {target} must be between 1 and the {len(records)} records")
    cases, counts = _shuffled_cases(records, seed)
    chosen: set[str] = set()
    total = 0
    for case in cases:
        if total + counts[case] <= target:
            chosen.add(case)
            total += counts[case]
        if total == target:
            break
    if total < target:
        chosen.add(min((case for case in cases if case not in chosen), key=lambda case: counts[case]))
    labelled = [r for r in records if r.case_id in chosen]
    unlabelled = [r for r in records if r.case_id not in chosen]
    return labelled, unlabelled
