"""bmcd.data: subject ids, layout discovery, manifests, splits, balancing; `bmcd info/preprocess`."""

from __future__ import annotations

import csv
import shutil
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from bmcd.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, main
from bmcd.data import (
    TRANSFORMS,
    Dataset,
    apply_transform,
    balance_augment,
    class_weights,
    load_dataset,
    parse_subject,
    split_by_subject,
    split_dataset,
    split_given,
    split_random,
)
from bmcd.errors import BmcdError, ConfigError, DatasetError

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tiny_bmp(value: int = 120) -> bytes:
    img = np.zeros((12, 16, 3), np.uint8)
    img[3:9, 4:12] = value
    ok, buf = cv2.imencode(".bmp", img)
    assert ok
    return buf.tobytes()


def _names(subjects_by_class: dict[str, list[str]], per_subject: int) -> list[tuple[str, str]]:
    """(class, file name) pairs in the C-NMC naming scheme."""
    out = []
    for cls, subjects in subjects_by_class.items():
        for s in subjects:
            for i in range(per_subject):
                out.append((cls, f"UID_{s}_{i + 1}_1_{cls}.bmp"))
    return out


def _class_tree(root: Path, per_subject: int = 3, n_all: int = 3, n_hem: int = 3) -> Path:
    subjects = {
        "all": [str(i + 1) for i in range(n_all)],
        "hem": [f"H{i + 1}" for i in range(n_hem)],
    }
    for cls, name in _names(subjects, per_subject):
        _touch(root / cls / name)
    return root


def _dataset(n_all_subjects=6, n_hem_subjects=6, per_subject=10) -> Dataset:
    subjects = {
        "all": [str(i + 1) for i in range(n_all_subjects)],
        "hem": [f"H{i + 1}" for i in range(n_hem_subjects)],
    }
    pairs = _names(subjects, per_subject)
    return Dataset.from_arrays([f"{c}/{n}" for c, n in pairs], [c for c, _ in pairs])


# ---------------------------------------------------------------------------------------
# parse_subject
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("UID_11_10_1_all.bmp", "11"),
        ("UID_H10_43_1_hem.bmp", "H10"),
        ("UID_h3_1_1_hem.bmp", "H3"),  # the one real lowercase name
        ("UID_1_1_1_all.bmp", "1"),
        ("some/folder/UID_57_29_1_all.bmp", "57"),
        ("1.bmp", None),
        ("cell.png", None),
        ("UID_.bmp", None),
        ("UIDX_11_1_1_all.bmp", None),
        ("", None),
    ],
)
def test_parse_subject(name, expected):
    assert parse_subject(name) == expected


def test_parse_subject_accepts_paths():
    assert parse_subject(Path("/data/hem/UID_H22_5_2_hem.bmp")) == "H22"


# ---------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------


def test_from_arrays_counts_subset_and_classes():
    ds = Dataset.from_arrays(
        ["a/UID_1_1_1_all.bmp", "a/UID_1_2_1_all.bmp", "b/UID_H2_1_1_hem.bmp"], ["all", 1, "HEM"]
    )
    assert len(ds) == 3
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [1, 1, 0]
    assert ds.classes == ["hem", "all"]
    assert ds.class_counts() == {"hem": 1, "all": 2}
    assert ds.subject_counts() == {"1": {"hem": 0, "all": 2}, "H2": {"hem": 1, "all": 0}}
    sub = ds.subset([2, 0])
    assert sub.subjects == ["H2", "1"] and sub.labels.tolist() == [0, 1]
    assert len(ds.subset(np.array([False, True, False]))) == 1


def test_from_arrays_rejects_unknown_label_and_length_mismatch():
    with pytest.raises(DatasetError, match="Unknown label 'cat'"):
        Dataset.from_arrays(["x.bmp"], ["cat"])
    with pytest.raises(DatasetError, match="one label per path"):
        Dataset.from_arrays(["x.bmp", "y.bmp"], [1])


def test_fingerprint_is_stable_across_roots_and_sensitive_to_labels(tmp_path):
    a = load_dataset(_class_tree(tmp_path / "copy1"))
    b = load_dataset(_class_tree(tmp_path / "elsewhere" / "copy2"))
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64
    flipped = Dataset(a.paths, 1 - a.labels, a.subjects, root=a.root, layout=a.layout)
    assert flipped.fingerprint() != a.fingerprint()
    assert a.subset(range(len(a) - 1)).fingerprint() != a.fingerprint()


