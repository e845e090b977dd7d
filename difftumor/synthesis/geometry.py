"""Tumour shapes and placement: elastically deformed ellipsoids, sized in millimetres, placed inside an organ.

Everything here works on the 1 mm working grid, so voxels are millimetres. The rules follow the original DiffTumor
code: per-axis radii drawn in the size class's range, three elastic
deformations on a 3×3 control grid over the axis pairs (0, 1), (1, 2), (0, 2), a centre on an axial slice drawn
from the middle band of the organ's z extent (eroded for the liver), the tumour clipped to the organ — except
exophytic kidney tumours — and large pancreas tumours centred on the organ's bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import DiffTumorInputError

#: Per-axis radius range (mm, inclusive) and elastic deformation of each size class, as in the original.
SIZE_CLASSES: dict[str, dict] = {
    "tiny": {"radius": (3, 5), "sigma": ("uniform", 0.5, 1.0)},
    "small": {"radius": (6, 10), "sigma": ("randint", 1, 2)},
    "medium": {"radius": (12, 20), "sigma": ("randint", 3, 6)},
    "large": {"radius": (24, 40), "sigma": ("randint", 5, 10)},
}
#: ``early`` is tiny or small with equal probability (< 2 cm), as the original's early-tumour model.
EARLY = ("tiny", "small")
ORGANS = ("liver", "pancreas", "kidney")
# The original allows large radii up to 64 mm; beyond 40 mm a tumour no longer fits a crop the models can process
# with its blending margin, so the class is capped (documented in the README).
MAX_DIAMETER_MM = 80.0


@dataclass
class TumorSpec:
    """What to synthesise: a size class or an explicit diameter (mm), and optionally a centre (working voxels)."""

    size_class: str
    diameter_mm: float | None = None
    center: tuple[int, int, int] | None = None


def parse_size(size: str) -> str | float:
    """``early``/``tiny``/``small``/``medium``/``large`` or a diameter in mm (``"15"``, ``"15mm"``)."""
    text = str(size).strip().lower()
    if text in SIZE_CLASSES or text == "early":
        return text
    number = text[:-2] if text.endswith("mm") else text
    try:
        diameter = float(number)
    except ValueError:
        raise DiffTumorInputError(
            f"unknown tumour size {size!r}", "use early, tiny, small, medium, large or a diameter in mm such as 15"
        ) from None
    if not 2.0 <= diameter <= MAX_DIAMETER_MM:
        raise DiffTumorInputError(
            f"tumour diameter {diameter:g} mm is out of range", f"use a diameter between 2 and {MAX_DIAMETER_MM:g} mm"
        )
    return diameter


def size_class_of_diameter(diameter_mm: float) -> str:
    """The size class whose diameter range (2 × radius) contains ``diameter_mm`` (nearest class otherwise)."""
    if diameter_mm < 11:
        return "tiny"
    if diameter_mm < 22:
        return "small"
    if diameter_mm < 46:
        return "medium"
    return "large"


def draw_radii(spec: TumorSpec, rng: np.random.Generator) -> tuple[int, int, int]:
    """Per-axis radii in voxels: the class's inclusive range, or ±15 % around an explicit diameter."""
    if spec.diameter_mm is not None:
        half = spec.diameter_mm / 2
        return tuple(max(1, int(round(half * rng.uniform(0.85, 1.15)))) for _ in range(3))  # type: ignore[return-value]
    low, high = SIZE_CLASSES[spec.size_class]["radius"]
    return tuple(int(rng.integers(low, high + 1)) for _ in range(3))  # type: ignore[return-value]


def draw_deformation_sigma(size_class: str, rng: np.random.Generator) -> float:
    kind, low, high = SIZE_CLASSES[size_class]["sigma"]
    return float(rng.uniform(low, high)) if kind == "uniform" else float(rng.integers(low, high + 1))


