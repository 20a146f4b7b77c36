"""Open a dataset folder as a :class:`TissueDataset`, validating every file on the way.

Formats (``open_dataset(path, format=...)``; ``"auto"`` detects them from the tree):

``luad-histoseg``
    ``train/`` (or ``training/``) patches named ``…-[TE NEC LYM TAS].png`` (e.g.
    ``1031280-2300-27920-[1 0 0 1].png``), ``val/`` and ``test/`` with ``img/`` and ``mask/``
    palette PNGs (index 4 = white background, excluded from scoring). tissueseg
    extension: ``training_mask/`` (or ``train_mask/``) masks with the training file
    names, and ``splits/labelled.txt`` / ``splits/unlabelled.txt`` (one training file
    name per line, ``labelled.txt`` wins if a name is in both) that set
    ``record.extra["labelled"]``. Case id: the file name up to the first ``-``.
``bcss-wsss``
    The same layout, labels ``…+0[TUM STR LYM NEC].png`` without spaces (e.g.
    ``TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png``); case id: the
    first three ``-`` fields of TCGA names (``TCGA-A1-A0SK``).
``wsss4luad``
    ``1.training/`` patches named ``…-[tumor, stroma, normal].png``; ``2.validation/``
    and ``3.testing/`` with ``img/``, ``mask/`` (index 3 = background, excluded from
    scoring) and an optional ``background-mask/`` (only checked, kept in
    ``record.extra["background_mask_path"]``). ``training/``, ``validation/`` and
    ``testing/`` are accepted too.
``glas``
    One flat folder of ``train_N.bmp``, ``testA_N.bmp``, ``testB_N.bmp`` with
    ``*_anno.bmp`` gland instance maps and ``Grade.csv`` (case id = patient ID, grade
    in ``record.extra["grade"]``). Splits train, testA, testB.
``crag``
    ``train/`` and ``valid/`` (split ``val``), each with ``Images/`` and ``Annotation/``
    instance maps; case id = image stem.
``ebhi-seg``
    ``EBHI-SEG/<class>/image/<name>.(png|jpg)`` and ``<class>/label/<name>.png``
    (the root may be ``EBHI-SEG`` itself or the folder holding it). Masks are
    binarised at 127 and take the folder's class id (1..6, background 0); the image
    label is the one-hot folder class; case id = name up to the first ``-``, upper-cased
    (the release spells one case both ``GTxc…`` and ``GTXC…``). One split, ``all``.
    Images without a label file are reported (non-fatal) and skipped.
``folder``
    A generic layout for your own data::

        my-dataset/
          images/       one file per image: .png .jpg .jpeg .tif .tiff .bmp
          masks/        optional: <image stem>.png, single-channel (grayscale or palette)
          labels.csv    optional when masks/ exists

    ``labels.csv`` has a header ``image,<class_1>,...,<class_K>`` plus optional ``case``
    and ``split`` columns (in any position)::

        image,tumor,stroma,necrosis,case,split
        p01-a.png,1,0,0,p01,train
        p02-a.png,0,1,1,p02,val

    - ``image``: the file name in ``images/`` (the stem alone also works).
    - one 0/1 column per class: the class names and their order come from the header;
      these are the image-level labels. A row whose class cells are all empty is an
      unlabelled image that still has a case and a split.
    - ``case``: patient / slide id for case-level splits (default: the image stem).
    - ``split``: any split name, e.g. train / val / test (default: ``all``; use
      :func:`tissueseg.data.split_by_case` to make one).
    - Mask pixel values are class indices in the header's column order (0 = first class
      column); 255 marks unannotated pixels, ignored in training and scoring. Add a
      ``background`` column if background is one of your classes.
    - Without ``labels.csv`` the classes are named ``class_0`` … ``class_K-1`` after the
      largest mask value.
    - Images missing from ``labels.csv`` have no image-level labels and images without a
      mask have no pixel labels (e.g. the unlabelled images of semi-supervised training).
    - ``dataset.json`` (optional, written by ``tissueseg data tiles`` / ``data tag-crops``):
      its ``mpp``, when one number, is the images' microns per pixel (``DatasetInfo.mpp``).

Every file is checked on open (image headers, mask sizes and values) and every
problem is collected with its path and fix; see :func:`open_dataset`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from tissueseg.data.io import ImageReadError, list_images, read_label_image, read_rgb
from tissueseg.data.sample import DatasetError, DatasetInfo, Problem, Record, Sample, TissueDataset

MaskDecoder = Callable[[np.ndarray, Record, DatasetInfo], "tuple[np.ndarray, np.ndarray | None]"]
MissingMask = Literal["error", "warning", "allowed"]

SPLIT_FOLDERS = {"train": ("train", "training", "1.training"),
                 "val": ("val", "valid", "validation", "2.validation"),
                 "test": ("test", "testing", "3.testing")}
FOLDER_IGNORE_INDEX = 255
_DEFAULT_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
                    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
                    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128))


@dataclass
class _Scan:
    """What a format's scanner found from names alone, before any file is opened."""

    info: DatasetInfo
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


