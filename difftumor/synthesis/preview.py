"""``preview.png``: a sheet a radiologist can read — per tumour, where it is in the whole slice, then each plane
through its centre before and after synthesis, in radiological convention (patient right on the image left; anterior
left on sagittal planes), with orientation letters, a 1 cm scale bar, and the tumour outline drawn just outside its
edge so the edge itself stays visible.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..windowing import DEFAULT_WINDOW, scale_window
from .engine import SynthesizedTumor

PANEL = 224  # pixels per plane panel
_HEADER = 20
_OUTLINE = (255, 60, 60)
_TEXT = (255, 220, 0)
# Orientation letters (left, right, top, bottom) of each view after _radiological().
_LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def _grey(plane: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW) -> np.ndarray:
    return scale_window(plane, window, (0.0, 255.0)).astype(np.uint8)


def _radiological(plane: np.ndarray) -> np.ndarray:
    """A plane of a RAS+ array (first axis -> image columns) as displayed: rows = second axis with anterior/superior
    at the top, columns reversed so that the patient's right (or anterior, for sagittal) is on the image left."""
    return plane.T[::-1, ::-1]


def _outline_beside(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixels of a 2-px ring just outside ``mask`` at display resolution."""
    big = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    return ndimage.binary_dilation(big, iterations=2) & ~big


def _panel(
    plane: np.ndarray,
    mask: np.ndarray | None,
    view: str,
    mm_per_voxel: tuple[float, float],
    colour: tuple[int, int, int] = _OUTLINE,
) -> Image.Image:
    grey = _radiological(_grey(plane))
    height_mm, width_mm = grey.shape[0] * mm_per_voxel[1], grey.shape[1] * mm_per_voxel[0]
    scale = PANEL / max(height_mm, width_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    rgb = np.repeat(np.asarray(Image.fromarray(grey).resize(size, Image.BILINEAR))[..., None], 3, axis=2)
    if mask is not None and mask.any():
        rgb[_outline_beside(_radiological(mask), size)] = colour
    panel = Image.new("RGB", (PANEL, PANEL), (0, 0, 0))
    panel.paste(Image.fromarray(rgb), ((PANEL - size[0]) // 2, (PANEL - size[1]) // 2))
    draw = ImageDraw.Draw(panel)
    left, right, top, bottom = _LETTERS[view]
    draw.text((3, PANEL // 2 - 6), left, fill=_TEXT)
    draw.text((PANEL - 10, PANEL // 2 - 6), right, fill=_TEXT)
    draw.text((PANEL // 2 - 3, 2), top, fill=_TEXT)
    draw.text((PANEL // 2 - 3, PANEL - 13), bottom, fill=_TEXT)
    bar = 10 * scale  # 1 cm
    draw.line([(6, PANEL - 8), (6 + bar, PANEL - 8)], fill=(255, 255, 255), width=2)
    draw.text((8 + bar, PANEL - 15), "1 cm", fill=(255, 255, 255))
    return panel


def _locator(ct: np.ndarray, affine: np.ndarray, tumor: SynthesizedTumor) -> Image.Image:
    """The whole axial slice of the output CT through the tumour centre, with a box around the tumour."""
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(ct, orientation)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(orientation, ct.shape)
    centre = np.linalg.solve(ras_affine, [*tumor.center_mm, 1.0])[:3]
    index = np.clip(np.round(centre).astype(int), 0, np.asarray(ras.shape) - 1)
    spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(0))
    box = np.zeros(ras.shape[:2], bool)
    half = np.maximum(np.ceil((tumor.diameter_mm / 2 + 6) / spacing[:2]).astype(int), 2)
    low, high = np.maximum(index[:2] - half, 0), np.minimum(index[:2] + half, np.asarray(ras.shape[:2]) - 1)
    box[low[0] : high[0] + 1, low[1] : high[1] + 1] = True
    # The outline beside a filled box is a frame around the tumour's neighbourhood, in the locator's own colour.
    return _panel(ras[:, :, index[2]], box, "axial", (float(spacing[0]), float(spacing[1])), colour=(0, 200, 255))


def preview_image(
    tumors: list[SynthesizedTumor], ct: np.ndarray | None = None, affine: np.ndarray | None = None
) -> Image.Image:
    """One row per tumour: whole-slice locator (when ``ct`` and ``affine`` are given), then axial, coronal and
    sagittal planes through its centre, each before and after, from the 1 mm RAS working crop."""
    views = ("axial", "coronal", "sagittal")
    columns = (["locator"] if ct is not None else []) + [f"{v} {t}" for v in views for t in ("before", "after")]
    sheet = Image.new("RGB", (len(columns) * PANEL, max(1, len(tumors)) * (PANEL + 2 * _HEADER)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for row, tumor in enumerate(tumors):
        x, y, z = tumor.crop_center
        top = row * (PANEL + 2 * _HEADER)
        centre = ", ".join(f"{v:.0f}" for v in tumor.center_mm)
        draw.text(
            (4, top + 3),
            f"tumour {tumor.index}: {tumor.size_class}, {tumor.diameter_mm:.1f} mm, {tumor.synthesizer}, "
            f"centre ({centre}) mm RAS",
            fill=(255, 255, 255),
        )
        panels = []
        if ct is not None:
            panels.append(_locator(ct, affine, tumor))
        before = tumor.crop_before if tumor.crop_before is not None else tumor.crop
        for view, cut in zip(views, ((slice(None), slice(None), z), (slice(None), y, slice(None)), (x, ...))):
            mask = tumor.crop_mask[cut]
            panels.append(_panel(before[cut], None, view, (1.0, 1.0)))
            panels.append(_panel(tumor.crop[cut], mask, view, (1.0, 1.0)))
        for column, (panel, name) in enumerate(zip(panels, columns)):
            sheet.paste(panel, (column * PANEL, top + 2 * _HEADER))
            draw.text((column * PANEL + 4, top + _HEADER + 3), name, fill=_TEXT)
    return sheet
