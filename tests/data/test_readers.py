"""open_dataset on tiny trees of every format: good trees load right, bad ones report every problem."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tissueseg.data import DATASET_FORMATS, DatasetError, detect_format, open_dataset
from tissueseg.data.io import ImageReadError, write_png

LUAD_PALETTE = [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0), (255, 255, 255)]


def rgb(path: Path, size: int = 8, seed: int = 0) -> Path:
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def index_mask(path: Path, values, size: int = 8, palette=LUAD_PALETTE) -> Path:
    """Palette PNG whose rows cycle through ``values``."""
    mask = np.resize(np.asarray(values), size)[:, None].repeat(size, axis=1)
    return write_png(path, mask, palette=palette)


def gray(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)
    return path


def garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image" * 10)
    return path


def make_luad(root: Path) -> Path:
    rgb(root / "training" / "S01-000-[1 0 0 1].png")
    rgb(root / "training" / "S01-001-[0 1 0 0].png")
    rgb(root / "training" / "S02-000-[0 0 1 0].png")
    index_mask(root / "training_mask" / "S01-000-[1 0 0 1].png", [0, 3])
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "labelled.txt").write_text("S01-000-[1 0 0 1].png\n")
    (root / "splits" / "unlabelled.txt").write_text("S02-000-[0 0 1 0].png\n\n")
    for split, case in (("val", "S03"), ("test", "S04")):
        rgb(root / split / "img" / f"{case}-000.png")
        index_mask(root / split / "mask" / f"{case}-000.png", [0, 1, 2, 3, 4])
    return root


def messages(problems) -> str:
    return "\n".join(str(p) for p in problems)


# --------------------------------------------------------------------------- good trees

def test_luad_histoseg_loads_labels_masks_cases_and_extensions(tmp_path):
    ds = open_dataset(make_luad(tmp_path), format="auto")
    assert ds.info.format == "luad-histoseg"
    assert ds.info.classes[-1] == "background" and ds.info.ignore_index == 4 == ds.info.background_index
    assert ds.info.label_classes == ["tumor_epithelial", "necrosis", "lymphocyte", "tumor_associated_stroma"]
    assert ds.splits == ["train", "val", "test"] and ds.problems == []
    train = {r.image_path.name: r for r in ds.split("train").records}
    first = train["S01-000-[1 0 0 1].png"]
    assert first.labels == (1, 0, 0, 1) and first.case_id == "S01" and first.extra == {"labelled": True}
    assert train["S02-000-[0 0 1 0].png"].extra == {"labelled": False}
    assert train["S01-001-[0 1 0 0].png"].extra == {} and train["S01-001-[0 1 0 0].png"].mask_path is None
    sample = ds.load(first)
    assert sample.image.shape == (8, 8, 3) and sample.image.dtype == np.uint8
    assert sample.labels.dtype == np.float32 and sample.labels.tolist() == [1, 0, 0, 1]
    assert sample.mask.dtype == np.int64 and set(np.unique(sample.mask)) == {0, 3}
    val = ds.split("val")[0]
    assert val.labels is None and set(np.unique(val.mask)) == {0, 1, 2, 3, 4} and val.case_id == "S03"


def test_bcss_wsss_parses_compact_labels_and_tcga_case(tmp_path):
    name = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png"
    rgb(tmp_path / "train" / name)
    rgb(tmp_path / "train" / "TCGA-B6-A0WX-DX1_xmin1_ymin2_MPP-0.2500+3[0010].png")
    for split in ("val", "test"):
        rgb(tmp_path / split / "img" / "TCGA-E2-A1B6-DX1_xmin3_ymin4+0.png")
        index_mask(tmp_path / split / "mask" / "TCGA-E2-A1B6-DX1_xmin3_ymin4+0.png", [0, 4])
    ds = open_dataset(tmp_path)
    assert ds.info.format == "bcss-wsss" and ds.info.classes == ["tumor", "stroma", "lymphocyte", "necrosis",
                                                                 "background"]
    train = ds.split("train").records
    assert train[0].labels == (1, 1, 0, 1) and train[0].case_id == "TCGA-A1-A0SK"
    assert ds.split("test")[0].case_id == "TCGA-E2-A1B6"


def test_wsss4luad_released_folder_names_and_numbered_eval_images(tmp_path):
    rgb(tmp_path / "1.training" / "436219-7159-48057-[1, 0, 1].png")
    for folder in ("2.validation", "3.testing"):
        rgb(tmp_path / folder / "img" / "00.png")
        index_mask(tmp_path / folder / "mask" / "00.png", [0, 1, 2, 3])
        gray(tmp_path / folder / "background-mask" / "00.png", np.zeros((8, 8)))
    ds = open_dataset(tmp_path)
    assert ds.info.format == "wsss4luad" and ds.info.ignore_index == 3
    assert ds.split("train").records[0].labels == (1, 0, 1)
    val, test = ds.split("val").records[0], ds.split("test").records[0]
    assert val.case_id != test.case_id  # "00" of validation and testing are different images
    assert val.extra["background_mask_path"].parent.name == "background-mask"
    assert set(np.unique(ds.load(val).mask)) == {0, 1, 2, 3}


def test_glas_instances_binary_mask_and_grade_csv_with_stray_spaces(tmp_path):
    instances = np.zeros((8, 8), np.uint8)
    instances[1:3, 1:3], instances[5:7, 4:7] = 1, 2
    for split, number in (("train", 1), ("train", 2), ("testA", 1), ("testB", 1)):
        rgb(tmp_path / f"{split}_{number}.bmp")
        gray(tmp_path / f"{split}_{number}_anno.bmp", instances)
    (tmp_path / "Grade.csv").write_text(
        "name, patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\n"
        "train_1, 4, benign, adenomatous\ntrain_2, 4, benign, adenomatous\n"
        "testA_1, 7, malignant, moderately differentiated\ntestB_1, 9, benign, healthy\n")
    ds = open_dataset(tmp_path)
    assert ds.info.format == "glas" and ds.splits == ["train", "testA", "testB"]
    assert ds.info.classes == ["background", "gland"] and ds.info.ignore_index is None
    train = ds.split("train").records
    assert [r.case_id for r in train] == ["4", "4"] and train[0].extra == {"grade": "benign"}
    sample = ds.load(train[0])
    assert set(np.unique(sample.instances)) == {0, 1, 2}
    assert sample.mask.tolist() == (instances > 0).astype(int).tolist() and sample.labels is None


def test_glas_without_grade_csv_warns_and_uses_names_as_cases(tmp_path):
    for split in ("train", "testA", "testB"):
        rgb(tmp_path / f"{split}_1.bmp")
        gray(tmp_path / f"{split}_1_anno.bmp", np.eye(8))
    ds = open_dataset(tmp_path, format="glas")
    assert [r.case_id for r in ds.records] == ["train_1", "testA_1", "testB_1"]
    assert len(ds.problems) == 1 and not ds.problems[0].fatal and "Grade.csv" in str(ds.problems[0].path)


def test_glas_without_test_b_opens_and_reports_the_absent_split(tmp_path):
    for split in ("train", "testA"):  # testB held back, as in ../shared/data/glas
        rgb(tmp_path / f"{split}_1.jpg")
        gray(tmp_path / f"{split}_1_anno.png", np.eye(8) * 255)
    ds = open_dataset(tmp_path, format="glas")
    assert ds.splits == ["train", "testA"]
    absent = [p for p in ds.problems if "testB" in p.message]
    assert len(absent) == 1 and not absent[0].fatal
    (tmp_path / "train_1.jpg").unlink()
    (tmp_path / "train_1_anno.png").unlink()
    with pytest.raises(DatasetError, match="train"):  # the training split stays required
        open_dataset(tmp_path, format="glas")


def test_crag_train_and_valid(tmp_path):
    instances = np.zeros((8, 8), np.uint8)
    instances[2:5, 2:5] = 3
    for split, stem in (("train", "train_1"), ("valid", "test_1")):
        rgb(tmp_path / split / "Images" / f"{stem}.png")
        gray(tmp_path / split / "Annotation" / f"{stem}.png", instances)
    ds = open_dataset(tmp_path)
    assert ds.info.format == "crag" and ds.splits == ["train", "val"]
    sample = ds.split("val")[0]
    assert sample.case_id == "test_1" and sample.mask.sum() == 9 and sample.instances.max() == 3


def make_ebhi(root: Path) -> Path:
    base = root / "EBHI-SEG"
    foreground = np.zeros((8, 8))
    foreground[:4] = 255
    foreground[4, 0] = 120  # anti-aliased edge below the threshold
    rgb(base / "Normal" / "image" / "GT2001837-1-400-001.jpg")
    gray(base / "Normal" / "label" / "GT2001837-1-400-001.png", foreground)
    rgb(base / "Polyp" / "image" / "GTxc2013512-1-400-001.png")
    gray(base / "Polyp" / "label" / "GTxc2013512-1-400-001.png", foreground)
    rgb(base / "Polyp" / "image" / "GTXC2013512-2-400-001.jpg")
    gray(base / "Polyp" / "label" / "GTXC2013512-2-400-001.png", foreground)
    rgb(base / "Polyp" / "image" / "GT2012149-2-400-001.jpg")  # no label: reported, skipped
    return root


@pytest.mark.parametrize("subfolder", ["", "EBHI-SEG"])
def test_ebhi_seg_class_masks_one_hot_labels_and_unlabelled_image(tmp_path, subfolder):
    ds = open_dataset(make_ebhi(tmp_path) / subfolder)
    assert ds.info.format == "ebhi-seg" and ds.splits == ["all"] and len(ds.records) == 3
    assert ds.info.classes[0] == "background" and len(ds.info.label_classes) == 6
    [problem] = ds.problems
    assert not problem.fatal and problem.path.name == "GT2012149-2-400-001.jpg"
    normal = next(s for s in ds.split("all") if s.path.name.startswith("GT2001837"))
    assert normal.labels.tolist() == [0, 0, 0, 1, 0, 0] and normal.case_id == "GT2001837"
    assert set(np.unique(normal.mask)) == {0, 4} and normal.mask[:4].min() == 4 and normal.mask[4, 0] == 0
    polyps = [r for r in ds.records if r.labels[4] == 1]
    assert {r.case_id for r in polyps} == {"GTXC2013512"}  # spellings of one case merged


def make_folder(root: Path) -> Path:
    rgb(root / "images" / "p01-a.png")
    rgb(root / "images" / "p01-b.jpg")
    rgb(root / "images" / "p02-a.png")
    rgb(root / "images" / "extra.png")  # not in labels.csv: unlabelled
    gray(root / "masks" / "p01-a.png", np.resize([0, 1, 255, 2], (8, 8)))
    (root / "labels.csv").write_text("image,tumor,case,stroma,necrosis,split\n"
                                     "p01-a.png,1,p01,0,0,train\np01-b,0,p01,1,0,train\np02-a.png,0,p02,0,1,val\n")
    return root


def test_folder_layout_csv_classes_cases_splits_masks(tmp_path):
    ds = open_dataset(make_folder(tmp_path))
    assert ds.info.format == "folder" and ds.info.classes == ["tumor", "stroma", "necrosis"]
    assert ds.info.ignore_index == 255 and ds.problems == []
    by_name = {r.image_path.name: r for r in ds.records}
    assert by_name["p01-b.jpg"].labels == (0, 1, 0) and by_name["p01-b.jpg"].split == "train"
    assert by_name["p02-a.png"].case_id == "p02" and by_name["p02-a.png"].split == "val"
    assert by_name["extra.png"].labels is None and by_name["extra.png"].split == "all"
    assert by_name["extra.png"].case_id == "extra"
    sample = ds.load(by_name["p01-a.png"])
    assert set(np.unique(sample.mask)) == {0, 1, 2, 255} and sample.labels.tolist() == [1, 0, 0]


def test_folder_rows_with_empty_class_cells_are_unlabelled_images_with_case_and_split(tmp_path):
    rgb(tmp_path / "images" / "t1.png")
    rgb(tmp_path / "images" / "u1.png")
    (tmp_path / "labels.csv").write_text("image,tumor,stroma,case,split\nt1.png,1,0,s1,train\n"
                                         "u1.png,,,s1,unlabelled\n")
    ds = open_dataset(tmp_path, format="folder")
    assert ds.problems == []
    u = next(r for r in ds.records if r.image_path.name == "u1.png")
    assert u.labels is None and u.case_id == "s1" and u.split == "unlabelled"
    (tmp_path / "labels.csv").write_text("image,tumor,stroma,case,split\nt1.png,1,,s1,train\nu1.png,,,s1,x\n")
    assert any("0/1" in str(p) for p in open_dataset(tmp_path, format="folder", strict=False).problems)


def test_folder_masks_only_infers_class_names(tmp_path):
    rgb(tmp_path / "images" / "a.png")
    gray(tmp_path / "masks" / "a.png", np.resize([0, 2, 255], (8, 8)))
    ds = open_dataset(tmp_path, format="folder")
    assert ds.info.classes == ["class_0", "class_1", "class_2"] and ds.info.label_classes == []
    assert ds.records[0].labels is None


@pytest.mark.parametrize("content, mpp, problems", [('{"mpp": 0.5}', 0.5, 0), ('{"mpp": [0.5, 1.0]}', None, 0),
                                                    ('{"classes": []}', None, 0), ("not json", None, 1)])
def test_folder_mpp_comes_from_its_dataset_json(tmp_path, content, mpp, problems):
    make_folder(tmp_path)
    (tmp_path / "dataset.json").write_text(content)
    ds = open_dataset(tmp_path)
    assert ds.info.mpp == mpp and len(ds.problems) == problems and not any(p.fatal for p in ds.problems)
    (tmp_path / "labels.csv").unlink()  # classes from the masks keep it too
    assert open_dataset(tmp_path, format="folder").info.mpp == mpp


def test_rgb_masks_are_mapped_through_the_palette(tmp_path):
    make_luad(tmp_path)
    colours = np.array(LUAD_PALETTE, np.uint8)[np.resize([2, 4], (8, 8))]
    Image.fromarray(colours).save(tmp_path / "val" / "mask" / "S03-000.png")
    ds = open_dataset(tmp_path)
    assert set(np.unique(ds.split("val")[0].mask)) == {2, 4}


def test_samples_load_lazily(tmp_path):
    ds = open_dataset(make_luad(tmp_path))
    (tmp_path / "test" / "img" / "S04-000.png").unlink()
    assert ds.split("val")[0].image.shape == (8, 8, 3)
    with pytest.raises(ImageReadError, match="S04-000.png"):
        ds.split("test")[0]


def test_memory_cache_returns_copies_and_respects_its_budget(tmp_path):
    ds = open_dataset(make_luad(tmp_path))
    val, test = ds.split("val").records[0], ds.split("test").records[0]
    one = ds.load(val)
    sample_bytes = one.image.nbytes + one.mask.nbytes
    ds.cache_in_memory(sample_bytes)  # room for exactly one sample
    first = ds.load(val)
    (tmp_path / "val" / "img" / "S03-000.png").unlink()
    first.image[:] = 0  # a caller writing into its copy must not change the cache
    again = ds.load(val)  # served from memory although the file is gone
    assert np.array_equal(again.image, one.image) and np.array_equal(again.mask, one.mask)
    (tmp_path / "test" / "img" / "S04-000.png").unlink()
    with pytest.raises(ImageReadError, match="S04-000.png"):  # over budget: not cached, read from disk
        ds.load(test)


# --------------------------------------------------------------------------- bad trees

def test_unparseable_and_wrong_length_labels(tmp_path):
    make_luad(tmp_path)
    bad = [rgb(tmp_path / "training" / "S05-000-[1 x 0 1].png"), rgb(tmp_path / "training" / "S05-001.png"),
           rgb(tmp_path / "training" / "S05-002-[1 0 1].png")]
    with pytest.raises(DatasetError) as info:
        open_dataset(tmp_path, format="luad-histoseg")
    assert {p.path for p in info.value.problems} == set(bad)
    text = str(info.value)
    assert "expected 4" in text and "no label vector found" in text and "not a vector of 0/1" in text
    assert text.count("rename it like") == 3
    ds = open_dataset(tmp_path, format="luad-histoseg", strict=False)
    assert len(ds.fatal_problems) == 3 and not {r.image_path for r in ds.records} & set(bad)
    assert len(ds.split("train")) == 3


def test_missing_eval_mask_is_fatal_and_orphan_mask_is_not(tmp_path):
    make_luad(tmp_path)
    (tmp_path / "val" / "mask" / "S03-000.png").rename(tmp_path / "val" / "mask" / "S99-000.png")
    ds = open_dataset(tmp_path, strict=False)
    missing, orphan = ds.problems
    assert missing.fatal and missing.path.name == "S03-000.png" and "no mask" in missing.message
    assert not orphan.fatal and orphan.path.name == "S99-000.png"
    assert "val" not in ds.splits


def test_orphan_mask_alone_does_not_raise(tmp_path):
    make_luad(tmp_path)
    index_mask(tmp_path / "test" / "mask" / "S77-000.png", [0])
    ds = open_dataset(tmp_path)
    assert [p.fatal for p in ds.problems] == [False] and len(ds.split("test")) == 1


def test_size_mismatch_palette_violation_and_corrupt_files(tmp_path):
    make_luad(tmp_path)
    index_mask(tmp_path / "val" / "mask" / "S03-000.png", [0, 1], size=10)
    index_mask(tmp_path / "test" / "mask" / "S04-000.png", [0, 7])
    garbage(tmp_path / "training" / "S01-001-[0 1 0 0].png")
    garbage(tmp_path / "training_mask" / "S01-000-[1 0 0 1].png")
    with pytest.raises(DatasetError) as info:
        open_dataset(tmp_path)
    text = str(info.value)
    assert "mask is 10x10 but its image S03-000.png is 8x8" in text
    assert "mask values [7] are outside the class indices 0..4" in text
    assert text.count("unreadable or corrupt") == 2
    assert len(info.value.problems) == 4


def test_off_palette_rgb_colour_is_reported(tmp_path):
    make_luad(tmp_path)
    colours = np.full((8, 8, 3), 255, np.uint8)
    colours[0, 0] = (1, 2, 3)
    Image.fromarray(colours).save(tmp_path / "val" / "mask" / "S03-000.png")
    with pytest.raises(DatasetError, match="colours outside the luad-histoseg palette"):
        open_dataset(tmp_path)


def test_empty_split_and_missing_eval_split(tmp_path):
    make_luad(tmp_path)
    for path in (tmp_path / "val" / "img").iterdir():
        path.unlink()
    for path in sorted((tmp_path / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "test").rmdir()
    ds = open_dataset(tmp_path, strict=False)
    by_fatal = {p.fatal: p for p in ds.problems if "orphan" not in p.message}
    assert "split 'val' has no images" in by_fatal[True].message
    assert "no test split folder" in by_fatal[False].message
    assert ds.splits == ["train"]


def test_every_problem_reported_in_one_error(tmp_path):
    make_luad(tmp_path)
    rgb(tmp_path / "training" / "S05-000-[1 0 0].png")
    rgb(tmp_path / "training" / "S05-001-[a b c d].png")
    (tmp_path / "test" / "mask" / "S04-000.png").unlink()
    garbage(tmp_path / "val" / "img" / "S03-000.png")
    index_mask(tmp_path / "training_mask" / "S01-000-[1 0 0 1].png", [9])
    with pytest.raises(DatasetError) as info:
        open_dataset(tmp_path)
    assert len(info.value.problems) == 5
    text = str(info.value)
    for fragment in ("S05-000", "S05-001", "S04-000.png: no mask", "S03-000.png: unreadable", "mask values [9]"):
        assert fragment in text


def test_folder_csv_problems(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "labels.csv").write_text("image,tumor,stroma\n"
                                         "p01-a.png,1,0\np01-b.jpg,1,2\np02-a.png,1\nmissing.png,0,1\n")
    ds = open_dataset(tmp_path, strict=False)
    text = messages(ds.fatal_problems)
    assert len(ds.fatal_problems) == 4
    assert "line 3 (p01-b.jpg)" in text and "line 4 (p02-a.png): label vector of wrong length" in text
    assert "'missing.png'" in text
    assert "mask values [2]" in text  # the mask uses index 2, but the CSV names only two classes
    assert {r.image_path.name for r in ds.records} == {"extra.png"}  # bad rows leave their images out


def test_folder_without_labels_or_masks_is_fatal(tmp_path):
    rgb(tmp_path / "images" / "a.png")
    with pytest.raises(DatasetError, match="neither labels.csv nor masks"):
        open_dataset(tmp_path, format="folder")


def test_ebhi_corrupt_label_is_fatal_but_missing_label_is_not(tmp_path):
    make_ebhi(tmp_path)
    garbage(tmp_path / "EBHI-SEG" / "Normal" / "label" / "GT2001837-1-400-001.png")
    ds = open_dataset(tmp_path, strict=False)
    assert [p.path.name for p in ds.fatal_problems] == ["GT2001837-1-400-001.png"]
    assert len(ds.problems) == 2 and len(ds.records) == 2


def test_crag_missing_annotation_folder_and_glas_missing_split(tmp_path):
    rgb(tmp_path / "crag" / "train" / "Images" / "train_1.png")
    with pytest.raises(DatasetError, match="mask folder missing for 1 images"):
        open_dataset(tmp_path / "crag", format="crag")
    rgb(tmp_path / "glas" / "train_1.bmp")
    gray(tmp_path / "glas" / "train_1_anno.bmp", np.eye(8))
    with pytest.raises(DatasetError) as info:
        open_dataset(tmp_path / "glas")
    text = messages(info.value.problems)
    assert "split 'testA' has no images" in text and "testB" not in text  # testB may be held back


def test_unknown_ambiguous_and_missing_roots(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError) as info:
        open_dataset(tmp_path / "stuff")
    assert "matches no known layout" in str(info.value) and all(f in str(info.value) for f in DATASET_FORMATS)
    make_folder(tmp_path / "both")
    (tmp_path / "both" / "Grade.csv").write_text("name,patient ID\n")
    with pytest.raises(DatasetError, match=r"several formats \(glas, folder\)"):
        detect_format(tmp_path / "both")
    with pytest.raises(DatasetError, match="folder not found"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown format 'voc'"):
        open_dataset(tmp_path / "stuff", format="voc")