# --------------------------------------------------------------------------- shared scanning

def _split_dir(root: Path, split: str, problems: list[Problem], required: bool) -> Path | None:
    """The folder of ``split`` under ``root`` (any accepted spelling); a problem when absent."""
    folder = next((root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()), None)
    if folder is None:
        names = " or ".join(f"{n}/" for n in SPLIT_FOLDERS[split])
        problems.append(Problem(root, f"no {split} split folder ({names})",
                                f"add the {split} folder as released" if required
                                else f"add it to evaluate on the official {split} split", fatal=required))
    return folder


def _nonempty(images: list[Path], where: Path, split: str, problems: list[Problem]) -> list[Path]:
    """``images`` unchanged; a fatal problem when there are none."""
    if not images:
        problems.append(Problem(where, f"split '{split}' has no images here",
                                "put the images in this folder, or remove the empty split"))
    return images


def _split_images(folder: Path, split: str, problems: list[Problem]) -> list[Path]:
    """Images of one split folder; an empty or missing folder is a fatal problem."""
    return _nonempty(list_images(folder), folder, split, problems)


def _files_by_stem(folder: Path | None, suffix: str = ".png") -> dict[str, Path]:
    """Mask files of one suffix in ``folder``, keyed by stem (empty when there is no folder)."""
    if folder is None:
        return {}
    return {p.stem: p for p in list_images(folder) if p.suffix.lower() == suffix}


def _pair(images: list[Path], masks: dict[str, Path], where: Path, missing: MissingMask,
          problems: list[Problem]) -> list[tuple[Path, Path | None]]:
    """Match images to masks by stem: the one rule for missing and orphan masks in every format.

    ``missing``: "error" (masks required, image dropped, fatal), "warning" (image
    dropped, non-fatal) or "allowed" (image kept without a mask). A mask without an
    image is always a non-fatal problem.
    """
    if missing == "error" and not where.is_dir():
        problems.append(Problem(where, f"mask folder missing for {len(images)} images",
                                "add the masks with the same file names as the images"))
        return []
    pairs: list[tuple[Path, Path | None]] = []
    for image in images:
        mask = masks.get(image.stem)
        if mask is None and missing != "allowed":
            skipped = " (image skipped)" if missing == "warning" else ""
            problems.append(Problem(image, f"no mask for this image in {where}{skipped}",
                                    "add the mask with the image's name, or remove the image",
                                    fatal=missing == "error"))
            continue
        pairs.append((image, mask))
    stems = {image.stem for image in images}
    problems.extend(Problem(mask, "mask has no matching image", "add the image or delete the mask", fatal=False)
                    for stem, mask in masks.items() if stem not in stems)
    return pairs


class _LabelError(ValueError):
    """An image-level label vector could not be read."""


