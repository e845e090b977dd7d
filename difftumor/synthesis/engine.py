"""Synthesise tumours into a whole CT: choose tumours in the organ, paint them crop by crop, map the change back.

Data flow (``docs/ARCHITECTURE.md``): the organ is resampled onto a 1 mm RAS working grid (only its bounding box), the
tumours are placed there, each tumour gets a crop of the working grid sampled from the input CT, the synthesizer
paints the crops in batches, and the difference each crop received is sampled back onto the input grid. Voxels
whose difference is zero keep their stored values bit for bit; the output has the input's grid, affine and dtype.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..data.alignment import label_map_on_grid
from ..data.volumes import Volume, check_hounsfield, stores_whole_numbers
from ..errors import DiffTumorInputError
from ..limits import check_volume_size
from ..spatial import equivalent_diameter_mm
from ..spatial.grid import Box, WorkingGrid, native_spacing_along_world, sample, sample_into_source, voxel_world_points
from .geometry import (
    EARLY,
    ORGANS,
    PlacedTumor,
    TumorSpec,
    parse_size,
    place_tumor,
    size_class_of_diameter,
)
from .synthesizers import CropBatch, TumorSynthesizer

logger = logging.getLogger(__name__)

#: Crop edge of the released models; larger tumours get larger crops (multiples of 32).
BASE_CROP = 96
# Context kept around a tumour inside its crop: blending reaches 4σ = 16 mm, the models like to see the organ.
_CROP_CONTEXT = 40
_ORGAN_MARGIN_MM = 48.0
#: An organ mask with more than this share of its voxels in air (below AIR_HU) is not that organ's mask.
AIR_HU, MAX_AIR_FRACTION = -500.0, 0.05


@dataclass
class SynthesizedTumor:
    """One synthesised tumour, as recorded in ``tumors.json``."""

    index: int
    center_mm: list[float]
    diameter_mm: float
    volume_mm3: float
    size_class: str
    synthesizer: str
    seed: int
    exophytic: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    # For previews: the painted working-space crop (HU), its tumour mask and where the tumour centre is in it.
    crop: np.ndarray | None = field(default=None, repr=False)
    crop_mask: np.ndarray | None = field(default=None, repr=False)
    crop_center: tuple[int, int, int] | None = None
    crop_before: np.ndarray | None = field(default=None, repr=False)

    def manifest(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "center_mm": [round(v, 2) for v in self.center_mm],
            "diameter_mm": round(self.diameter_mm, 2),
            "volume_mm3": round(self.volume_mm3, 1),
            "size_class": self.size_class,
            "synthesizer": self.synthesizer,
            "seed": self.seed,
            "exophytic": self.exophytic,
            **self.parameters,
        }


@dataclass
class SynthesisResult:
    """The synthesised CT and labels on the input grid, and what was done."""

    ct: np.ndarray
    labels: np.ndarray
    tumor_label: int
    tumors: list[SynthesizedTumor]
    changed_voxels: int
    #: plausibility warnings about the inputs (also logged), e.g. an organ whose HU or volume does not fit its name
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Canvas:
    """Everything the painting of one batch reads or updates."""

    ct: Volume
    grid: WorkingGrid
    organ_box: Box
    organ_on_ct: np.ndarray  # uint8, the form the sampler reads
    new_ct: np.ndarray
    new_labels: np.ndarray
    tumor_label: int
    minimum_hu: float
    #: per tumour, where its label lands on the CT grid: ``(window, covered fraction)``
    labels_on_ct: list[tuple[tuple[slice, ...], np.ndarray]] = field(default_factory=list)


def organ_mask_on_ct_grid(mask: Volume, ct: Volume, organ_label: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Label map on the CT grid (resampled by affine if it is stored on another grid), the boolean organ mask, and
    the organ label used."""
    labels = label_map_on_grid(mask, ct, "organ mask", "CT", resample=True)
    same_grid = mask.shape == ct.shape and np.allclose(mask.affine, ct.affine, atol=1e-3)
    present = [int(v) for v in np.unique(labels) if v != 0]
    if not present:
        where = "" if same_grid else " where it overlaps the CT"
        raise DiffTumorInputError(
            f"organ mask {mask.path} is empty{where}",
            "pass the mask that belongs to this CT (same patient, same space)",
        )
    if organ_label is None:
        if len(present) > 1:
            raise DiffTumorInputError(
                f"organ mask {mask.path} has several labels ({', '.join(map(str, present[:8]))}"
                f"{' ...' if len(present) > 8 else ''})",
                "say which one is the organ with --organ-label N",
            )
        organ_label = present[0]
    elif organ_label not in present:
        raise DiffTumorInputError(
            f"organ mask {mask.path} has no voxels with label {organ_label}",
            f"labels present ({len(present)}): {', '.join(map(str, present[:12]))}{', …' if len(present) > 12 else ''}",
        )
    return labels, labels == organ_label, organ_label


