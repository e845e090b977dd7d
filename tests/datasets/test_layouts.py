"""`difftumor data prepare`: every layout on small synthetic folder trees, plus the real files kept in tests/data."""

from __future__ import annotations

import json
import math
import os

import nibabel as nib
import numpy as np
import pytest

from difftumor.cli.main import main as cli
from difftumor.data.layouts import split_by_diameter
from tests.helpers.volumes import LITS_CT, LITS_LABEL, PATIENT_A_CT, PATIENT_A_ORGANS

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def _label_volume(organ_value=1, tumour_value=2, extra=None):
    label = np.zeros((20, 20, 20), np.uint8)
    label[4:16, 4:16, 4:16] = organ_value
    label[6:9, 6:9, 6:9] = tumour_value  # 27 voxels of 8 mm³: 7.4 mm equivalent diameter
    if extra is not None:
        label[11:15, 11:15, 11:15] = extra
    return label


def _ct():
    return np.full((20, 20, 20), 50, np.int16)


def _prepare(layout, root, tmp_path, *extra):
    out = tmp_path / "out" / f"{layout}.json"
    out.parent.mkdir(exist_ok=True)
    assert cli(["data", "prepare", layout, str(root), "--out", str(out), *extra]) == 0
    datalist = json.loads(out.read_text())
    labels = {case["id"]: np.asanyarray(nib.load(str(out.parent / case["label"])).dataobj) for case in datalist["data"]}
    return datalist, labels


def test_msd(tmp_path):
    root = tmp_path / "Task07_Pancreas"
    (root).mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"name": "Pancreas", "labels": {"0": "background", "1": "pancreas", "2": "cancer"}})
    )
    _save(root / "imagesTr" / "pancreas_001.nii.gz", _ct())
    _save(root / "labelsTr" / "pancreas_001.nii.gz", _label_volume())
    _save(root / "imagesTr" / "pancreas_002.nii.gz", _ct())
    _save(root / "labelsTr" / "pancreas_002.nii.gz", _label_volume(tumour_value=1))
    datalist, labels = _prepare("msd", root, tmp_path)
    assert datalist["organ"] == "pancreas" and [c["has_tumor"] for c in datalist["data"]] == [True, False]
    assert set(np.unique(labels["pancreas_001"])) == {0, 1, 2}


def test_lits_and_the_early_split(tmp_path):
    root = tmp_path / "lits"
    _save(root / "batch1" / "volume-3.nii", _ct())
    _save(root / "batch1" / "segmentation-3.nii", _label_volume(extra=2))  # a 7.4 mm and a 9.9 mm tumour
    datalist, labels = _prepare("lits", root, tmp_path, "--early-max-diameter-mm", "8")
    case = datalist["data"][0]
    assert case["id"] == "lits_003" and case["early_tumors"] == 1 and case["midlate_tumors"] == 1
    assert set(np.unique(labels["lits_003"])) == {0, 1, 2, 3}
    assert "early liver tumour" in datalist["label_scheme"]["2"]


@pytest.mark.parametrize("edition", ["kits19", "kits21", "kits23"])
def test_kits_cysts_count_as_kidney(tmp_path, edition):
    root = tmp_path / edition
    name = "aggregated_MAJ_seg.nii.gz" if edition == "kits21" else "segmentation.nii.gz"
    _save(root / "case_00000" / "imaging.nii.gz", _ct())
    _save(root / "case_00000" / name, _label_volume(extra=3))
    datalist, labels = _prepare("kits", root, tmp_path)
    assert datalist["organ"] == "kidney"
    label = labels["case_00000"]
    assert label[12, 12, 12] == 1 and label[7, 7, 7] == 2  # cyst -> kidney, tumour -> tumour