def _label_vector(tokens: list[str], label_classes: list[str]) -> tuple[int, ...]:
    """0/1 strings to a label tuple, checking the values and the length against the classes."""
    tokens = [t.strip() for t in tokens]
    if not tokens:
        raise _LabelError("no label vector found")
    if any(t not in ("0", "1") for t in tokens):
        raise _LabelError(f"labels {tokens} are not a vector of 0/1 values")
    if len(tokens) != len(label_classes):
        raise _LabelError(f"label vector has {len(tokens)} values, expected {len(label_classes)} "
                          f"({', '.join(label_classes)})")
    return tuple(int(t) for t in tokens)


_NAME_LABELS = re.compile(r"\[([^\[\]]*)\][^\[\]]*$")


def _name_label_tokens(name: str) -> list[str]:
    """The label values of ``…[1 0 0 1].png``, ``…[1, 0, 0].png`` or ``…[1101].png``."""
    match = _NAME_LABELS.search(name)
    if match is None:
        return []
    text = match.group(1).strip()
    return re.split(r"[\s,]+", text) if re.search(r"[\s,]", text) else list(text)


def _name_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()} if path.is_file() else set()


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / name for name in names if (root / name).is_dir()), None)


# --------------------------------------------------------------------------- WSSS formats

def _case_first_field(stem: str, split: str) -> str:
    """``1031280-2300-27920-[1 0 0 1]`` -> ``1031280``; names without ``-`` are their own case."""
    return stem.split("-", 1)[0] if "-" in stem else f"{split}/{stem}"


def _case_tcga(stem: str, split: str) -> str:
    """``TCGA-A1-A0SK-DX1_…`` -> ``TCGA-A1-A0SK``; other names as :func:`_case_first_field`."""
    return "-".join(stem.split("-")[:3]) if stem.startswith("TCGA-") else _case_first_field(stem, split)


@dataclass(frozen=True)
class _WsssLayout:
    """One of the three patch-label formats: class order, palette, label-name style, case rule."""

    format: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    example: str
    label_style: re.Pattern
    case_id: Callable[[str, str], str]
    background_mask_folder: str | None = None

    def info(self) -> DatasetInfo:
        background = len(self.classes) - 1
        return DatasetInfo(self.format, list(self.classes), list(self.classes[:-1]), list(self.palette),
                           ignore_index=background, background_index=background)


_LUAD = _WsssLayout(
    "luad-histoseg",
    ("tumor_epithelial", "necrosis", "lymphocyte", "tumor_associated_stroma", "background"),
    ((205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0), (255, 255, 255)),
    "1031280-2300-27920-[1 0 0 1].png", re.compile(r"\[[01]( [01])+\]"), _case_first_field)
_BCSS = _WsssLayout(
    "bcss-wsss",
    ("tumor", "stroma", "lymphocyte", "necrosis", "background"),
    ((255, 0, 0), (0, 255, 0), (0, 0, 255), (153, 0, 255), (255, 255, 255)),
    "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png", re.compile(r"\[[01]+\]"), _case_tcga)
_WSSS4LUAD = _WsssLayout(
    "wsss4luad",
    ("tumor", "stroma", "normal", "background"),
    ((0, 64, 128), (64, 128, 0), (243, 152, 0), (255, 255, 255)),
    "436219-7159-48057-[1, 0, 0].png", re.compile(r"\[[01](, [01])+\]"), _case_first_field,
    background_mask_folder="background-mask")
_WSSS_LAYOUTS = (_LUAD, _BCSS, _WSSS4LUAD)


def _label_style(root: Path) -> str | None:
    """The WSSS format whose label-name style most of the first training names follow."""
    train = _first_dir(root, SPLIT_FOLDERS["train"])
    names = [p.name for p in list_images(train)[:50]] if train else []
    votes = Counter(layout.format for name in names for layout in _WSSS_LAYOUTS if layout.label_style.search(name))
    return votes.most_common(1)[0][0] if votes else None