def ellipsoid(radii: tuple[int, int, int]) -> np.ndarray:
    """Binary ellipsoid in a ``(4rx, 4ry, 4rz)`` box centred at ``(2rx, 2ry, 2rz)``: ``Σ ((i − c) / r)² < 1``."""
    shape = tuple(4 * r for r in radii)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    distance = sum(((g - 2 * r) / r) ** 2 for g, r in zip(grids, radii))
    return (distance < 1).astype(np.uint8)


def _deform_pair(mask: np.ndarray, sigma: float, axes: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random elastic deformation in the plane of ``axes``: Gaussian displacements (std ``sigma`` voxels) on a
    3 × 3 control grid, interpolated with cubic splines, nearest-neighbour resampling.

    The displacement field is constant along the third axis, so the resampling is a gather of whole lines from a 2-D
    index plane — the same voxels as ``ndimage.map_coordinates(order=0, mode="constant")`` (which rounds half up and
    keeps coordinates within ``[0, n − 1]``), 4× faster; on-the-fly synthesis draws hundreds of these per minute.
    """
    shape = mask.shape
    other = 3 - axes[0] - axes[1]
    sources = []
    for position, axis in enumerate(axes):
        control = rng.normal(0.0, sigma, size=(3, 3))
        zoom = [shape[axes[0]] / 3, shape[axes[1]] / 3]
        displacement = ndimage.zoom(control, zoom, order=3, mode="nearest", grid_mode=True)
        displacement = displacement[: shape[axes[0]], : shape[axes[1]]]
        along = np.arange(shape[axis], dtype=np.float64).reshape((-1, 1) if position == 0 else (1, -1))
        sources.append(along + displacement)
    inside = np.ones(sources[0].shape, dtype=bool)
    indices = []
    for source, axis in zip(sources, axes):
        inside &= (source >= 0) & (source <= shape[axis] - 1)
        indices.append(np.clip(np.floor(source + 0.5).astype(np.intp), 0, shape[axis] - 1))
    planes = np.moveaxis(mask, (axes[0], axes[1], other), (0, 1, 2))
    moved = np.where(inside[:, :, None], planes[indices[0], indices[1], :], 0).astype(mask.dtype)
    return np.moveaxis(moved, (0, 1, 2), (axes[0], axes[1], other))


def deformed_ellipsoid(radii: tuple[int, int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid deformed three times, over the axis pairs (0, 1), (1, 2) and (0, 2)."""
    shape = ellipsoid(radii)
    for axes in ((0, 1), (1, 2), (0, 2)):
        shape = _deform_pair(shape, sigma, axes, rng)
    return shape


def _middle_band_slice(organ: np.ndarray, rng: np.random.Generator, attempt: int) -> int:
    z_indices = np.flatnonzero(organ.any(axis=(0, 1)))
    z_min, z_max = int(z_indices[0]), int(z_indices[-1])
    band = (0.3, 0.7) if attempt < 10 else (0.2, 0.8) if attempt < 20 else (0.1, 0.9) if attempt < 30 else (0.0, 1.0)
    return int(round(rng.uniform(*band) * (z_max - z_min))) + z_min


def choose_center(organ: np.ndarray, organ_name: str, rng: np.random.Generator, attempt: int = 0) -> tuple[int, ...]:
    """A tumour centre: an axial slice in the organ's middle z band (widening with ``attempt``), then a uniformly
    random organ voxel of that slice (of the 5 × 5-eroded slice for the liver)."""
    for _ in range(100):
        z = _middle_band_slice(organ, rng, attempt)
        plane = organ[:, :, z]
        if organ_name == "liver":
            eroded = ndimage.binary_erosion(plane, structure=np.ones((5, 5)))
            plane = eroded if eroded.any() else plane
        candidates = np.argwhere(plane)
        if len(candidates):
            x, y = candidates[rng.integers(len(candidates))]
            return int(x), int(y), int(z)
        attempt += 1
    raise DiffTumorInputError(f"no {organ_name} voxels found to place a tumour", "check the organ mask and label")


def paste(canvas: np.ndarray, shape: np.ndarray, center: tuple[int, ...]) -> np.ndarray:
    """Add ``shape`` (any size) to ``canvas`` with its box centred at ``center``, clipped to the canvas; returns
    the canvas-sized pasted mask."""
    out = np.zeros(canvas.shape, dtype=bool)
    starts = [c - s // 2 for c, s in zip(center, shape.shape)]
    source, target = [], []
    for start, size, limit in zip(starts, shape.shape, canvas.shape):
        low, high = max(start, 0), min(start + size, limit)
        if high <= low:
            return out
        target.append(slice(low, high))
        source.append(slice(low - start, high - start))
    out[tuple(target)] = shape[tuple(source)] > 0
    return out


def _touches(mask: np.ndarray, occupied: np.ndarray, gap: int) -> bool:
    """Whether ``mask`` comes within ``gap`` voxels of ``occupied`` (checked on ``mask``'s bounding box only)."""
    points = np.argwhere(mask)
    low = np.maximum(points.min(0) - gap, 0)
    high = points.max(0) + gap + 1
    box = tuple(slice(a, b) for a, b in zip(low, high))
    return bool((ndimage.binary_dilation(mask[box], iterations=gap) & occupied[box]).any())


@dataclass
class PlacedTumor:
    """A tumour mask on the working grid and how it was made."""

    mask: np.ndarray
    center: tuple[int, int, int]
    size_class: str
    radii: tuple[int, int, int]
    exophytic: bool


def place_tumor(
    organ: np.ndarray,
    organ_name: str,
    spec: TumorSpec,
    rng: np.random.Generator,
    occupied: np.ndarray | None = None,
    max_attempts: int = 40,
) -> PlacedTumor:
    """Place one tumour of ``spec`` in the boolean ``organ`` mask (1 mm working grid).

    Tumours are clipped to the organ, except exophytic kidney tumours (medium/large, probability 0.5); large
    pancreas tumours are centred on the organ's bounding box. A placement is rejected if it overlaps ``occupied``
    (earlier tumours) or keeps less than half of its shape inside the organ; after ``max_attempts`` rejections the
    organ cannot hold the tumour and a :class:`DiffTumorInputError` says so.
    """
    size_class = spec.size_class
    if size_class == "early":
        size_class = EARLY[int(rng.integers(2))]
    spec = TumorSpec(size_class, spec.diameter_mm, spec.center)
    best_fraction = 0.0
    for attempt in range(max_attempts):
        radii = draw_radii(spec, rng)
        sigma = draw_deformation_sigma(size_class, rng)
        shape = deformed_ellipsoid(radii, sigma, rng)
        if not shape.any():
            continue
        if spec.center is not None:
            center = spec.center
        elif organ_name == "pancreas" and size_class == "large":
            box = np.argwhere(organ)
            center = tuple(int(v) for v in (box.min(0) + box.max(0) + 1) // 2)
        else:
            center = choose_center(organ, organ_name, rng, attempt)
        pasted = paste(organ, shape, center)
        exophytic = organ_name == "kidney" and size_class in ("medium", "large") and bool(rng.random() < 0.5)
        mask = pasted if exophytic else pasted & organ
        fraction = (pasted & organ).sum() / max(int(shape.sum()), 1)
        best_fraction = max(best_fraction, fraction)
        if fraction < 0.5 or not mask.any():
            continue
        if occupied is not None and _touches(mask, occupied, gap=2):
            continue
        return PlacedTumor(mask, tuple(int(c) for c in center), size_class, radii, exophytic)
    what = f"{spec.diameter_mm:g} mm" if spec.diameter_mm is not None else size_class
    where = f" at the requested centre {spec.center}" if spec.center is not None else ""
    article = "another" if occupied is not None and occupied.any() else "a"
    raise DiffTumorInputError(
        f"the {organ_name} cannot hold {article} {what} tumour{where} "
        f"(the best placement kept {best_fraction:.0%} inside it)",
        "ask for a smaller size or fewer tumours, or check the organ mask",
    )
