"""Evaluation on hand-made volumes with known answers, and `difftumor evaluate` on folders."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from difftumor.cli.main import main as cli
from difftumor.evaluation import evaluate_case, match_lesions, summarize
from difftumor.evaluation.metrics import dice, surface_dice

ONE_MM = np.array([1.0, 1.0, 1.0])


def _cube(shape, corner, size, value=True, out=None):
    out = np.zeros(shape, dtype=type(value) if not isinstance(value, bool) else bool) if out is None else out
    out[tuple(slice(c, c + size) for c in corner)] = value
    return out


def test_dice_and_surface_dice_known_values():
    a = _cube((30, 30, 30), (5, 5, 5), 10)
    b = _cube((30, 30, 30), (5, 5, 10), 10)  # half overlap along z
    assert dice(a, a) == pytest.approx(1.0)
    assert dice(a, b) == pytest.approx(2 * 500 / 2000)
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))
    shifted = _cube((30, 30, 30), (6, 5, 5), 10)  # 1 mm shift: every surface point within 2 mm
    assert surface_dice(shifted, a, ONE_MM, 2.0) == pytest.approx(1.0)
    assert surface_dice(b, a, ONE_MM, 2.0) < 0.8
    assert surface_dice(shifted, a, np.array([3.0, 3.0, 3.0]), 2.0) < 1.0  # the same shift is 3 mm at 3 mm voxels
    assert surface_dice(np.zeros_like(a), a, ONE_MM, 2.0) == 0.0


def test_lesion_sizes_and_connectivity():
    truth = np.zeros((60, 60, 60), bool)
    truth = _cube(truth.shape, (5, 5, 5), 4, out=truth)  # 64 mm³ at 1 mm: 4.96 mm
    truth = _cube(truth.shape, (20, 20, 20), 12, out=truth)  # 1728 mm³: 14.9 mm
    truth = _cube(truth.shape, (40, 40, 40), 18, out=truth)  # 5832 mm³: 22.3 mm
    match = match_lesions(truth, truth, ONE_MM)
    assert match.detected == [True, True, True] and match.false_positives == 0
    assert [round(d, 1) for d in match.true_diameters_mm] == [5.0, 14.9, 22.3]
    # 26-connectivity (default): diagonal neighbours are one lesion; 6-connectivity (the original's rule): two
    diagonal = np.zeros((10, 10, 10), bool)
    diagonal[2, 2, 2] = diagonal[3, 3, 3] = True
    assert len(match_lesions(np.zeros_like(diagonal), diagonal, ONE_MM).detected) == 1
    assert len(match_lesions(np.zeros_like(diagonal), diagonal, ONE_MM, connectivity=6).detected) == 2


def test_summary_patient_sensitivity_specificity_and_bins():
    shape = (40, 40, 40)
    organ = _cube(shape, (2, 2, 2), 36, value=np.uint8(1))
    positive_truth = organ.copy()
    positive_truth[10:13, 10:13, 10:13] = 2  # 27 mm³: 3.7 mm
    positive_truth[20:32, 20:32, 20:32] = 2  # 1728 mm³: 14.9 mm
    found = positive_truth.copy()
    found[10:13, 10:13, 10:13] = 1  # the small lesion is missed
    negative_truth = organ.copy()
    clean = organ.copy()
    false_alarm = organ.copy()
    false_alarm[5:8, 5:8, 5:8] = 2
    cases = [
        evaluate_case(found, positive_truth, ONE_MM),
        evaluate_case(clean, negative_truth, ONE_MM),
        evaluate_case(false_alarm, negative_truth, ONE_MM),
    ]
    summary = summarize(cases)
    assert summary["patient_sensitivity"] == 1.0 and summary["patient_specificity"] == 0.5
    assert summary["lesion_sensitivity"]["all"] == 0.5
    assert summary["lesion_sensitivity"]["<10mm"] == 0.0 and summary["lesion_sensitivity"]["10-20mm"] == 1.0
    assert summary["lesion_sensitivity"]["20-50mm"] is None and summary["false_positive_lesions"] == 1
    assert summary["tumor_dsc_mean"] == pytest.approx(2 * 1728 / (1728 + 1755))  # over the one positive case
    assert summary["early_lesion_sensitivity"] == 0.5


def _save(path, array, affine):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))


def test_evaluate_command_pairs_files_maps_labels_and_writes_valid_json(tmp_path, capsys):
    predictions, truths = tmp_path / "pred", tmp_path / "truth"
    predictions.mkdir()
    truths.mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[5:25, 5:25, 5:25] = 1
    truth[8:12, 8:12, 8:12] = 3  # KiTS cyst: kidney
    truth[15:20, 15:20, 15:20] = 2
    prediction = (truth > 0).astype(np.uint8)
    prediction[15:20, 15:20, 15:20] = 2
    _save(truths / "case_1.nii.gz", truth, affine)
    _save(predictions / "case_1.nii.gz", prediction, affine)
    # A prediction stored on another grid (1 mm, flipped x) covering the same space is resampled onto the truth.
    fine = np.repeat(np.repeat(np.repeat(prediction, 2, 0), 2, 1), 2, 2)[::-1]
    fine_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    fine_affine[:3, 3] = [59.5 - 0.5, -0.5, -0.5]
    _save(predictions / "case_2.nii.gz", fine, fine_affine)
    _save(truths / "case_2.nii.gz", truth, affine)
    _save(predictions / "orphan.nii.gz", prediction, affine)
    out = tmp_path / "metrics.json"
    assert (
        cli(
            [
                "evaluate",
                "--pred",
                str(predictions),
                "--truth",
                str(truths),
                "--truth-labels",
                "kits",
                "--organ",
                "kidney",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| tumour DSC (%), mean over positive cases | 100.0 |" in printed and "lesion sensitivity 10-20mm" in printed
    data = json.loads(out.read_text())  # strict JSON: NaN would fail to parse in other tools
    assert [c["case"] for c in data["cases"]] == ["case_1", "case_2"] and data["unpaired_predictions"] == ["orphan"]
    for case in data["cases"]:
        assert case["organ_dsc"] == pytest.approx(1.0) and case["tumor_dsc"] == pytest.approx(1.0)
    summary = data["summary"]
    for key in ("tumor_dsc_mean", "tumor_nsd_mean", "lesion_sensitivity", "patient_sensitivity", "patient_specificity"):
        assert key in summary
    assert set(summary["lesion_sensitivity"]) == {"all", "<10mm", "10-20mm", "20-50mm", ">=50mm"}
    assert summary["patient_specificity"] is None and data["organ"] == "kidney"


def test_evaluate_errors(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert (
        cli(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "a"),
                "--truth",
                str(tmp_path / "b"),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 2
    )
    assert "no prediction" in capsys.readouterr().err
    assert (
        cli(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "x"),
                "--truth",
                str(tmp_path / "b"),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "m.json").exists()