def _scan_wsss(root: Path, layout: _WsssLayout) -> _Scan:
    scan = _Scan(layout.info())
    train_dir = _split_dir(root, "train", scan.problems, required=True)
    if train_dir is not None:
        scan.records += _wsss_training(root, train_dir, layout, scan.info.label_classes, scan.problems)
    for split in ("val", "test"):
        split_dir = _split_dir(root, split, scan.problems, required=False)
        if split_dir is None:
            continue
        images = _split_images(split_dir / "img", split, scan.problems)
        background = _files_by_stem(_first_dir(split_dir, (layout.background_mask_folder,))
                                    if layout.background_mask_folder else None)
        for image, mask in _pair(images, _files_by_stem(split_dir / "mask"), split_dir / "mask", "error",
                                 scan.problems):
            extra = {"background_mask_path": background[image.stem]} if image.stem in background else {}
            scan.records.append(Record(image, split, layout.case_id(image.stem, split), mask, extra=extra))
    return scan


def _wsss_training(root: Path, train_dir: Path, layout: _WsssLayout, label_classes: list[str],
                   problems: list[Problem]) -> list[Record]:
    images = _split_images(train_dir, "train", problems)
    mask_dir = _first_dir(root, ("training_mask", "train_mask"))
    pairs = _pair(images, _files_by_stem(mask_dir), mask_dir, "allowed", problems) if mask_dir \
        else [(image, None) for image in images]
    labelled, unlabelled = _name_list(root / "splits" / "labelled.txt"), _name_list(root / "splits" / "unlabelled.txt")
    problems.extend(Problem(root / "splits", f"lists '{name}', which is not a training image",
                            "remove the line or add the image", fatal=False)
                    for name in sorted((labelled | unlabelled) - {image.name for image in images}))
    records = []
    for image, mask in pairs:
        try:
            labels = _label_vector(_name_label_tokens(image.name), label_classes)
        except _LabelError as exc:
            problems.append(Problem(image, f"cannot read the image-level labels from the file name: {exc}",
                                    f"rename it like '{layout.example}'"))
            continue
        extra = {"labelled": image.name in labelled} if image.name in labelled | unlabelled else {}
        records.append(Record(image, "train", layout.case_id(image.stem, "train"), mask, labels, extra))
    return records


# --------------------------------------------------------------------------- gland formats

_GLAS_SPLITS = ("train", "testA", "testB")
_GLAS_NAME = re.compile(r"^(train|testA|testB)_\d+(_anno)?$")


def _binary_info(format: str) -> DatasetInfo:
    return DatasetInfo(format, ["background", "gland"], [], [(0, 0, 0), (255, 255, 255)], background_index=0)


def _glas_grades(path: Path, problems: list[Problem]) -> dict[str, tuple[str, str]]:
    """``Grade.csv``: image name -> (patient ID, GlaS grade); header names may carry stray spaces."""
    fix = "restore Grade.csv from the GlaS release (columns: name, patient ID, grade (GlaS))"
    if not path.is_file():
        problems.append(Problem(path, "missing: case ids fall back to image names, so a patient's images "
                                "may land in different parts of a case split", fix, fatal=False))
        return {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle) if row]
    header = [name.lower() for name in rows[0]] if rows else []
    if "name" not in header or "patient id" not in header:
        problems.append(Problem(path, f"header {rows[0] if rows else []} lacks 'name' and 'patient ID'", fix,
                                fatal=False))
        return {}
    name, patient = header.index("name"), header.index("patient id")
    grade = next((i for i, h in enumerate(header) if h.startswith("grade")), None)
    return {row[name]: (row[patient], row[grade] if grade is not None else "")
            for row in rows[1:] if len(row) == len(header)}


