"""Metrics that a useless prediction cannot max out, checked on volumes with known answers.

NSD is checked against DeepMind's surface-distance library (the definition the original's evaluation uses).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import surface_distance
from scipy import ndimage

from difftumor.cli.main import main as cli
from difftumor.evaluation import evaluate_case, match_lesions, summarize
from difftumor.evaluation.metrics import surface_dice, wilson_interval
from tests.conftest import DATA

ONE_MM = np.array([1.0, 1.0, 1.0])


def _sphere(shape, centre, radius):
    grid = np.indices(shape)
    return ((grid - np.asarray(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


def _deepmind_nsd(prediction, truth, spacing, tolerance):
    distances = surface_distance.compute_surface_distances(truth, prediction, tuple(float(s) for s in spacing))
    return surface_distance.compute_surface_dice_at_tolerance(distances, tolerance)


@pytest.fixture(scope="module")
def liver_with_lesions():
    """Three separate spherical lesions inside a large 'organ' box: (organ, lesions)."""
    shape = (80, 80, 60)
    organ = np.zeros(shape, bool)
    organ[5:75, 5:75, 5:55] = True
    lesions = _sphere(shape, (20, 20, 20), 5) | _sphere(shape, (50, 30, 30), 7) | _sphere(shape, (30, 60, 40), 4)
    return organ, lesions


def test_whole_organ_prediction_detects_at_most_one_lesion_and_is_one_false_positive(liver_with_lesions):
    organ, lesions = liver_with_lesions
    match = match_lesions(organ, lesions, ONE_MM)
    assert sum(match.detected) == 0  # ≤ 1 of N in general: only a lesion filling half the organ could match
    assert match.false_positives == 1 and match.predicted_lesions == 1


def test_one_voxel_per_lesion_detects_nothing(liver_with_lesions):
    _, lesions = liver_with_lesions
    components, count = ndimage.label(lesions)
    dots = np.zeros_like(lesions)
    for centre in ndimage.center_of_mass(lesions, components, range(1, count + 1)):
        dots[tuple(int(round(c)) for c in centre)] = True
    match = match_lesions(dots, lesions, ONE_MM)
    assert sum(match.detected) == 0 and match.false_positives == count == 3


def test_two_lesions_merged_by_one_prediction_count_once():
    shape = (60, 40, 40)
    truth = _sphere(shape, (20, 20, 20), 6) | _sphere(shape, (35, 20, 20), 6)
    merged = ndimage.binary_closing(truth, iterations=4) | truth  # one component covering both
    assert ndimage.label(merged)[1] == 1
    match = match_lesions(merged, truth, ONE_MM, iou_threshold=0.3)
    assert sum(match.detected) == 1 and match.false_positives == 0  # one-to-one: the second lesion is missed


def test_a_split_lesion_is_one_detection_and_one_false_positive():
    truth = _sphere((40, 40, 40), (20, 20, 20), 8)
    halves = truth.copy()
    halves[19:21] = False  # two pieces
    match = match_lesions(halves, truth, ONE_MM, iou_threshold=0.3)
    assert match.detected == [True] and match.false_positives == 1


@pytest.mark.parametrize(("change", "expected_detected"), [("dilate2", True), ("shift2", True), ("shift6", False)])
def test_dilation_and_shift_of_a_sphere(change, expected_detected):
    truth = _sphere((48, 48, 48), (24, 24, 24), 9)
    if change == "dilate2":
        prediction = ndimage.binary_dilation(truth, iterations=2)
    else:
        prediction = np.roll(truth, int(change[-1]), axis=0)
    match = match_lesions(prediction, truth, ONE_MM)
    assert match.detected == [expected_detected]
    for spacing in (ONE_MM, np.array([0.8, 0.8, 1.5])):
        ours = surface_dice(prediction, truth, spacing, 2.0)
        assert ours == pytest.approx(_deepmind_nsd(prediction, truth, spacing, 2.0), abs=0.02), (change, spacing)


def test_wilson_interval_reference_values():
    # Newcombe (1998), Table I: 0/10 -> [0, 0.2775]; 1/29 -> [0.0061, 0.1718]; 81/263 -> [0.2553, 0.3662]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_global_dice_and_bootstrap_intervals():
    shape = (30, 30, 30)
    cases = []
    for shift in (0, 1, 2, 3):
        truth = np.zeros(shape, np.uint8)
        truth[5:25, 5:25, 5:25] = 1
        truth[_sphere(shape, (15, 15, 15), 5)] = 2
        prediction = truth.copy()
        prediction[prediction == 2] = 1
        prediction[np.roll(_sphere(shape, (15, 15, 15), 5), shift, axis=0)] = 2
        cases.append(evaluate_case(prediction, truth, ONE_MM))
    summary = summarize(cases)
    overlap = sum(c["tumor_overlap_voxels"] for c in cases)
    sizes = sum(c["tumor_predicted_voxels"] + c["tumor_true_voxels"] for c in cases)
    assert summary["tumor_dsc_global"] == pytest.approx(2 * overlap / sizes)
    low, high = summary["tumor_dsc_mean_ci95"]
    assert low <= summary["tumor_dsc_mean"] <= high and high - low > 0
    assert summary["lesion_sensitivity_ci95"]["all"][1] <= 1.0


def test_evaluate_on_lits_whole_liver_and_one_voxel_predictions(tmp_path, capsys):
    """The issue's check on real annotated lesions: LiTS volume 117, upper half."""
    label_image = nib.load(str(DATA / "lits117_upper" / "lits117_upper_label.nii.gz"))
    truth = np.asanyarray(label_image.dataobj).astype(np.uint8)
    components, count = ndimage.label(truth == 2, structure=np.ones((3, 3, 3)))
    whole = np.where(truth > 0, 2, 0).astype(np.uint8)  # the whole liver called tumour
    dots = np.where(truth > 0, 1, 0).astype(np.uint8)
    for centre in ndimage.center_of_mass(truth == 2, components, range(1, count + 1)):
        index = tuple(int(round(c)) for c in centre)
        if components[index]:
            dots[index] = 2
    results = {}
    for name, prediction in (("whole", whole), ("dots", dots)):
        folder = tmp_path / name
        (folder / "pred").mkdir(parents=True)
        (folder / "truth").mkdir()
        nib.save(nib.Nifti1Image(prediction, label_image.affine), str(folder / "pred" / "case.nii.gz"))
        nib.save(label_image, str(folder / "truth" / "case.nii.gz"))
        arguments = ["evaluate", "--pred", str(folder / "pred"), "--truth", str(folder / "truth")]
        assert cli([*arguments, "--truth-labels", "lits", "--out", str(folder / "metrics.json")]) == 0
        results[name] = json.loads((folder / "metrics.json").read_text())
    capsys.readouterr()
    whole_summary = results["whole"]["summary"]
    pieces = ndimage.label(truth > 0, structure=np.ones((3, 3, 3)))[1]  # the cut liver falls into a few pieces
    assert whole_summary["lesion_counts"]["all"]["total"] == count
    assert whole_summary["lesion_sensitivity"]["all"] <= 1 / count
    assert whole_summary["false_positive_lesions"] == pieces  # one per predicted component
    # One voxel is a perfect answer only for a lesion of one or two voxels (IoU ≥ 0.5); every larger lesion is missed.
    sizes = np.bincount(components.ravel())[1:]
    assert results["dots"]["summary"]["lesion_counts"]["all"]["detected"] == int((sizes <= 2).sum())
    assert (sizes > 2).sum() >= 45
    assert "one-to-one" in results["whole"]["definitions"]["detection"]


def test_ignored_voxels_are_neither_hits_nor_false_positives():
    organ = np.zeros((40, 40, 40), np.uint8)
    organ[2:38, 2:38, 2:38] = 1
    truth = organ.copy()
    truth[5:10, 5:10, 5:10] = 2  # the test lesion
    ignore = np.zeros(truth.shape, bool)
    ignore[20:35, 20:35, 20:35] = True  # another side's lesion and its margin
    prediction = truth.copy()
    prediction[25:30, 25:30, 25:30] = 2  # the other side's lesion, found
    counted = evaluate_case(prediction, truth, ONE_MM)
    assert counted["false_positive_lesions"] == 1
    ignored = evaluate_case(prediction, truth, ONE_MM, ignore=ignore)
    assert ignored["false_positive_lesions"] == 0 and ignored["detected_lesions"] == 1
    assert ignored["tumor_dsc"] == 1.0 and counted["tumor_dsc"] < 1.0
