"""The 1 mm RAS working grid, and moving data between it and a volume's own grid by affine.

The working grid has axes along world R, A, S with 1 mm voxels and its origin on the input CT's lowest world
corner, so every crop is an integer sub-box of it. Sampling is linear interpolation for intensities and nearest
neighbour for labels (scipy ``map_coordinates``), computed straight from the two affines: nothing is resampled that
is not needed, and the input grid is never resampled as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of the working grid: ``start`` (inclusive) and ``shape`` in working voxels."""

    start: tuple[int, int, int]
    shape: tuple[int, int, int]

    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(s + n for s, n in zip(self.start, self.shape))  # type: ignore[return-value]

    def slices_within(self, other: Box) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
        """Slices into ``self`` and into ``other`` covering their intersection (``None`` if they do not meet)."""
        mine, theirs = [], []
        for a0, a1, b0, b1 in zip(self.start, self.stop, other.start, other.stop):
            low, high = max(a0, b0), min(a1, b1)
            if high <= low:
                return None
            mine.append(slice(low - a0, high - a0))
            theirs.append(slice(low - b0, high - b0))
        return tuple(mine), tuple(theirs)


class WorkingGrid:
    """1 mm RAS grid anchored at the lowest world corner of a reference volume."""

    def __init__(self, reference_affine: np.ndarray, reference_shape: tuple[int, int, int], spacing: float = 1.0):
        corners = _corners_world(reference_affine, reference_shape)
        self.spacing = float(spacing)
        self.origin = corners.min(axis=0)
        self.affine = np.eye(4)
        self.affine[:3, :3] *= self.spacing
        self.affine[:3, 3] = self.origin

    def box_affine(self, box: Box) -> np.ndarray:
        """Voxel -> world affine of a sub-box."""
        affine = self.affine.copy()
        affine[:3, 3] = self.origin + np.asarray(box.start) * self.spacing
        return affine

    def to_world(self, index: tuple[float, float, float]) -> np.ndarray:
        return self.origin + np.asarray(index, dtype=np.float64) * self.spacing

    def to_index(self, world: np.ndarray) -> np.ndarray:
        return np.round((np.asarray(world, dtype=np.float64) - self.origin) / self.spacing).astype(int)

    def box_around(self, world_points: np.ndarray, margin: float = 0.0) -> Box:
        """Smallest box holding all ``world_points`` ``(N, 3)`` plus ``margin`` mm."""
        low = np.floor((world_points.min(axis=0) - margin - self.origin) / self.spacing).astype(int)
        high = np.ceil((world_points.max(axis=0) + margin - self.origin) / self.spacing).astype(int) + 1
        return Box(tuple(int(v) for v in low), tuple(int(v) for v in high - low))

    def crop_box(self, center: tuple[int, int, int], size: int) -> Box:
        """A ``size``³ box centred on working voxel ``center``."""
        return Box(tuple(int(c) - size // 2 for c in center), (size, size, size))


def _corners_world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape[:3]], indexing="ij")).reshape(3, -1).T
    return (affine[:3, :3] @ corners.T).T + affine[:3, 3]


def voxel_world_points(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """World coordinates of voxel ``indices`` ``(N, 3)``."""
    return indices @ affine[:3, :3].T + affine[:3, 3]


def sample(
    array: np.ndarray,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    order: int,
    cval: float = 0.0,
    max_points: int = 2**22,
) -> np.ndarray:
    """Values of ``array`` (on ``source_affine``'s grid) at the voxel centres of a target grid.

    ``order=1`` (trilinear) for intensities, ``order=0`` (nearest) for labels; outside the source: ``cval``.
    The target is filled in slabs of at most ``max_points`` voxels so that the coordinate arrays stay small.
    """
    mapping = np.linalg.inv(source_affine) @ target_affine
    data = array if order == 0 else array.astype(np.float32, copy=False)
    out = np.empty(target_shape, dtype=data.dtype if order == 0 else np.float32)
    plane = int(target_shape[1]) * int(target_shape[2])
    step = max(1, max_points // max(plane, 1))
    j, k = np.meshgrid(
        np.arange(target_shape[1], dtype=np.float64), np.arange(target_shape[2], dtype=np.float64), indexing="ij"
    )
    for start in range(0, target_shape[0], step):
        i = np.arange(start, min(start + step, target_shape[0]), dtype=np.float64)[:, None, None]
        coordinates = np.stack(
            [
                np.broadcast_to(
                    mapping[axis, 0] * i + mapping[axis, 1] * j + mapping[axis, 2] * k + mapping[axis, 3],
                    (len(i), *target_shape[1:]),
                )
                for axis in range(3)
            ]
        )
        if order == 0:
            # Round explicitly: map_coordinates' nearest mode rounds .5 inconsistently across scipy versions.
            coordinates = np.round(coordinates)
        out[start : start + len(i)] = ndimage.map_coordinates(
            data, coordinates, order=order, mode="constant", cval=cval, prefilter=False
        )
    return out


def source_window(
    source_shape: tuple[int, ...], source_affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, ...]
) -> tuple[slice, slice, slice] | None:
    """Index ranges of the source grid whose voxel centres fall inside a target grid's extent (``None`` if none)."""
    corners = _corners_world(target_affine, target_shape)
    source_corners = (np.linalg.inv(source_affine) @ np.c_[corners, np.ones(len(corners))].T)[:3].T
    low = np.maximum(np.floor(source_corners.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(source_corners.max(axis=0)).astype(int) + 1, np.asarray(source_shape[:3]))
    if np.any(high <= low):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))  # type: ignore[return-value]


def sample_into_source(
    values: np.ndarray,
    values_affine: np.ndarray,
    source_shape: tuple[int, ...],
    source_affine: np.ndarray,
    order: int = 1,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Sample a working-grid array back onto the part of a source grid it covers.

    Returns the source index window and the sampled values there (zero outside ``values``' extent), or ``None``.
    """
    window = source_window(source_shape, source_affine, values_affine, values.shape)
    if window is None:
        return None
    window_affine = source_affine.copy()
    window_affine[:3, 3] = source_affine[:3, :3] @ np.array([w.start for w in window]) + source_affine[:3, 3]
    shape = tuple(w.stop - w.start for w in window)
    return window, sample(values, values_affine, window_affine, shape, order=order, cval=0.0)


def native_spacing_along_world(affine: np.ndarray) -> np.ndarray:
    """Approximate voxel size of a grid along world x, y, z (for anti-aliasing before downsampling)."""
    columns = np.abs(affine[:3, :3])
    return columns.max(axis=1)
