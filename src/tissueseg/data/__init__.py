"""Datasets: readers with validation, case-level splits and the data check report."""

from tissueseg.data.check import render_report, summarize
from tissueseg.data.readers import DATASET_FORMATS, detect_format, open_dataset
from tissueseg.data.sample import DatasetError, DatasetInfo, Problem, Record, Sample, SplitView, TissueDataset
from tissueseg.data.splits import labelled_split, split_by_case

__all__ = [
    "DATASET_FORMATS", "DatasetError", "DatasetInfo", "Problem", "Record", "Sample", "SplitView", "TissueDataset",
    "detect_format", "labelled_split", "open_dataset", "render_report", "split_by_case", "summarize",
]
