"""The lesion-wise split: whole lesions, a margin between sides, and no test lesion left in the training image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from difftumor.cli.main import main as cli
from difftumor.data.volumes import load_volume
from tests.helpers.volumes import LITS_CT, LITS_LABEL


@pytest.mark.slow
def test_split_keeps_sides_apart_and_removes_test_lesions_from_training(tmp_path, capsys):
    out = tmp_path / "split"
    assert cli(["data", "split-lesions", str(LITS_CT), str(LITS_LABEL), "--out", str(out)]) == 0
    summary = json.loads((out / "split.json").read_text())
    assert summary["lesions"]["train"] >= 20 and summary["lesions"]["test"] >= 20
    ct, label = load_volume(LITS_CT), np.rint(load_volume(LITS_LABEL).array)
    train_ct, train_label = load_volume(out / "train_ct.nii.gz"), load_volume(out / "train_label.nii.gz").array
    test_label = load_volume(out / "test_label.nii.gz").array
    spacing = ct.spacing
    train, test = train_label == 2, test_label == 2
    assert train.any() and test.any() and not (train & test).any()
    # every training lesion is at least 10 mm from every test lesion
    assert ndimage.distance_transform_edt(~test, sampling=spacing)[train].min() >= 10.0
    # every original lesion voxel is a training tumour, a test tumour or (dropped) ignored in the test label
    assert np.all(train | test | (test_label == 255) | (label != 2))
    # the training image holds none of the test lesions' voxels (replaced by parenchyma)
    replaced = train_ct.array[test].astype(float)
    assert np.mean(replaced == ct.array[test]) < 0.05  # equal only by chance
    core_mean = summary["organ_core_hu"][0]
    assert abs(replaced.mean() - core_mean) < 5 and ct.array[test].mean() < core_mean - 20  # lesion -> parenchyma
    assert np.array_equal(train_ct.array[~test & (label == 0)], ct.array[~test & (label == 0)])
    assert np.allclose(train_ct.affine, ct.affine)
    # the healthy image: no lesion voxel of either side left, the rest of the training image unchanged
    healthy = load_volume(out / "healthy_ct.nii.gz").array.astype(float)
    assert set(np.unique(load_volume(out / "healthy_label.nii.gz").array)) == {0, 1}
    assert abs(healthy[label == 2].mean() - core_mean) < 5
    untouched = (label == 0) | ~ndimage.binary_dilation(label == 2, iterations=3)
    assert np.array_equal(healthy[untouched & ~test], train_ct.array[untouched & ~test].astype(float))