#: What each organ looks like in an adult abdominal CT, loosely (non-contrast to portal-venous phase, whole organs):
#: median HU inside the mask and volume in mL (both kidneys together at most). Outside these, the mask very likely
#: marks another structure or belongs to another scan; only a warning, because a partial field of view is legitimate.
PLAUSIBLE_ORGANS = {
    "liver": {"hu": (20.0, 220.0), "ml": (500.0, 4000.0)},
    "pancreas": {"hu": (-20.0, 220.0), "ml": (20.0, 250.0)},
    "kidney": {"hu": (0.0, 300.0), "ml": (50.0, 700.0)},
}


def organ_plausibility(organ: str, values: np.ndarray, organ_ml: float) -> list[str]:
    """Warnings when the masked voxels do not look like ``organ``: median HU or volume outside
    :data:`PLAUSIBLE_ORGANS` (e.g. the spleen's label given as the liver, a mask of another scan)."""
    ranges = PLAUSIBLE_ORGANS.get(organ)
    if ranges is None or values.size == 0:
        return []
    median = float(np.median(values))
    messages = []
    low, high = ranges["hu"]
    if not low <= median <= high:
        messages.append(
            f"the masked {organ} has a median of {median:.0f} HU, outside {low:.0f}…{high:.0f} HU for a {organ}: "
            "check --organ-label and that the mask belongs to this CT"
        )
    low, high = ranges["ml"]
    if not low <= organ_ml <= high:
        messages.append(
            f"the masked {organ} is {organ_ml:.0f} mL, outside {low:.0f}…{high:.0f} mL for a whole {organ}: "
            "check --organ-label (or ignore this for a partial field of view)"
        )
    return messages


def _check_capacity(organ: str, organ_ml: float, spec_class: str, parsed: str | float, count: int) -> None:
    """Refuse at once what cannot fit: ``count`` of the smallest tumours of the class filling over half the organ
    (placement would otherwise try for minutes before giving up)."""
    from .geometry import SIZE_CLASSES

    if isinstance(parsed, str):
        smallest = min(SIZE_CLASSES[name]["radius"][0] for name in (EARLY if parsed == "early" else (spec_class,)))
    else:
        smallest = 0.85 * parsed / 2
    needed_ml = count * 4 / 3 * math.pi * smallest**3 / 1000.0
    if needed_ml > 0.5 * organ_ml:
        raise DiffTumorInputError(
            f"{count} {parsed if isinstance(parsed, str) else f'{parsed:g} mm'} tumour(s) need at least "
            f"{needed_ml:.0f} mL, more than half of the {organ} ({organ_ml:.0f} mL)",
            "ask for fewer or smaller tumours",
        )


def _crop_size(tumor: PlacedTumor) -> int:
    points = np.argwhere(tumor.mask)
    extent = int((points.max(0) - points.min(0) + 1).max())
    needed = extent + _CROP_CONTEXT
    return BASE_CROP if needed <= BASE_CROP else int(math.ceil(needed / 32) * 32)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    points = np.argwhere(mask)
    return points.min(0) - margin, points.max(0) + margin