def test_summary_mentions_layout_counts_and_subjects(tmp_path):
    ds = load_dataset(_class_tree(tmp_path, per_subject=2, n_all=2, n_hem=1))
    text = ds.summary(per_subject=True)
    assert "class_folders" in text and "all: 4, hem: 2" in text
    assert "subjects:    3" in text and "H1" in text and ds.fingerprint() in text


# ---------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------


def test_layout_a_class_folders_recursive(tmp_path):
    _class_tree(tmp_path, per_subject=2)
    _touch(tmp_path / "all" / "nested" / "deeper" / "UID_9_1_1_all.png")
    _touch(tmp_path / "hem" / "notes.txt")  # not an image: ignored
    _touch(tmp_path / "hem" / ".hidden.bmp")  # hidden: ignored
    ds = load_dataset(tmp_path)
    assert ds.layout == "class_folders"
    assert ds.class_counts() == {"hem": 6, "all": 7}
    assert "9" in ds.subjects
    assert ds.root == tmp_path.resolve() or ds.root == tmp_path
    assert all(Path(p).is_absolute() and Path(p).exists() for p in ds.paths)
    assert ds.given_split is None


def test_layout_a_case_insensitive_class_names(tmp_path):
    _touch(tmp_path / "ALL" / "UID_1_1_1_all.bmp")
    _touch(tmp_path / "Hem" / "UID_H1_1_1_hem.bmp")
    assert load_dataset(tmp_path).class_counts() == {"hem": 1, "all": 1}


@pytest.mark.parametrize("level", ["top", "cnmc", "training_data"])
def test_layout_b_kaggle_folds(tmp_path, level):
    td = tmp_path / "C-NMC_Leukemia" / "training_data"
    for fold, subj in enumerate(["1", "2", "3"]):
        _touch(td / f"fold_{fold}" / "all" / f"UID_{subj}_1_1_all.bmp")
        _touch(td / f"fold_{fold}" / "hem" / f"UID_H{subj}_1_1_hem.bmp")
        _touch(td / f"fold_{fold}" / "hem" / f"UID_H{subj}_2_1_hem.bmp")
    source = {"top": tmp_path, "cnmc": tmp_path / "C-NMC_Leukemia", "training_data": td}[level]
    ds = load_dataset(source)
    assert ds.layout == "kaggle_folds"
    assert ds.class_counts() == {"hem": 6, "all": 3}
    assert Path(ds.root).name == "training_data"
    assert ds.relative_paths()[0].startswith("fold_0/")


def test_layout_b_same_fingerprint_from_any_level(tmp_path):
    td = tmp_path / "C-NMC_Leukemia" / "training_data"
    _touch(td / "fold_0" / "all" / "UID_1_1_1_all.bmp")
    _touch(td / "fold_0" / "hem" / "UID_H1_1_1_hem.bmp")
    assert load_dataset(tmp_path).fingerprint() == load_dataset(td).fingerprint()


def test_layout_c_split_folders(tmp_path):
    for split, subj in [("training_set", "1"), ("validation_set", "2"), ("test_set", "3")]:
        _touch(tmp_path / split / "all" / f"UID_{subj}_1_1_all.bmp")
        _touch(tmp_path / split / "hem" / f"UID_H{subj}_1_1_hem.bmp")
        _touch(tmp_path / split / "hem" / f"UID_H{subj}_2_1_hem.bmp")
    ds = load_dataset(tmp_path)
    assert ds.layout == "split_folders"
    assert sorted(set(ds.given_split)) == ["test", "train", "val"]
    split = split_given(ds)
    assert split.method == "given"
    assert (len(split.train), len(split.val), len(split.test)) == (3, 3, 3)
    assert split.train.subject_list() == ["1", "H1"]
    assert split.test.subject_list() == ["3", "H3"]
    assert "given split" in ds.summary()


def test_split_given_requires_a_given_split(tmp_path):
    with pytest.raises(DatasetError, match="no given split"):
        split_given(load_dataset(_class_tree(tmp_path)))


