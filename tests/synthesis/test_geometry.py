"""Tumour shapes, size classes and placement rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from difftumor.errors import DiffTumorInputError
from difftumor.spatial import equivalent_diameter_mm
from difftumor.synthesis.geometry import (
    SIZE_CLASSES,
    TumorSpec,
    _deform_pair,
    choose_center,
    deformed_ellipsoid,
    ellipsoid,
    parse_size,
    place_tumor,
)


def _ball_organ(shape=(120, 120, 120), radius=45):
    grid = np.indices(shape)
    center = np.array(shape)[:, None, None, None] / 2
    return ((grid - center) ** 2).sum(0) < radius**2


def test_ellipsoid_box_centre_and_volume():
    shape = ellipsoid((4, 6, 8))
    assert shape.shape == (16, 24, 32)
    assert shape[8, 12, 16] == 1 and shape[8, 12, 16 + 8] == 0  # strict inequality on the boundary
    assert shape.sum() == pytest.approx(4 / 3 * math.pi * 4 * 6 * 8, rel=0.08)


def test_deformation_is_seeded_and_keeps_the_shape_roughly():
    a = deformed_ellipsoid((8, 8, 8), 2.0, np.random.default_rng(3))
    b = deformed_ellipsoid((8, 8, 8), 2.0, np.random.default_rng(3))
    c = deformed_ellipsoid((8, 8, 8), 2.0, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.sum() == pytest.approx(ellipsoid((8, 8, 8)).sum(), rel=0.35)


def test_size_parsing():
    assert parse_size("early") == "early" and parse_size("Large") == "large"
    assert parse_size("15") == 15.0 and parse_size("15mm") == 15.0
    for bad in ("huge", "0.5", "500"):
        with pytest.raises(DiffTumorInputError):
            parse_size(bad)


@pytest.mark.parametrize("size_class", ["tiny", "small", "medium", "large"])
def test_radii_follow_the_size_class_in_millimetres(size_class):
    rng = np.random.default_rng(0)
    organ = _ball_organ((200, 200, 200), 95)
    low, high = SIZE_CLASSES[size_class]["radius"]
    for _ in range(3):
        tumor = place_tumor(organ, "liver", TumorSpec(size_class), rng)
        assert all(low <= r <= high for r in tumor.radii)
        assert not (tumor.mask & ~organ).any()
        diameter = equivalent_diameter_mm(int(tumor.mask.sum()))
        assert 2 * low * 0.6 <= diameter <= 2 * high * 1.3


def test_explicit_diameter_and_centre():
    organ = _ball_organ()
    tumor = place_tumor(
        organ, "liver", TumorSpec("small", diameter_mm=14.0, center=(60, 60, 60)), np.random.default_rng(1)
    )
    points = np.argwhere(tumor.mask)
    assert np.abs(points.mean(0) - 60).max() < 3
    assert equivalent_diameter_mm(len(points)) == pytest.approx(14.0, rel=0.3)


def test_centre_is_drawn_from_the_middle_band_of_the_organ():
    organ = _ball_organ()
    z = np.flatnonzero(organ.any((0, 1)))
    rng = np.random.default_rng(2)
    for _ in range(20):
        x, y, zc = choose_center(organ, "liver", rng)
        assert organ[x, y, zc]
        assert z[0] + 0.29 * (z[-1] - z[0]) <= zc <= z[0] + 0.71 * (z[-1] - z[0])


def test_kidney_can_be_exophytic_and_pancreas_large_is_centred():
    organ = _ball_organ(radius=30)
    exophytic = [place_tumor(organ, "kidney", TumorSpec("medium"), np.random.default_rng(seed)) for seed in range(8)]
    assert any(t.exophytic and (t.mask & ~organ).any() for t in exophytic)
    assert all(not (t.mask & ~organ).any() for t in exophytic if not t.exophytic)
    pancreas = _ball_organ(radius=44)
    large = place_tumor(pancreas, "pancreas", TumorSpec("large"), np.random.default_rng(0))
    assert large.center == (60, 60, 60)


def test_organ_too_small_is_a_clear_error_and_tumours_do_not_overlap():
    tiny_organ = _ball_organ(radius=4)
    with pytest.raises(DiffTumorInputError, match="cannot hold a large tumour"):
        place_tumor(tiny_organ, "liver", TumorSpec("large"), np.random.default_rng(0), max_attempts=5)
    organ = _ball_organ()
    first = place_tumor(organ, "liver", TumorSpec("small"), np.random.default_rng(0))
    second = place_tumor(organ, "liver", TumorSpec("small"), np.random.default_rng(1), occupied=first.mask)
    assert not (first.mask & second.mask).any()


def _deform_pair_by_map_coordinates(mask, sigma, axes, rng):
    """The deformation as first written (a full coordinate grid through map_coordinates): the reference."""
    from scipy import ndimage

    shape = mask.shape
    coordinates = list(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    for axis in axes:
        control = rng.normal(0.0, sigma, size=(3, 3))
        zoom = [shape[axes[0]] / 3, shape[axes[1]] / 3]
        displacement = ndimage.zoom(control, zoom, order=3, mode="nearest", grid_mode=True)
        displacement = displacement[: shape[axes[0]], : shape[axes[1]]]
        view = [np.newaxis] * 3
        view[axes[0]], view[axes[1]] = slice(None), slice(None)
        coordinates[axis] = coordinates[axis] + displacement[tuple(view)]
    return ndimage.map_coordinates(mask, coordinates, order=0, mode="constant", cval=0)


def test_deformation_gather_equals_map_coordinates_voxel_for_voxel():
    for trial in range(60):
        rng = np.random.default_rng(trial)
        mask = ellipsoid(tuple(int(r) for r in rng.integers(1, 16, 3)))
        sigma = float(rng.uniform(0.5, 6.0))
        for axes in ((0, 1), (1, 2), (0, 2)):
            expected = _deform_pair_by_map_coordinates(mask, sigma, axes, np.random.default_rng(trial))
            got = _deform_pair(mask, sigma, axes, np.random.default_rng(trial))
            assert got.dtype == expected.dtype and np.array_equal(got, expected)
            mask = expected