def _waves(masks: list[np.ndarray], margin: int) -> list[list[int]]:
    """Group tumours so that no two in a group have overlapping blending neighbourhoods (their bounding boxes
    grown by ``margin``); greedy colouring. Tumours of one group are painted from the same CT in one batch."""
    boxes = [_bounding_box(mask, margin) for mask in masks]

    def overlap(a: int, b: int) -> bool:
        return bool(np.all(boxes[a][0] <= boxes[b][1]) and np.all(boxes[b][0] <= boxes[a][1]))

    waves: list[list[int]] = []
    for index in range(len(masks)):
        for wave in waves:
            if not any(overlap(index, other) for other in wave):
                wave.append(index)
                break
        else:
            waves.append([index])
    return waves


def _antialias(delta: np.ndarray, ct_affine: np.ndarray) -> np.ndarray:
    """Smooth a 1 mm change before sampling it onto a coarser grid (σ ≈ 0.4 × the extra voxel size)."""
    sigma = 0.4 * np.maximum(native_spacing_along_world(ct_affine) - 1.0, 0.0)
    return ndimage.gaussian_filter(delta, sigma) if sigma.any() else delta


# Mostly input checks, each a one-line error naming its fix; placement and painting are _place_all and _paint_all.
def synthesize_tumors(
    ct: Volume,
    organ_mask: Volume,
    organ: str,
    synthesizer: TumorSynthesizer,
    size: str | float = "early",
    count: int = 1,
    seed: int = 0,
    organ_label: int | None = None,
    centers_mm: Sequence[Sequence[float]] | None = None,
    tumor_label: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> SynthesisResult:
    """Paint ``count`` tumours into ``ct`` inside the organ of ``organ_mask``.

    Args:
        ct: the CT (any grid, orientation and dtype).
        organ_mask: binary or multi-label organ map, on the CT grid or any grid covering the same space.
        organ: ``liver``, ``pancreas`` or ``kidney`` (placement rules).
        synthesizer: how to paint them (:func:`difftumor.synthesis.get_synthesizer`).
        size: ``early`` (tiny or small), ``tiny``, ``small``, ``medium``, ``large`` or a diameter in mm.
        count: exact number of tumours.
        seed: every random draw derives from it.
        organ_label: the organ's label id in a multi-label mask.
        centers_mm: optional world (RAS, mm) centres, one per tumour.
        tumor_label: label id given to tumour voxels (default 2 for a binary mask, else max label + 1).
        progress: called with ``(done, total)`` tumours.
        warn: called with each plausibility warning before anything is painted (default: the module logger).

    Returns:
        :class:`SynthesisResult` on the CT's grid.
    """
    if organ not in ORGANS:
        raise DiffTumorInputError(f"unknown organ {organ!r}", f"choose one of {', '.join(ORGANS)}")
    if count < 1:
        raise DiffTumorInputError(f"tumour count must be at least 1, got {count}", "pass --count 1 or more")
    if centers_mm is not None and len(centers_mm) != count:
        raise DiffTumorInputError(
            f"{len(centers_mm)} tumour centre(s) given for {count} tumour(s)",
            f"pass --count {len(centers_mm)} (one centre per tumour)",
        )
    parsed = parse_size(size) if isinstance(size, str) else float(size)
    spec_class = parsed if isinstance(parsed, str) else size_class_of_diameter(parsed)

    check_hounsfield(ct)
    labels, organ_on_ct, organ_label = organ_mask_on_ct_grid(organ_mask, ct, organ_label)
    if tumor_label is None:
        tumor_label = 2 if int(labels.max()) == 1 else int(labels.max()) + 1
    elif np.any(labels == tumor_label):
        named = "the organ itself" if tumor_label == organ_label else "another structure"
        raise DiffTumorInputError(
            f"tumour label {tumor_label} already names {named} in {organ_mask.path}: the tumours would merge with it",
            f"choose a label the mask does not use, e.g. --tumor-label {int(labels.max()) + 1} (the default)",
        )
    if organ_on_ct.sum() * abs(np.linalg.det(ct.affine[:3, :3])) < 1000:
        raise DiffTumorInputError(
            f"the {organ} in {organ_mask.path} is smaller than 1 cm³",
            "check the mask; tumours need an organ to hold them",
        )

    air = float((ct.array[organ_on_ct] < AIR_HU).mean())
    if air > MAX_AIR_FRACTION:
        raise DiffTumorInputError(
            f"{air:.0%} of the {organ} mask in {organ_mask.path} lies in air (below {AIR_HU:.0f} HU): it does not "
            f"outline a {organ}, and tumours would land outside the body",
            "pass the organ's own mask (check --organ-label, and that the mask belongs to this CT)",
        )
    organ_ml = float(organ_on_ct.sum() * abs(np.linalg.det(ct.affine[:3, :3]))) / 1000.0
    _check_capacity(organ, organ_ml, spec_class, parsed, count)
    grid = WorkingGrid(ct.affine, ct.shape)
    organ_points = voxel_world_points(ct.affine, np.argwhere(organ_on_ct).astype(np.float64))
    organ_box = grid.box_around(organ_points, margin=_ORGAN_MARGIN_MM)
    # A header claiming 15 mm voxels makes a small file's organ metres wide on the 1 mm working grid.
    header_voxels = " × ".join(f"{v:.3g}" for v in ct.spacing)
    check_volume_size(
        organ_box.shape,
        f"the {organ}'s box on the 1 mm working grid (header voxels {header_voxels} mm) of",
        ct.path,
        "check the header's voxel size (and the mask), or raise the limit with DIFFTUMOR_MAX_VOXELS=N",
    )
    logger.info(
        "CT %s: %s voxels of %s mm; %s (label %s) %.0f mL, its box on the 1 mm working grid %s",
        ct.path,
        " x ".join(map(str, ct.shape)),
        header_voxels,
        organ,
        organ_label,
        organ_ml,
        " x ".join(map(str, organ_box.shape)),
    )
    warnings = organ_plausibility(organ, ct.array[organ_on_ct], organ_ml)
    warnings += [message for message in (synthesizer.organ_warning(organ),) if message]
    for message in warnings:
        (warn or logger.warning)(message)
    organ_on_ct = organ_on_ct.astype(np.uint8)
    organ_work = sample(organ_on_ct, ct.affine, grid.box_affine(organ_box), organ_box.shape, order=0)
    organ_work = organ_work.astype(bool)

    seeds = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint32).tolist()
    placed = _place_all(organ_work, organ, grid, organ_box, spec_class, parsed, seeds, centers_mm)
    for size_class in sorted({tumor.size_class for tumor in placed}):
        message = synthesizer.size_warning(size_class)
        if message:
            warnings.append(message)
            (warn or logger.warning)(message)

    canvas = _Canvas(
        ct,
        grid,
        organ_box,
        organ_on_ct,
        ct.array.copy(),
        # The tumour label must fit the stored type (a uint8 map that already uses 255 gets a wider one).
        labels.astype(np.promote_types(labels.dtype, np.min_scalar_type(tumor_label))),
        tumor_label,
        float(ct.array.min()),
    )
    for tumor in placed:
        logger.info("placed a %s tumour of %d voxels", tumor.size_class, int(tumor.mask.sum()))
    logger.info("painting with %s", synthesizer.describe())
    started = time.perf_counter()
    records = _paint_all(canvas, placed, seeds, organ, synthesizer, progress)
    new_ct, new_labels = canvas.new_ct, canvas.new_labels
    changed = int((new_ct != ct.array).sum())
    logger.info(
        "painted %d tumour(s) in %.1f s; %d CT voxels changed", len(records), time.perf_counter() - started, changed
    )
    return SynthesisResult(new_ct, new_labels, tumor_label, records, changed, warnings)


