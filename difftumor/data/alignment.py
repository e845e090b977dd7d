"""Is a label map what it claims to be, and does it lie where its reference image lies? One check for every command.

A label map (organ mask, prediction, truth) is compared with the image it belongs to (the CT, the truth) before any
use: integer values only; the same grid, or a grid whose world box is the reference's within a tolerance (then
resampled by affine, nearest neighbour), or — only when the caller allows it — any grid that overlaps the
reference; never a grid with the same affine and permuted axes (an export that transposed the array), never one
that lies elsewhere in the world (another patient, a broken header).
"""

from __future__ import annotations

import numpy as np

from ..errors import DiffTumorInputError
from ..spatial.grid import sample
from .volumes import Volume

#: Two world boxes are "the same" when every face agrees within this many mm or two reference voxels, whichever is
#: larger (a grid exported with half-voxel or rounding differences).
BOX_TOLERANCE_MM = 5.0


def world_box(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest world (RAS mm) coordinates of the volume's voxel centres."""
    shape = np.asarray(volume.shape)
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return world.min(0), world.max(0)


def integer_labels(volume: Volume, what: str) -> np.ndarray:
    """The label values of ``volume`` as integers; a map with fractional values (a probability or a resampled mask)
    is refused rather than truncated."""
    array = volume.array
    if array.dtype.kind == "f":
        if not np.all(np.mod(array, 1) == 0):
            raise DiffTumorInputError(
                f"{what} {volume.path} has non-integer values (e.g. {float(array[np.mod(array, 1) != 0][0]):.3g}): "
                "a probability map or an interpolated mask, not a label map",
                "threshold or argmax it into integer labels first (nearest-neighbour when resampling)",
            )
        return array.astype(np.int32)
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    return array


def label_map_on_grid(
    volume: Volume, reference: Volume, what: str, reference_name: str, resample: bool = False
) -> np.ndarray:
    """``volume``'s integer labels on ``reference``'s grid.

    Args:
        volume: the label map.
        reference: the image it belongs to.
        what, reference_name: how to name both in messages (``"organ mask"``, ``"CT"``).
        resample: also accept a grid that only overlaps the reference (a mask of part of the body); without it the
            two world boxes must agree within :data:`BOX_TOLERANCE_MM`.

    Raises:
        DiffTumorInputError: non-integer values, permuted axes under the same affine, no overlap, or (without
            ``resample``) another world box.
    """
    labels = integer_labels(volume, what)
    same_affine = np.allclose(volume.affine, reference.affine, atol=1e-3)
    if same_affine and labels.shape == reference.shape:
        return labels
    if same_affine and sorted(labels.shape) == sorted(reference.shape):
        raise DiffTumorInputError(
            f"{what} {volume.path} has shape {tuple(labels.shape)}, a permutation of the {reference_name}'s "
            f"{tuple(reference.shape)}, with the same affine: its axes are transposed",
            f"export it in the {reference_name}'s axis order (e.g. with nibabel, not a transposed NumPy array)",
        )
    low, high = world_box(volume)
    ref_low, ref_high = world_box(reference)
    if np.any(high < ref_low) or np.any(low > ref_high):
        gap = float(np.linalg.norm((low + high) / 2 - (ref_low + ref_high) / 2))
        raise DiffTumorInputError(
            f"{what} {volume.path} does not overlap the {reference_name} in the world (its centre lies {gap:.0f} mm "
            "away): it belongs to another scan, or its header is wrong",
            f"pass the {what} that belongs to this {reference_name}, in the same space",
        )
    tolerance = max(BOX_TOLERANCE_MM, 2 * float(reference.spacing.max()))
    offset = float(max(np.abs(low - ref_low).max(), np.abs(high - ref_high).max()))
    if not resample and offset > tolerance:
        raise DiffTumorInputError(
            f"{what} {volume.path} covers another part of the world than the {reference_name} (its box is up to "
            f"{offset:.0f} mm off; {tolerance:.0f} mm allowed)",
            f"write it on the {reference_name}'s grid, or pass --resample to bring it there by affine",
        )
    return sample(labels, volume.affine, reference.affine, reference.shape, order=0, cval=0).astype(labels.dtype)


def check_known_labels(
    labels: np.ndarray, known: set[int], what: str, name: str, fix: str, meaning: str | None = None
) -> None:
    """Refuse label values outside ``known``; ``meaning`` says what those values lack (default: "outside"
    the known ones)."""
    unknown = sorted({int(v) for v in np.unique(labels)} - known)
    if unknown:
        meaning = meaning or f"outside {sorted(known)}"
        raise DiffTumorInputError(f"{what} {name} holds label(s) {unknown[:8]} {meaning}", fix)