@pytest.mark.parametrize("layout", ["abdomenatlas", "totalsegmentator"])
def test_per_structure_folders(tmp_path, layout):
    root = tmp_path / layout
    case = root / "BDMAP_00000001"
    _save(case / "ct.nii.gz", _ct())
    left = np.zeros((20, 20, 20), np.uint8)
    left[2:8, 2:8, 2:8] = 1
    right = np.zeros((20, 20, 20), np.uint8)
    right[12:18, 12:18, 12:18] = 1
    tumour = np.zeros((20, 20, 20), np.uint8)
    tumour[13:15, 13:15, 13:15] = 1
    _save(case / "segmentations" / "kidney_left.nii.gz", left)
    _save(case / "segmentations" / "kidney_right.nii.gz", right)
    _save(case / "segmentations" / "kidney_tumor.nii.gz", tumour)
    _save(case / "segmentations" / "liver.nii.gz", np.zeros((20, 20, 20), np.uint8))
    datalist, labels = _prepare(layout, root, tmp_path, "--organ", "kidney")
    label = labels["BDMAP_00000001"]
    assert (label == 1).sum() == 2 * 216 - 8 and (label == 2).sum() == 8
    assert datalist["data"][0]["has_tumor"]


def test_folders_layout_with_the_real_files(tmp_path, data_dir):
    root = tmp_path / "real"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    os.symlink(LITS_CT, root / "images" / "lits117_upper.nii.gz")
    os.symlink(LITS_LABEL, root / "labels" / "lits117_upper.nii.gz")
    datalist, labels = _prepare("folders", root, tmp_path, "--organ", "liver", "--early-max-diameter-mm", "20")
    case = datalist["data"][0]
    # 57 components in the source, 8 of them under 8 voxels (kept as liver); the rest split at 20 mm.
    assert case["early_tumors"] + case["midlate_tumors"] == 49 and case["midlate_tumors"] >= 1
    label = labels["lits117_upper"]
    original = np.asanyarray(nib.load(str(LITS_LABEL)).dataobj)
    assert np.array_equal(label > 0, original > 0) and np.array_equal(label >= 2, (original == 2) & (label >= 2))


def test_totalsegmentator_multilabel_file_with_the_real_patient(tmp_path, data_dir):
    root = tmp_path / "ts"
    (root / "patient_a").mkdir(parents=True)
    os.symlink(PATIENT_A_CT, root / "patient_a" / "ct.nii.gz")
    os.symlink(PATIENT_A_ORGANS, root / "patient_a" / "seg.nii.gz")
    datalist, labels = _prepare("totalsegmentator", root, tmp_path, "--organ", "liver")
    organs = np.asanyarray(nib.load(str(PATIENT_A_ORGANS)).dataobj)
    assert np.array_equal(labels["patient_a"] == 1, organs == 5) and not datalist["data"][0]["has_tumor"]
    assert datalist["data"][0]["image"] == str(root / "patient_a" / "ct.nii.gz")


def test_split_rule_uses_the_header_spacing():
    label = np.zeros((30, 30, 30), np.uint8)
    label[2:5, 2:5, 2:5] = 2  # 27 voxels
    label[10:11, 10:11, 10:17] = 2  # 7 voxels: too small, becomes organ
    early, midlate = split_by_diameter(label.copy(), np.array([1.0, 1.0, 1.0]), 20.0)
    assert (early, midlate) == (1, 0)
    relabelled = label.copy()
    # At 5 mm voxels the 27-voxel component is 3375 mm³ = 18.6 mm; at 6 mm it is 22.3 mm.
    assert split_by_diameter(relabelled, np.array([6.0, 6.0, 6.0]), 20.0) == (0, 1)
    assert relabelled[3, 3, 3] == 3 and relabelled[10, 10, 12] == 1
    assert 2 * (3 * 27 * 216 / (4 * math.pi)) ** (1 / 3) > 20


def test_bad_prepare_calls(tmp_path, capsys):
    root, out = tmp_path / "dataset", str(tmp_path / "x.json")
    root.mkdir()
    for args, message in (
        (["data", "prepare", "nnunet", str(root), "--out", out], "unknown layout"),
        (["data", "prepare", "msd", str(tmp_path / "none"), "--out", out], "does not exist"),
        (["data", "prepare", "msd", str(root), "--out", out], "not an MSD task folder"),
        (["data", "prepare", "abdomenatlas", str(root), "--out", out], "--organ"),
        (["data", "prepare", "kits", str(root), "--out", out], "no cases found"),
        (["data", "prepare", "kits", str(root), "--out", str(root / "x.json")], "lies inside the input"),
    ):
        assert cli(args) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # no datalist, no empty labels folder