def _place_all(
    organ_work: np.ndarray,
    organ: str,
    grid: WorkingGrid,
    organ_box: Any,
    spec_class: str,
    parsed: str | float,
    seeds: list[int],
    centers_mm: Sequence[Sequence[float]] | None,
) -> list[PlacedTumor]:
    """Every tumour mask on the organ's 1 mm box, each from its own seed, none overlapping an earlier one."""
    placed: list[PlacedTumor] = []
    occupied = np.zeros(organ_box.shape, dtype=bool)
    for index, tumour_seed in enumerate(seeds):
        rng = np.random.default_rng([tumour_seed, 0])
        center = None
        if centers_mm is not None:
            center = tuple(int(v) for v in grid.to_index(np.asarray(centers_mm[index])) - np.asarray(organ_box.start))
            if any(c < 0 or c >= n for c, n in zip(center, organ_box.shape)) or not organ_work[center]:
                raise DiffTumorInputError(
                    f"tumour centre {list(centers_mm[index])} mm is not inside the {organ}",
                    "give centres in world (RAS) millimetres inside the organ",
                )
        spec = TumorSpec(spec_class, None if isinstance(parsed, str) else parsed, center)
        tumor = place_tumor(organ_work, organ, spec, rng, occupied=occupied)
        occupied |= tumor.mask
        placed.append(tumor)
    return placed