def _scan_glas(root: Path) -> _Scan:
    scan = _Scan(_binary_info("glas"))
    images: dict[str, list[Path]] = {split: [] for split in _GLAS_SPLITS}
    masks: dict[str, dict[str, Path]] = {split: {} for split in _GLAS_SPLITS}
    for path in list_images(root):
        match = _GLAS_NAME.match(path.stem)
        if match is None:
            scan.problems.append(Problem(path, "not a GlaS file name (train_N, testA_N, testB_N, *_anno)",
                                         "rename or move the file; it is ignored", fatal=False))
        elif match.group(2):
            masks[match.group(1)][path.stem.removesuffix("_anno")] = path
        else:
            images[match.group(1)].append(path)
    grades = _glas_grades(root / "Grade.csv", scan.problems)
    for split in _GLAS_SPLITS:
        if split == "testB" and not images[split]:  # testB is often held back: report it, open the rest
            scan.problems.append(Problem(root, f"split '{split}' is absent (no {split}_N images)",
                                         f"nothing to do unless you need {split}: add its images", fatal=False))
            continue
        for image, mask in _pair(_nonempty(images[split], root, split, scan.problems), masks[split], root,
                                 "error", scan.problems):
            if grades and image.stem not in grades:
                scan.problems.append(Problem(image, "not listed in Grade.csv: its case id is its own name",
                                             "add its row to Grade.csv", fatal=False))
            patient, grade = grades.get(image.stem, (image.stem, None))
            scan.records.append(Record(image, split, patient, mask, extra={"grade": grade} if grade else {}))
    return scan


def _scan_crag(root: Path) -> _Scan:
    scan = _Scan(_binary_info("crag"))
    for split, required in (("train", True), ("val", False)):
        split_dir = _split_dir(root, split, scan.problems, required)
        if split_dir is None:
            continue
        images = _split_images(split_dir / "Images", split, scan.problems)
        for image, mask in _pair(images, _files_by_stem(split_dir / "Annotation"), split_dir / "Annotation",
                                 "error", scan.problems):
            scan.records.append(Record(image, split, image.stem, mask))
    return scan


# --------------------------------------------------------------------------- EBHI-Seg

_EBHI_FOLDERS = ("Adenocarcinoma", "High-grade IN", "Low-grade IN", "Normal", "Polyp", "Serrated adenoma")


def _ebhi_base(root: Path) -> Path:
    return root / "EBHI-SEG" if (root / "EBHI-SEG").is_dir() else root


def _scan_ebhi(root: Path) -> _Scan:
    base = _ebhi_base(root)
    classes = [re.sub(r"[\s-]+", "_", name.lower()) for name in _EBHI_FOLDERS]
    palette = [(0, 0, 0)] + list(_DEFAULT_PALETTE[:len(classes)])
    scan = _Scan(DatasetInfo("ebhi-seg", ["background"] + classes, classes, palette, background_index=0))
    present = [name for name in _EBHI_FOLDERS if (base / name).is_dir()]
    if not present:
        scan.problems.append(Problem(base, "no EBHI-SEG class folders", f"point to the folder holding "
                                     f"EBHI-SEG/ or its class folders ({', '.join(_EBHI_FOLDERS)})"))
    scan.problems.extend(Problem(p, "unknown class folder, ignored", f"use one of: {', '.join(_EBHI_FOLDERS)}",
                                 fatal=False)
                         for p in sorted(base.iterdir()) if p.is_dir() and p.name not in _EBHI_FOLDERS
                         and not p.name.startswith("."))
    for name in present:
        labels = tuple(int(folder == name) for folder in _EBHI_FOLDERS)
        images = _split_images(base / name / "image", "all", scan.problems)
        label_dir = base / name / "label"
        for image, mask in _pair(images, _files_by_stem(label_dir), label_dir, "warning", scan.problems):
            case = image.stem.split("-", 1)[0].upper()
            scan.records.append(Record(image, "all", case, mask, labels))
    return scan


# --------------------------------------------------------------------------- generic folder