def test_layout_d_manifest(tmp_path):
    _touch(tmp_path / "imgs" / "a.bmp")
    _touch(tmp_path / "imgs" / "b.bmp")
    _touch(tmp_path / "imgs" / "UID_H7_1_1_hem.bmp")
    (tmp_path / "list.csv").write_text(
        "path,label,subject\nimgs/a.bmp,all,P1\nimgs/b.bmp,0,P2\nimgs/UID_H7_1_1_hem.bmp,HEM,\n"
    )
    ds = load_dataset(tmp_path / "list.csv")
    assert ds.layout == "manifest"
    assert ds.labels.tolist() == [1, 0, 0]
    assert ds.subjects == ["P1", "P2", None]  # an empty subject cell is unknown
    assert ds.relative_paths() == ["imgs/a.bmp", "imgs/b.bmp", "imgs/UID_H7_1_1_hem.bmp"]


def test_layout_d_manifest_without_subject_column_parses_names(tmp_path):
    _touch(tmp_path / "UID_4_1_1_all.bmp")
    (tmp_path / "m.csv").write_text("file,class\nUID_4_1_1_all.bmp,1\n")
    assert load_dataset(tmp_path / "m.csv").subjects == ["4"]


def test_folder_with_single_manifest_is_loaded(tmp_path):
    _touch(tmp_path / "x.bmp")
    (tmp_path / "labels.csv").write_text("path,label\nx.bmp,all\n")
    assert load_dataset(tmp_path).layout == "manifest"


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------


def test_error_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope")


def test_error_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="No dataset layout recognised.*no subfolders"):
        load_dataset(tmp_path)


def test_error_empty_class_folders(tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "hem").mkdir()
    with pytest.raises(DatasetError, match="hold no images"):
        load_dataset(tmp_path)


def test_error_unknown_class_folders(tmp_path):
    _touch(tmp_path / "cats" / "a.bmp")
    _touch(tmp_path / "dogs" / "b.bmp")
    with pytest.raises(DatasetError, match=r"found subfolders cats, dogs.*Expected class folders"):
        load_dataset(tmp_path)


def test_error_unknown_folder_beside_class_folders(tmp_path):
    _class_tree(tmp_path)
    _touch(tmp_path / "unsure" / "c.bmp")
    with pytest.raises(DatasetError, match=r"Unknown class folder\(s\) \['unsure'\]"):
        load_dataset(tmp_path)


def test_error_manifest_unknown_labels(tmp_path):
    _touch(tmp_path / "a.bmp")
    _touch(tmp_path / "b.bmp")
    (tmp_path / "m.csv").write_text("path,label\na.bmp,all\nb.bmp,blast\n")
    with pytest.raises(DatasetError, match=r"unknown labels \['blast'\] \(line 3\)"):
        load_dataset(tmp_path / "m.csv")