def _paint_all(
    canvas: _Canvas,
    placed: list[PlacedTumor],
    seeds: list[int],
    organ: str,
    synthesizer: TumorSynthesizer,
    progress: Callable[[int, int], None] | None,
) -> list[SynthesizedTumor]:
    """Paint the placed tumours in waves whose neighbourhoods do not overlap, batched by crop size."""
    count = len(placed)
    records: list[SynthesizedTumor | None] = [None] * count
    done = 0
    canvas.labels_on_ct = [_label_on_ct(tumor, canvas) for tumor in placed]
    if progress is not None:
        progress(0, count)  # every input check has passed: painting starts
    # Blending reaches 4σ ≤ 16 mm beyond a tumour (plus the anti-aliasing blur): keep such neighbourhoods apart.
    for wave in _waves([t.mask for t in placed], margin=18):
        by_size: dict[int, list[int]] = {}
        for index in wave:
            by_size.setdefault(_crop_size(placed[index]), []).append(index)
        for crop_size, members in by_size.items():
            for start in range(0, len(members), synthesizer.max_batch_size):
                chunk = members[start : start + synthesizer.max_batch_size]
                for index, record in zip(chunk, _paint(canvas, chunk, crop_size, placed, seeds, organ, synthesizer)):
                    records[index] = record
                done += len(chunk)
                if progress is not None:
                    progress(done, count)
    return [r for r in records if r is not None]


