"""``realism.png``: axial patches through lesion centres, one row per group, and histograms of the key features.

Each patch is shown relative to its own organ's core mean (organ mean = the same grey in every row, window
−125…+75 HU around it), so a lesion in a non-contrast liver and one in an enhanced liver can be compared by eye.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..windowing import scale_window

PATCH = 96  # pixels per 48 mm patch
PER_ROW = 8
RELATIVE_WINDOW = (-125.0, 75.0)
COLOURS = [(230, 230, 230), (255, 120, 60), (80, 170, 255), (120, 220, 120), (220, 120, 220), (240, 220, 80)]
HISTOGRAM = (300, 150)
FEATURES = ("contrast_to_organ_mean", "contrast_to_organ_std", "internal_std_to_organ_std", "stride_artifact")
_LABEL_WIDTH = 150


def _patch_image(patch: np.ndarray) -> Image.Image:
    grey = scale_window(patch, RELATIVE_WINDOW, (0.0, 255.0)).astype(np.uint8)
    # Radiological display of an axial plane: patient right on the image left, anterior at the top.
    return Image.fromarray(grey.T[::-1, ::-1]).resize((PATCH, PATCH), Image.BILINEAR)


def _examples(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to :data:`PER_ROW` early lesions spread over the size range (deterministic)."""
    early = sorted((r for r in records if r["diameter_mm"] < 20 and "_patch" in r), key=lambda r: r["diameter_mm"])
    if len(early) <= PER_ROW:
        return early
    return [early[int(i)] for i in np.linspace(0, len(early) - 1, PER_ROW)]


def _histogram(draw: ImageDraw.ImageDraw, origin: tuple[int, int], feature: str, groups: dict[str, list]) -> None:
    x0, y0 = origin
    width, height = HISTOGRAM
    values = {g: np.asarray([r[feature] for r in rs if np.isfinite(r[feature])]) for g, rs in groups.items()}
    joined = np.concatenate([v for v in values.values() if v.size] or [np.zeros(1)])
    low, high = np.percentile(joined, [1, 99]) if joined.size > 1 else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, 21)
    draw.text((x0, y0), feature, fill=(255, 255, 255))
    base = y0 + height
    draw.line([(x0, base), (x0 + width, base)], fill=(120, 120, 120))
    for position, data in enumerate(values.values()):
        if not data.size:
            continue
        counts, _ = np.histogram(np.clip(data, low, high), edges)
        density = counts / counts.sum()
        points = [
            (x0 + width * (i + 0.5) / 20, base - 4 - (height - 20) * d / max(density.max(), 1e-9))
            for i, d in enumerate(density)
        ]
        draw.line(points, fill=COLOURS[position % len(COLOURS)], width=2)
    draw.text((x0, base + 2), f"{low:.2f}", fill=(160, 160, 160))
    draw.text((x0 + width - 40, base + 2), f"{high:.2f}", fill=(160, 160, 160))


def realism_sheet(groups: dict[str, list[dict[str, Any]]]) -> Image.Image:
    """The sheet for measured groups (records of :func:`difftumor.evaluation.realism.measure_case`)."""
    rows = list(groups.items())
    width = _LABEL_WIDTH + PER_ROW * PATCH
    hist_rows = int(np.ceil(len(FEATURES) / 2))
    height = len(rows) * (PATCH + 6) + 24 + hist_rows * (HISTOGRAM[1] + 30) + 10
    sheet = Image.new("RGB", (max(width, 2 * HISTOGRAM[0] + 40), height), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    y = 4
    for position, (group, records) in enumerate(rows):
        draw.text((4, y + PATCH // 2 - 12), group, fill=COLOURS[position % len(COLOURS)])
        draw.text((4, y + PATCH // 2 + 2), f"{len(records)} lesions", fill=(160, 160, 160))
        for column, record in enumerate(_examples(records)):
            sheet.paste(_patch_image(record["_patch"]), (_LABEL_WIDTH + column * PATCH, y))
            draw.text((_LABEL_WIDTH + column * PATCH + 2, y + 2), f"{record['diameter_mm']:.0f} mm", fill=(255, 220, 0))
        y += PATCH + 6
    draw.text(
        (4, y),
        "patches: 48 mm axial, organ mean = mid grey (window -125..+75 HU relative); histograms: all lesions",
        fill=(200, 200, 200),
    )
    y += 24
    for index, feature in enumerate(FEATURES):
        _histogram(
            draw, (20 + (index % 2) * (HISTOGRAM[0] + 20), y + (index // 2) * (HISTOGRAM[1] + 30)), feature, groups
        )
    return sheet