def _labels_csv(path: Path, problems: list[Problem]) -> tuple[list[str], dict[str, dict]]:
    """Class names and ``{image name: {"labels", "case", "split"}}`` rows of ``labels.csv``."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = [name.strip() for name in rows[0]] if rows else []
    if "image" not in header:
        problems.append(Problem(path, f"header {header} has no 'image' column",
                                "start the file with a header like image,<class_1>,...,<class_K>[,case][,split]"))
        return [], {}
    class_columns = [i for i, name in enumerate(header) if name not in ("image", "case", "split")]
    classes = [header[i] for i in class_columns]
    if not classes:
        problems.append(Problem(path, "header names no class columns", "add one 0/1 column per class"))
        return [], {}
    entries = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = dict(zip(header, (cell.strip() for cell in row)))
        if len(row) == len(header) and not any(row[i].strip() for i in class_columns):
            # all class cells empty: an unlabelled image (semi-supervised pool) that still has a case and split
            entries[cells["image"]] = {"labels": None, "case": cells.get("case"), "split": cells.get("split")}
            continue
        try:
            if len(row) != len(header):
                raise _LabelError(f"label vector of wrong length ({len(row)} fields, header has {len(header)})")
            labels = _label_vector([row[i] for i in class_columns], classes)
        except _LabelError as exc:
            problems.append(Problem(path, f"line {line} ({cells.get('image')}): {exc}",
                                    "give every row one 0/1 value per class column"))
            entries[cells.get("image")] = None  # the image is left out, not silently unlabelled
            continue
        entries[cells["image"]] = {"labels": labels, "case": cells.get("case"), "split": cells.get("split")}
    return classes, entries


def _folder_info(classes: list[str], mpp: float | None) -> DatasetInfo:
    palette = [_DEFAULT_PALETTE[i % len(_DEFAULT_PALETTE)] for i in range(len(classes))]
    background = classes.index("background") if "background" in classes else None
    return DatasetInfo("folder", classes, list(classes), palette, ignore_index=FOLDER_IGNORE_INDEX,
                       background_index=background, mpp=mpp)


def _recorded_mpp(path: Path, problems: list[Problem]) -> float | None:
    """The one MPP that ``dataset.json`` records (None without the file, or with several MPPs)."""
    if not path.is_file():
        return None
    try:
        mpp = json.loads(path.read_text()).get("mpp")
    except (ValueError, AttributeError):
        problems.append(Problem(path, "not a JSON object, its MPP is ignored",
                                "rewrite it (tissueseg data tiles / tag-crops) or set data.mpp in the config",
                                fatal=False))
        return None
    return float(mpp) if isinstance(mpp, (int, float)) and not isinstance(mpp, bool) and mpp > 0 else None


def _scan_folder(root: Path) -> _Scan:
    problems: list[Problem] = []
    images = _split_images(root / "images", "all", problems)
    csv_path, mask_dir = root / "labels.csv", root / "masks"
    if not csv_path.is_file() and not mask_dir.is_dir():
        problems.append(Problem(root, "neither labels.csv nor masks/: the images carry no labels",
                                "add labels.csv (image,<class_1>,...) and/or a masks/ folder"))
    classes, entries = _labels_csv(csv_path, problems) if csv_path.is_file() else ([], {})
    scan = _Scan(_folder_info(classes, _recorded_mpp(root / "dataset.json", problems)), problems=problems)
    pairs = _pair(images, _files_by_stem(mask_dir), mask_dir, "allowed", problems) if mask_dir.is_dir() \
        else [(image, None) for image in images]
    by_name = {image.name: image for image in images} | {image.stem: image for image in images}
    problems.extend(Problem(csv_path, f"names '{name}', which is not in {root / 'images'}",
                            "fix the name or add the image") for name in entries if name not in by_name)
    for image, mask in pairs:
        key = image.name if image.name in entries else image.stem
        if key in entries and entries[key] is None:
            continue  # its row was unreadable, already reported
        entry = entries.get(key) or {}
        scan.records.append(Record(image, entry.get("split") or "all", entry.get("case") or image.stem,
                                   mask, entry.get("labels")))
    return scan


def _classes_from_masks(mask_values: list[np.ndarray], mpp: float | None) -> DatasetInfo:
    """Name classes ``class_0``..``class_K-1`` after the largest mask value (masks-only folders)."""
    values = np.concatenate(mask_values) if mask_values else np.zeros(1, dtype=np.int64)
    count = int(values[values != FOLDER_IGNORE_INDEX].max(initial=0)) + 1
    return replace(_folder_info([f"class_{i}" for i in range(count)], mpp), label_classes=[])


# --------------------------------------------------------------------------- masks

def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours as one int32 code each (``r << 16 | g << 8 | b``)."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _decode_index(raw: np.ndarray, record: Record, info: DatasetInfo) -> tuple[np.ndarray, None]:
    """Palette / gray values are class indices; RGB colours are looked up in the palette (-1 if absent)."""
    if raw.ndim == 2:
        return raw.astype(np.int64), None
    codes = _rgb_codes(raw)
    palette = _rgb_codes(np.asarray(info.palette, dtype=np.uint8))
    order = np.argsort(palette)
    position = np.clip(np.searchsorted(palette[order], codes), 0, len(palette) - 1)
    found = palette[order[position]] == codes
    return np.where(found, order[position], -1).astype(np.int64), None


def _decode_instances(raw: np.ndarray, record: Record, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """Instance map (0 = background; RGB maps use each colour as an id) -> (binary mask, instances)."""
    instances = (_rgb_codes(raw) if raw.ndim == 3 else raw).astype(np.int32)
    return (instances > 0).astype(np.int64), instances


def _decode_threshold(raw: np.ndarray, record: Record, info: DatasetInfo) -> tuple[np.ndarray, None]:
    """Gray mask > 127 -> the record's one-hot class id (1-based), background 0."""
    gray = raw.max(axis=-1) if raw.ndim == 3 else raw
    class_id = int(np.argmax(record.labels)) + 1
    return (gray > 127).astype(np.int64) * class_id, None