# One batch through the synthesizer: crop, organ statistics, paint, blend back; the arrays flow from one step to the
# next.
def _paint(
    canvas: _Canvas,
    members: list[int],
    crop_size: int,
    placed: list[PlacedTumor],
    seeds: list[int],
    organ: str,
    synthesizer: TumorSynthesizer,
) -> list[SynthesizedTumor]:
    """Paint the tumours ``members`` (same crop size) in one synthesizer call and write them onto the canvas."""
    ct, grid, organ_box = canvas.ct, canvas.grid, canvas.organ_box
    boxes, images, tumor_masks, organ_masks = [], [], [], []
    for index in members:
        points = np.argwhere(placed[index].mask)
        center = tuple(int(v) for v in (points.min(0) + points.max(0) + 1) // 2 + np.asarray(organ_box.start))
        box = grid.crop_box(center, crop_size)
        affine = grid.box_affine(box)
        tumor_crop = np.zeros(box.shape, dtype=bool)
        overlap = box.slices_within(organ_box)
        if overlap is not None:
            tumor_crop[overlap[0]] = placed[index].mask[overlap[1]]
        organ_crop = sample(canvas.organ_on_ct, ct.affine, affine, box.shape, order=0).astype(bool)
        boxes.append(box)
        images.append(sample(canvas.new_ct, ct.affine, affine, box.shape, order=1, cval=canvas.minimum_hu))
        tumor_masks.append(tumor_crop)
        organ_masks.append(organ_crop | tumor_crop)
    batch = CropBatch(
        images=torch.from_numpy(np.stack(images)[:, None].astype(np.float32)),
        tumor_masks=torch.from_numpy(np.stack(tumor_masks)[:, None]),
        organ_masks=torch.from_numpy(np.stack(organ_masks)[:, None]),
        organ=organ,
        size_classes=[placed[i].size_class for i in members],
        seeds=[int(seeds[i]) for i in members],
    )
    output = synthesizer.synthesize(batch)
    painted = output.images.detach().cpu().numpy()[:, 0].astype(np.float32)
    records = []
    for position, index in enumerate(members):
        box = boxes[position]
        affine = grid.box_affine(box)
        delta = painted[position] - batch.images[position, 0].numpy()
        _apply_change(canvas, _antialias(delta, ct.affine), affine)
        window, fraction = canvas.labels_on_ct[index]
        canvas.new_labels[window][fraction >= 0.5] = canvas.tumor_label
        tumor = placed[index]
        voxels = int(tumor.mask.sum())
        center_working = np.argwhere(tumor.mask).mean(0) + np.asarray(organ_box.start)
        records.append(
            SynthesizedTumor(
                index=index,
                center_mm=[float(v) for v in grid.to_world(center_working)],
                diameter_mm=equivalent_diameter_mm(voxels),
                volume_mm3=float(voxels),
                size_class=tumor.size_class,
                synthesizer=synthesizer.name,
                seed=int(seeds[index]),
                exophytic=tumor.exophytic,
                parameters=output.parameters[position] if position < len(output.parameters) else {},
                crop=painted[position],
                crop_mask=tumor_masks[position],
                crop_center=tuple(int(round(v)) for v in center_working - np.asarray(box.start)),
                crop_before=batch.images[position, 0].numpy(),
            )
        )
    return records


def _label_on_ct(tumor: PlacedTumor, canvas: _Canvas) -> tuple[tuple[slice, ...], np.ndarray]:
    """Where ``tumor``'s label lands on the CT grid: the CT voxels it covers and by what fraction (a voxel gets the
    label at ≥ 0.5). Computed before any painting: a tumour that would change the CT without one voxel labelled is
    refused, because a segmentation model trained on the case would learn that lesion as healthy tissue."""
    points = np.argwhere(tumor.mask)
    low = np.maximum(points.min(0) - 1, 0)
    high = np.minimum(points.max(0) + 2, tumor.mask.shape)
    local = tumor.mask[tuple(slice(a, b) for a, b in zip(low, high))]
    box = Box(tuple(int(v) for v in np.asarray(canvas.organ_box.start) + low), local.shape)
    ct = canvas.ct
    result = sample_into_source(local.astype(np.float32), canvas.grid.box_affine(box), ct.shape, ct.affine)
    if result is None or not (result[1] >= 0.5).any():
        _refuse_unlabelled(tumor, ct)
    return result


def _refuse_unlabelled(tumor: PlacedTumor, ct: Volume) -> None:
    diameter = equivalent_diameter_mm(int(tumor.mask.sum()))
    spacing = ct.spacing
    smallest = math.ceil(1.2 * float(spacing.max()))
    raise DiffTumorInputError(
        f"a {diameter:.1f} mm tumour covers no voxel of this CT ({' × '.join(f'{v:g}' for v in spacing)} mm) by half, "
        "so none would carry the tumour label while the CT changes",
        f"ask for tumours of about {smallest} mm or more (--size {smallest}), or use a CT with finer slices",
    )


def _apply_change(canvas: _Canvas, delta: np.ndarray, delta_affine: np.ndarray) -> None:
    """Add a working-grid change to the CT on its own grid, touching only voxels where the change is non-zero."""
    result = sample_into_source(delta, delta_affine, canvas.ct.shape, canvas.ct.affine, order=1)
    if result is None:
        return
    window, change = result
    touched = change != 0
    region = canvas.new_ct[window]
    values = region[touched].astype(np.float64) + change[touched]
    if np.issubdtype(region.dtype, np.integer):
        limits = np.iinfo(region.dtype)
        values = np.clip(np.rint(values), limits.min, limits.max)
    elif stores_whole_numbers(canvas.ct):  # written as integers (as_stored): round here so the record is exact
        values = np.rint(values)
    region[touched] = values.astype(region.dtype)


__all__ = ["Box", "SynthesisResult", "SynthesizedTumor", "organ_mask_on_ct_grid", "synthesize_tumors"]
