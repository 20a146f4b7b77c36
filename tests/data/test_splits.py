"""Case-level splits: no case crosses parts, seeds reproduce, labelled sets hit their target."""

from pathlib import Path

import numpy as np
import pytest

from tissueseg.data import Record, labelled_split, split_by_case


def make_records(n_cases: int = 40, seed: int = 0) -> list[Record]:
    sizes = np.random.default_rng(seed).integers(1, 9, n_cases)
    return [Record(Path(f"c{case:02d}-{i}.png"), "all", f"c{case:02d}")
            for case, size in enumerate(sizes) for i in range(size)]


def cases(records: list[Record]) -> set[str]:
    return {r.case_id for r in records}


def test_split_by_case_keeps_cases_whole_and_covers_everything():
    records = make_records()
    parts = split_by_case(records, seed=3)
    assert list(parts) == ["train", "val", "test"]
    assert not cases(parts["train"]) & cases(parts["val"])
    assert not cases(parts["train"]) & cases(parts["test"])
    assert not cases(parts["val"]) & cases(parts["test"])
    assert sorted(r.image_path.name for part in parts.values() for r in part) == \
        sorted(r.image_path.name for r in records)
    share = len(parts["train"]) / len(records)
    assert 0.55 < share < 0.85


def test_split_by_case_is_deterministic_by_seed_and_order_free():
    records = make_records()
    first, again = split_by_case(records, seed=1), split_by_case(records, seed=1)
    assert {k: cases(v) for k, v in first.items()} == {k: cases(v) for k, v in again.items()}
    shuffled = [records[i] for i in np.random.default_rng(9).permutation(len(records))]
    assert cases(split_by_case(shuffled, seed=1)["val"]) == cases(first["val"])
    assert cases(split_by_case(records, seed=2)["val"]) != cases(first["val"])


def test_split_by_case_zero_fraction_and_bad_arguments():
    records = make_records()
    parts = split_by_case(records, fractions=(0.8, 0.0, 0.2))
    assert parts["val"] == [] and parts["test"]
    with pytest.raises(ValueError, match="summing to 1"):
        split_by_case(records, fractions=(0.8, 0.3, 0.1))
    with pytest.raises(ValueError, match="too few"):
        split_by_case(make_records(n_cases=2), fractions=(0.6, 0.2, 0.2))


def test_labelled_split_n_labelled_takes_whole_cases_and_hits_the_target():
    records = make_records()
    for seed in range(5):
        labelled, unlabelled = labelled_split(records, n_labelled=8, seed=seed)
        assert not cases(labelled) & cases(unlabelled)
        assert len(labelled) + len(unlabelled) == len(records)
        assert len(labelled) == 8  # cases of 1..8 images always let the walk fit 8 exactly
    assert cases(labelled_split(records, n_labelled=8, seed=0)[0]) == \
        cases(labelled_split(records, n_labelled=8, seed=0)[0])
    assert cases(labelled_split(records, n_labelled=8, seed=0)[0]) != \
        cases(labelled_split(records, n_labelled=8, seed=1)[0])


def test_labelled_split_overshoots_by_less_than_one_case_when_nothing_fits():
    records = [Record(Path(f"{case}-{i}.png"), "all", case)
               for case, size in (("big", 10), ("mid", 6), ("small", 5)) for i in range(size)]
    labelled, _ = labelled_split(records, n_labelled=3)
    assert cases(labelled) == {"small"} and len(labelled) == 5


def test_labelled_split_fraction_and_bad_arguments():
    records = make_records()
    labelled, _ = labelled_split(records, fraction=0.1, seed=4)
    assert len(labelled) == round(0.1 * len(records))
    with pytest.raises(ValueError, match="exactly one"):
        labelled_split(records)
    with pytest.raises(ValueError, match="exactly one"):
        labelled_split(records, fraction=0.1, n_labelled=3)
    with pytest.raises(ValueError, match="between 1 and"):
        labelled_split(records, n_labelled=len(records) + 1)