def _present_values(mask: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a decoded mask; a bincount, since decoded values span at most 16 bits."""
    low = int(mask.min())
    return np.flatnonzero(np.bincount((mask - low).ravel())) + low


def _mask_value_problems(path: Path, values: np.ndarray, info: DatasetInfo) -> list[Problem]:
    allowed = np.arange(len(info.classes))
    if info.ignore_index is not None:
        allowed = np.append(allowed, info.ignore_index)
    bad = np.setdiff1d(values, allowed)
    if bad.size == 0:
        return []
    if (bad < 0).any():
        return [Problem(path, f"mask has colours outside the {info.format} palette",
                        "save it as a palette PNG of class indices, or with the exact palette colours")]
    ignore = f" or {info.ignore_index} (ignored)" if info.ignore_index not in (None, *range(len(info.classes))) else ""
    return [Problem(path, f"mask values {bad[:10].tolist()} are outside the class indices "
                          f"0..{len(info.classes) - 1}{ignore} ({', '.join(info.classes)})",
                    "re-export the mask with class indices as pixel values")]


# --------------------------------------------------------------------------- validation and loading

def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header; ``verify`` checks the file's structure without decoding."""
    with Image.open(path) as img:
        width, height = img.size
        img.verify()
    return height, width


def _check_record(record: Record, info: DatasetInfo, decode: MaskDecoder) -> tuple[list[Problem], np.ndarray | None]:
    """Open one record's files: corruption, image/mask size, mask values. Returns problems and mask values."""
    problems: list[Problem] = []
    try:
        image_shape = _image_size(record.image_path)
    except (OSError, SyntaxError, ValueError) as exc:
        problems.append(Problem(record.image_path, f"unreadable or corrupt image ({exc})",
                                "re-export or remove this file"))
        image_shape = None
    values = None
    for path in (record.mask_path, record.extra.get("background_mask_path")):
        if path is None:
            continue
        try:
            raw = read_label_image(path)
        except ImageReadError as exc:
            problems.append(Problem(path, f"unreadable or corrupt mask ({exc.__cause__ or exc})",
                                    "re-export or remove this file"))
            continue
        if image_shape is not None and raw.shape[:2] != image_shape:
            problems.append(Problem(path, f"mask is {raw.shape[1]}x{raw.shape[0]} but its image "
                                    f"{record.image_path.name} is {image_shape[1]}x{image_shape[0]}",
                                    "re-export the mask at the image's size"))
        if path == record.mask_path:
            values = _present_values(decode(raw, record, info)[0])
            if info.classes:
                problems += _mask_value_problems(path, values, info)
    return problems, values


def _validate(scan: _Scan, decode: MaskDecoder) -> tuple[list[Record], list[Problem], DatasetInfo]:
    """Check every record's files (threaded); drop records with fatal problems."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda record: _check_record(record, scan.info, decode), scan.records))
    info = scan.info if scan.info.classes else \
        _classes_from_masks([values for _, values in results if values is not None], scan.info.mpp)
    problems, records = list(scan.problems), []
    for record, (record_problems, _) in zip(scan.records, results):
        problems += record_problems
        if not any(p.fatal for p in record_problems):
            records.append(record)
    return records, problems, info


def _load_sample(record: Record, info: DatasetInfo, *, decode: MaskDecoder) -> Sample:
    image = read_rgb(record.image_path)
    mask = instances = None
    if record.mask_path is not None:
        mask, instances = decode(read_label_image(record.mask_path), record, info)
    labels = None if record.labels is None else np.asarray(record.labels, dtype=np.float32)
    return Sample(image, mask, labels, record.case_id, record.image_path, instances)


@dataclass(frozen=True)
class _Format:
    detect: Callable[[Path], bool]
    scan: Callable[[Path], _Scan]
    decode: MaskDecoder


_FORMATS: dict[str, _Format] = {
    **{layout.format: _Format(lambda root, name=layout.format: _label_style(root) == name,
                              partial(_scan_wsss, layout=layout), _decode_index) for layout in _WSSS_LAYOUTS},
    "glas": _Format(lambda root: (root / "Grade.csv").is_file()
                    or any(_GLAS_NAME.match(p.stem) for p in list_images(root)), _scan_glas, _decode_instances),
    "crag": _Format(lambda root: any((root / split / "Images").is_dir() for split in ("train", "valid")),
                    _scan_crag, _decode_instances),
    "ebhi-seg": _Format(lambda root: any((_ebhi_base(root) / name / "image").is_dir() for name in _EBHI_FOLDERS),
                        _scan_ebhi, _decode_threshold),
    "folder": _Format(lambda root: (root / "images").is_dir(), _scan_folder, _decode_index),
}
DATASET_FORMATS: tuple[str, ...] = tuple(_FORMATS)


def detect_format(path: str | os.PathLike) -> str:
    """Name of the one format whose layout ``path`` follows; DatasetError if none or several."""
    root = Path(path)
    matches = [name for name, fmt in _FORMATS.items() if fmt.detect(root)]
    if len(matches) == 1:
        return matches[0]
    found = f"matches several formats ({', '.join(matches)})" if matches else "matches no known layout"
    raise DatasetError([Problem(root, f"cannot tell the dataset format: the folder {found}",
                                f"pass the format explicitly, one of: {', '.join(DATASET_FORMATS)}")],
                       header=f"unknown dataset format at {root}")


def open_dataset(path: str | os.PathLike, format: str = "auto", strict: bool = True) -> TissueDataset:
    """Open and validate a dataset folder.

    Parameters
    ----------
    path : dataset root (layouts in this module's docstring).
    format : one of :data:`DATASET_FORMATS`, or ``"auto"`` to detect it.
    strict : raise :class:`DatasetError` listing every fatal problem; with False,
        return the dataset with ``problems`` filled and the records that have fatal
        per-file problems left out. Non-fatal problems never raise.

    Returns
    -------
    TissueDataset whose samples load lazily.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError([Problem(root, "folder not found", "check the path")], header=f"cannot open {root}")
    name = detect_format(root) if format == "auto" else format
    if name not in _FORMATS:
        raise DatasetError([Problem(root, f"unknown format '{name}'",
                                    f"use one of: auto, {', '.join(DATASET_FORMATS)}")], header=f"cannot open {root}")
    fmt = _FORMATS[name]
    records, problems, info = _validate(fmt.scan(root), fmt.decode)
    fatal = [p for p in problems if p.fatal]
    if strict and fatal:
        raise DatasetError(fatal, header=f"cannot open {root} as {name}")
    return TissueDataset(root, info, records, problems, partial(_load_sample, decode=fmt.decode))
