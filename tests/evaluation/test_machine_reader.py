"""The machine reader against known answers: real lesions split in two are indistinguishable; real lesions against
obviously wrong ones (a black hole, a dot grid) are told apart."""

from __future__ import annotations

import numpy as np
import pytest

from difftumor.data.volumes import Volume, load_volume
from difftumor.evaluation.machine_reader import machine_reader, roc_auc
from difftumor.evaluation.realism import LabelledCase, measure_case
from difftumor.spatial import lesion_components
from tests.helpers.volumes import LITS_CT, LITS_LABEL


def test_auc_is_the_probability_that_a_positive_scores_higher():
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert roc_auc(np.array([1, 2, 3, 4, 5, 6.0]), labels) == 1.0
    assert roc_auc(np.array([6, 5, 4, 3, 2, 1.0]), labels) == 0.0
    assert roc_auc(np.ones(6), labels) == 0.5
    assert roc_auc(np.array([1, 4, 3, 2, 5, 6.0]), labels) == pytest.approx(7 / 9)


@pytest.fixture(scope="module")
def lits():
    ct = load_volume(LITS_CT, "CT")
    labels = np.rint(load_volume(LITS_LABEL, "label map").array).astype(int)
    return ct, labels


@pytest.fixture(scope="module")
def real(lits):
    return _lesions(*lits)


def _lesions(ct: Volume, labels: np.ndarray, paint=None) -> list[dict]:
    """The LiTS lesions < 20 mm, measured as they are or with ``paint(hu, lesion, organ_mean)`` applied to each."""
    hu = ct.array.astype(np.float32).copy()
    lesions = labels == 2
    if paint is not None:
        components, count = lesion_components(lesions)
        organ_mean = float(np.median(hu[labels == 1]))
        for index in range(1, count + 1):
            paint(hu, components == index, organ_mean)
    case = LabelledCase("lits", Volume(hu, ct.affine, path=None), labels >= 1, lesions)
    return [r for r in measure_case(case) if r["diameter_mm"] < 20]


def _reader(first: list[dict], second: list[dict], permutations: int = 50):
    return machine_reader(
        [r["_reader"] for r in first],
        [r["_reader"] for r in second],
        real_sizes=[r["diameter_mm"] for r in first],
        synthetic_sizes=[r["diameter_mm"] for r in second],
        permutations=permutations,
    )


def test_real_lesions_split_in_two_are_indistinguishable(real):
    assert len(real) >= 40
    aucs = []
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(real))
        half = len(real) // 2
        result = _reader([real[i] for i in order[:half]], [real[i] for i in order[half:]])
        assert result.interval[0] <= 0.5 <= result.interval[1], result
        aucs.append(result.auc)
    assert 0.3 <= float(np.mean(aucs)) <= 0.7


@pytest.mark.slow
def test_black_holes_and_dot_grids_are_told_apart_from_real_lesions(lits, real):
    ct, labels = lits

    def black_hole(hu, lesion, organ_mean):
        hu[lesion] = organ_mean - 250.0

    def dot_grid(hu, lesion, organ_mean):
        dots = np.where(np.indices(hu.shape) % 3 < 1, 1.0, -1.0).prod(0)  # period 3 voxels = 4.5 mm here
        hu[lesion] = organ_mean - 40.0 + 35.0 * dots[lesion]

    for paint in (black_hole, dot_grid):
        wrong = _lesions(ct, labels, paint)
        result = _reader(real, wrong)
        assert result.auc > 0.9 and result.interval[0] > 0.8 and result.permutation_p < 0.05, (paint.__name__, result)
        # same masks: diameter alone cannot tell them apart
        assert abs(result.size_only_auc - 0.5) < 0.15


def test_too_few_lesions_give_no_verdict():
    result = machine_reader([np.zeros(5)] * 3, [np.ones(5)] * 20)
    assert np.isnan(result.auc) and "fewer than" in result.note
