"""Segment a whole CT of any geometry: working space, sliding window, back onto the input grid, post-processing."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..data.volumes import Volume
from ..spatial import equivalent_diameter_mm
from ..spatial.grid import WorkingGrid, sample
from ..windowing import scale_window
from .model import SegmentationModel


def working_image(ct: Volume, window: tuple[float, float], spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """The CT on the RAS working grid (``spacing`` mm) covering it, window-scaled to [0, 1]; and that grid's affine."""
    grid = WorkingGrid(ct.affine, ct.shape, spacing=spacing)
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in ct.shape], indexing="ij")).reshape(3, -1).T
    world = corners @ ct.affine[:3, :3].T + ct.affine[:3, 3]
    shape = tuple(int(v) for v in np.ceil((world.max(0) - grid.origin) / spacing).astype(int) + 1)
    image = sample(ct.array, ct.affine, grid.affine, shape, order=1, cval=float(window[0]))
    return scale_window(image, window, (0.0, 1.0)).astype(np.float32), grid.affine


#: Connected organs per organ name: the organ is its largest connected components (two kidneys).
ORGAN_COMPONENTS = {"kidney": 2}


def postprocess(
    labels: np.ndarray,
    spacing: np.ndarray,
    min_tumor_radius_mm: float = 3.0,
    restrict_to_organ: bool = True,
    organ_components: int = 1,
) -> np.ndarray:
    """Drop tumour components whose equivalent radius is below ``min_tumor_radius_mm`` (they become organ) and,
    optionally, keep only the organ: the ``organ_components`` largest connected components of organ ∪ tumour (one
    liver or pancreas, two kidneys); everything outside them becomes background, so a tumour must touch the organ
    itself, not a stray organ fragment."""
    labels = labels.copy()
    structure = np.ones((3, 3, 3), bool)
    if restrict_to_organ:
        regions, count = ndimage.label(labels > 0, structure=structure)
        if count > organ_components:
            sizes = np.bincount(regions.ravel(), minlength=count + 1)
            sizes[0] = 0  # background is never kept (count > organ_components: enough parts rank above it)
            keep = np.zeros(count + 1, bool)
            keep[np.argsort(sizes)[::-1][:organ_components]] = True
            labels[~keep[regions]] = 0
    components, count = ndimage.label(labels == 2, structure=structure)
    if not count:
        return labels
    voxel_volume = float(np.prod(spacing))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    organ = labels == 1
    touching = np.bincount(components[ndimage.binary_dilation(organ)].ravel(), minlength=count + 1) > 0
    for index in range(1, count + 1):
        component = components == index
        if equivalent_diameter_mm(int(sizes[index]), voxel_volume) / 2 < min_tumor_radius_mm:
            labels[component] = 1 if touching[index] else 0
        elif restrict_to_organ and not touching[index]:
            labels[component] = 0
    return labels


@torch.no_grad()
def segment_volume(
    model: SegmentationModel,
    ct: Volume,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    device: str | torch.device = "cpu",
    postprocessing: bool = True,
    min_tumor_radius_mm: float = 3.0,
    restrict_to_organ: bool = True,
) -> np.ndarray:
    """Labels (0 background, 1 organ, 2 tumour) on ``ct``'s own grid.

    The CT is sampled onto the model's working space, segmented by Gaussian-weighted sliding windows of the model's
    patch size, and the class probabilities are sampled back onto the input grid (trilinear) before the argmax.
    """
    from monai.inferers import sliding_window_inference

    config = model.config
    image, affine = working_image(ct, tuple(config.window), float(config.spacing))
    tensor = torch.from_numpy(image)[None, None].to(device)
    model = model.to(device).eval()
    logits = sliding_window_inference(
        tensor, tuple(config.roi_size), sw_batch_size, model, overlap=overlap, mode="gaussian"
    )
    probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    native = np.stack([sample(p, affine, ct.affine, ct.shape, order=1, cval=0.0) for p in probabilities])
    labels = native.argmax(0).astype(np.uint8)
    if postprocessing:
        organ_components = ORGAN_COMPONENTS.get(str(config.organ), 1)
        labels = postprocess(labels, ct.spacing, min_tumor_radius_mm, restrict_to_organ, organ_components)
    return labels