def test_error_manifest_missing_files_lists_some_and_counts(tmp_path):
    rows = "\n".join(f"missing_{i}.bmp,all" for i in range(9))
    (tmp_path / "m.csv").write_text("path,label\n" + rows + "\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "m.csv")
    msg = str(info.value)
    assert "9 of 9 listed file(s) not found" in msg
    assert "missing_0.bmp" in msg and "(4 more)" in msg


def test_error_manifest_without_usable_columns(tmp_path):
    (tmp_path / "m.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match=r"has columns \['a', 'b'\]; expected a path column"):
        load_dataset(tmp_path / "m.csv")


def test_error_not_a_manifest(tmp_path):
    _touch(tmp_path / "x.bmp")
    with pytest.raises(DatasetError, match="not a CSV manifest"):
        load_dataset(tmp_path / "x.bmp")


# ---------------------------------------------------------------------------------------
# real C-NMC names
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_kaggle_tree(shared_data_dir, tmp_path_factory) -> Path:
    """Empty files named after the 10,661 real training images, in the Kaggle layout."""
    tsv = shared_data_dir / "cnmc-training-names.tsv"
    if not tsv.is_file():
        pytest.skip(f"{tsv} not found")
    root = tmp_path_factory.mktemp("kaggle")
    with open(tsv, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for d in {str(Path(r["path"]).parent) for r in rows}:
        (root / d).mkdir(parents=True, exist_ok=True)
    for r in rows:
        (root / r["path"]).touch()
    return root


def test_real_names_kaggle_layout(real_kaggle_tree):
    start = time.perf_counter()
    ds = load_dataset(real_kaggle_tree)
    elapsed = time.perf_counter() - start
    assert ds.layout == "kaggle_folds"
    assert len(ds) == 10_661
    assert ds.class_counts() == {"hem": 3_389, "all": 7_272}
    assert len(ds.subject_list()) == 73
    assert None not in ds.subjects
    assert "H3" in ds.subject_list()  # from the lowercase UID_h3_ names
    # each real subject is all-leukemic or all-normal
    assert all(min(c.values()) == 0 for c in ds.subject_counts().values())
    assert elapsed < 2.0, f"load_dataset took {elapsed:.2f} s for 10,661 files"

    split = split_by_subject(ds, val=0.2, test=0.2, seed=0)
    assert split.shared_subjects() == []
    sets = [set(p.subjects) for p in (split.train, split.val, split.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(split.train) + len(split.val) + len(split.test) == len(ds)
    for part, frac in ((split.test, 0.2), (split.val, 0.2)):
        assert abs(len(part) / len(ds) - frac) < 0.07
        assert abs(part.labels.mean() - ds.labels.mean()) < 0.1


def test_real_prelim_test_manifest(shared_data_dir, tmp_path):
    src = shared_data_dir / "cnmc-prelim-test-labels.csv"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    manifest = tmp_path / "C-NMC_test_prelim_phase_data_labels.csv"
    shutil.copy(src, manifest)
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        (tmp_path / r["new_names"]).touch()
    ds = load_dataset(manifest)
    assert ds.layout == "cnmc_prelim_manifest"
    assert len(ds) == 1_867
    assert ds.labels.tolist() == [int(r["labels"]) for r in rows]
    assert ds.subjects == [parse_subject(r["Patient_ID"]) for r in rows]
    assert ds.subjects[:4] == ["57", "57", "57", "H49"]
    assert [Path(p).name for p in ds.paths[:3]] == ["1.bmp", "2.bmp", "3.bmp"]


def test_prelim_manifest_with_image_subfolder(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "Patient_ID,new_names,labels\nUID_57_29_1_all.bmp,1.bmp,1\nUID_H49_35_1_hem.bmp,2.bmp,0\n"
    )
    _touch(tmp_path / "C-NMC_test_prelim_phase_data" / "1.bmp")
    _touch(tmp_path / "C-NMC_test_prelim_phase_data" / "2.bmp")
    ds = load_dataset(tmp_path)  # the folder beside the csv works too
    assert ds.layout == "cnmc_prelim_manifest"
    assert ds.subjects == ["57", "H49"] and ds.labels.tolist() == [1, 0]


# ---------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------


def test_split_by_subject_is_deterministic_and_disjoint():
    ds = _dataset()
    a, b = split_by_subject(ds, seed=3), split_by_subject(ds, seed=3)
    assert a.to_dict() == b.to_dict()
    assert a.shared_subjects() == []
    assert len(a.train) + len(a.val) + len(a.test) == len(ds)
    others = [split_by_subject(ds, seed=s).to_dict()["test"]["subjects"] for s in range(8)]
    assert len({tuple(o) for o in others}) > 1  # the seed matters


def test_split_by_subject_keeps_class_ratio_and_fractions():
    ds = _dataset(n_all_subjects=10, n_hem_subjects=5, per_subject=20)
    split = split_by_subject(ds, val=0.2, test=0.2, seed=0)
    for part in (split.train, split.val, split.test):
        cc = part.class_counts()
        assert cc["all"] > 0 and cc["hem"] > 0
        assert abs(part.labels.mean() - ds.labels.mean()) < 0.1
    assert split.test.class_counts() == {"hem": 20, "all": 40}
    d = split.to_dict()
    assert d["method"] == "subject" and d["seed"] == 0
    assert d["fractions"] == {"val": 0.2, "test": 0.2}
    assert d["train"]["n"] == len(split.train) and d["shared_subjects"] == []


def test_split_by_subject_val_zero():
    split = split_by_subject(_dataset(n_all_subjects=2, n_hem_subjects=2), val=0.0, test=0.5)
    assert len(split.val) == 0
    assert split.train.subject_list() and split.test.subject_list()


def test_split_by_subject_too_few_subjects():
    with pytest.raises(DatasetError, match=r"at least 3 subjects of each class.*'hem' has 2"):
        split_by_subject(_dataset(n_all_subjects=5, n_hem_subjects=2))


def test_split_by_subject_needs_subjects():
    ds = Dataset.from_arrays(["a.bmp", "UID_H1_1_1_hem.bmp"], [1, 0])
    with pytest.raises(DatasetError, match="a.bmp.*Name the files the C-NMC way"):
        split_by_subject(ds)


@pytest.mark.parametrize("val, test", [(-0.1, 0.2), (0.5, 0.5), (0.2, 1.0)])
def test_split_fraction_validation(val, test):
    with pytest.raises(DatasetError):
        split_by_subject(_dataset(), val=val, test=test)


def test_split_dataset_dispatches_by_name():
    ds = _dataset()
    assert split_dataset(ds, "subject", val=0.2, test=0.2, seed=3).to_dict() == (
        split_by_subject(ds, val=0.2, test=0.2, seed=3).to_dict())
    with pytest.warns(UserWarning, match="leakage"):
        assert split_dataset(ds, "random", seed=1).method == "random"
    with pytest.raises(DatasetError, match="no given split"):
        split_dataset(ds, "given")
    with pytest.raises(ConfigError, match=r"one of \['subject', 'random', 'given'\]"):
        split_dataset(ds, "by_slide")


def test_split_random_warns_about_leakage():
    ds = _dataset()
    with pytest.warns(UserWarning, match=r"leakage") as rec:
        split = split_random(ds, seed=0)
    assert f"{len(split.shared_subjects())} of 12 subjects" in str(rec[0].message)
    assert split.shared_subjects()  # it does leak
    assert split.test.class_counts() == {"hem": 12, "all": 12}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert split_random(ds, seed=0).to_dict() == split.to_dict()


# ---------------------------------------------------------------------------------------
# balancing
# ---------------------------------------------------------------------------------------


def test_balance_augment_equalises_and_is_deterministic():
    labels = np.array([1] * 30 + [0] * 7)
    idx, tfs = balance_augment(labels, seed=0)
    assert len(idx) == len(tfs) == 60
    assert np.bincount(labels[idx]).tolist() == [30, 30]
    assert tfs.count("none") == 37  # every original kept once
    assert set(tfs) <= {"none", *TRANSFORMS}
    copies = [(i, t) for i, t in zip(idx, tfs, strict=True) if t != "none"]
    assert all(labels[i] == 0 for i, _ in copies)
    assert len(set(copies)) == len(copies)  # no identical copy while transforms remain
    again = balance_augment(labels, seed=0)
    assert np.array_equal(again[0], idx) and again[1] == tfs
    assert balance_augment(labels, seed=1)[1] != tfs


def test_balance_augment_max_per_class_subsamples_both():
    labels = np.array([1] * 50 + [0] * 20)
    idx, tfs = balance_augment(labels, seed=0, max_per_class=10)
    assert np.bincount(labels[idx]).tolist() == [10, 10]
    assert tfs == ["none"] * 20 and len(set(idx.tolist())) == 20
    idx, tfs = balance_augment(labels, seed=0, max_per_class=30)
    assert np.bincount(labels[idx]).tolist() == [30, 30] and tfs.count("none") == 50


def test_balance_augment_needs_both_classes():
    with pytest.raises(DatasetError, match="no 'hem' images"):
        balance_augment([1, 1, 1])


def test_apply_transform_on_a_visible_array():
    a = np.array([[1, 2], [3, 4]])
    assert apply_transform(a, "none").tolist() == [[1, 2], [3, 4]]
    assert apply_transform(a, "flip_h").tolist() == [[2, 1], [4, 3]]
    assert apply_transform(a, "flip_v").tolist() == [[3, 4], [1, 2]]
    assert apply_transform(a, "rot90").tolist() == [[2, 4], [1, 3]]
    assert apply_transform(a, "rot180").tolist() == [[4, 3], [2, 1]]
    assert apply_transform(a, "rot270").tolist() == [[3, 1], [4, 2]]
    rgb = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    out = apply_transform(rgb, "rot90")
    assert out.shape == (3, 2, 3) and out.flags.c_contiguous
    assert out[0, 0].tolist() == rgb[0, 2].tolist()  # channels travel with their pixel
    with pytest.raises(ValueError, match="Unknown transform 'shear'"):
        apply_transform(a, "shear")


def test_class_weights():
    w = class_weights([1, 1, 1, 0])
    assert w == {0: 2.0, 1: pytest.approx(4 / 6)}
    assert class_weights(np.array([0, 1])) == {0: 1.0, 1: 1.0}


# ---------------------------------------------------------------------------------------
# CLI: info, preprocess
# ---------------------------------------------------------------------------------------


def test_cli_info(tmp_path, capsys):
    _class_tree(tmp_path, per_subject=2)
    assert main(["info", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "layout:      class_folders" in out
    assert "images:      12 (all: 6, hem: 6)" in out
    assert "fingerprint:" in out and "H3" in out


def test_cli_info_error_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("bmcd info: error: No dataset layout recognised")
    assert "\n" not in err


def test_cli_preprocess_writes_pngs_and_reports_bad_files(tmp_path, capsys):
    src = tmp_path / "in"
    _touch(src / "all" / "UID_1_1_1_all.bmp", _tiny_bmp(200))
    _touch(src / "hem" / "sub" / "UID_H1_1_1_hem.bmp", _tiny_bmp(90))
    _touch(src / "hem" / "UID_H1_2_1_hem.bmp", b"not an image")
    out = tmp_path / "out"
    rc = main(["preprocess", str(src), str(out), "--image-size", "20", "--workers", "2"])
    assert rc == EXIT_PARTIAL
    captured = capsys.readouterr()
    assert "UID_H1_2_1_hem.bmp" in captured.err and "Wrote 2 of 3" in captured.out
    good = out / "all" / "UID_1_1_1_all.png"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "all/UID_1_1_1_all.png",
        "hem/sub/UID_H1_1_1_hem.png",
    ]
    img = cv2.imread(str(good))
    assert img.shape == (20, 20, 3)
    # the 8x6 cell is cropped, padded to a square (black bands top/bottom) and resized
    assert img[10, 10].tolist() == [200, 200, 200]
    assert img[0, 10].tolist() == [0, 0, 0]
    # the output is itself a loadable dataset
    assert load_dataset(out).class_counts() == {"hem": 1, "all": 1}


def test_cli_preprocess_all_good_and_manifest(tmp_path, capsys):
    _touch(tmp_path / "a.bmp", _tiny_bmp())
    (tmp_path / "m.csv").write_text("path,label\na.bmp,all\n")
    out = tmp_path / "out"
    assert main(["preprocess", str(tmp_path / "m.csv"), str(out), "--image-size", "16"]) == 0
    ds = load_dataset(out / "manifest.csv")
    assert ds.labels.tolist() == [1] and Path(ds.paths[0]).name == "a.png"


def test_cli_preprocess_bad_arguments(tmp_path, capsys):
    _touch(tmp_path / "in" / "a.bmp", _tiny_bmp())
    assert main(["preprocess", str(tmp_path / "in"), str(tmp_path / "o"),
                 "--image-size", "2"]) == EXIT_ERROR
    assert main(["preprocess", str(tmp_path / "none"), str(tmp_path / "o")]) == EXIT_ERROR
    (tmp_path / "empty").mkdir()
    assert main(["preprocess", str(tmp_path / "empty"), str(tmp_path / "o")]) == EXIT_ERROR
    assert "No images found" in capsys.readouterr().err


def test_errors_are_bmcd_errors():
    assert issubclass(DatasetError, BmcdError) and issubclass(DatasetError, ValueError)


def test_deliberate_errors_are_bmcd_errors_with_their_builtin(tmp_path):
    from bmcd.artifact import new_model_json, write_model_json
    from bmcd.data import parse_label
    from bmcd.errors import ConfigError, ConfigTypeError
    from bmcd.preprocessing import PreprocessConfig

    with pytest.raises(DatasetError, match="unknown label 'blast'"):
        parse_label("blast")
    with pytest.raises(DatasetError):
        parse_label(True)
    with pytest.raises(ConfigError, match="Unknown transform"):
        apply_transform(np.zeros((2, 2)), "shear")
    meta = new_model_json(arch="mobilenet_v2", preprocess=PreprocessConfig(image_size=32))
    meta["training"]["odd"] = object()
    with pytest.raises(ConfigTypeError, match="not JSON serializable") as info:
        write_model_json(tmp_path, meta)
    assert isinstance(info.value, TypeError) and isinstance(info.value, BmcdError)
