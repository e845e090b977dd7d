"""Choose and check the slices of one DICOM series before it is read, so a folder never becomes a wrong volume.

A folder may hold several series (a scout, two reconstructions) and may miss a slice or hold a damaged one; a reader
that stacks whatever it finds returns a volume with the wrong extent or spacing and no error. Here: one series per
read (``series`` or the only one present), every file readable with its pixel data complete, one orientation, one
size, and slices evenly spaced along the slice normal; anything else is an error naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffTumorInputError
from ..limits import check_volume_size

_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


@dataclass
class _Slice:
    path: Path
    series: str
    description: str
    orientation: np.ndarray
    position: np.ndarray
    rows: int
    columns: int
    pixel_spacing: tuple[float, ...] = ()


def _read_slice(path: Path, what: str, folder: Path) -> _Slice:
    import pydicom

    def unreadable(reason: str) -> DiffTumorInputError:
        return DiffTumorInputError(
            f"{what} {folder}: slice {path.name} is unreadable ({reason})",
            "replace it with an intact copy, or remove files that are not slices of the series",
        )

    try:
        dataset = pydicom.dcmread(str(path))
    except Exception as error:  # noqa: BLE001 — pydicom raises many types for damaged files
        text = str(error).strip()
        raise unreadable(text.splitlines()[0][:120] if text else type(error).__name__) from None
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        orientation = np.asarray([float(v) for v in dataset.ImageOrientationPatient], dtype=np.float64)
        position = np.asarray([float(v) for v in dataset.ImagePositionPatient], dtype=np.float64)
        series = str(dataset.SeriesInstanceUID)
    except (AttributeError, TypeError, ValueError) as error:
        raise unreadable(f"missing geometry: {error}") from None
    if "PixelData" not in dataset:
        raise unreadable("no pixel data")
    syntax = str(getattr(dataset.file_meta, "TransferSyntaxUID", "")) if hasattr(dataset, "file_meta") else ""
    if syntax in _UNCOMPRESSED or not syntax:
        expected = rows * columns * int(getattr(dataset, "SamplesPerPixel", 1)) * int(dataset.BitsAllocated) // 8
        if len(dataset.PixelData) < expected:
            raise unreadable(f"pixel data cut short: {len(dataset.PixelData)} of {expected} bytes")
    if orientation.shape != (6,) or position.shape != (3,):
        raise unreadable("malformed ImageOrientationPatient/ImagePositionPatient")
    description = str(getattr(dataset, "SeriesDescription", "")).strip()
    try:
        pixel_spacing = tuple(float(v) for v in dataset.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        raise unreadable("missing or malformed PixelSpacing") from None
    return _Slice(path, series, description, orientation, position, rows, columns, pixel_spacing)


def series_files(folder: str | Path, what: str = "CT", series: str | None = None) -> list[Path]:
    """The checked files of one DICOM series in ``folder``, sorted along the slice normal.

    Args:
        folder: the folder holding the slices (hidden files and ``DICOMDIR`` are ignored).
        what: how to name the image in messages.
        series: the SeriesInstanceUID to read when the folder holds several.

    Raises:
        DiffTumorInputError: no slices, several series and none chosen, an unreadable or missing slice, slices of
            different orientation or size, uneven spacing, or more voxels than the memory limit.
    """
    folder = Path(folder)
    candidates = [
        path
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.name.upper() != "DICOMDIR"
    ]
    if not candidates:
        raise DiffTumorInputError(f"{what} folder {folder} holds no files", "pass a folder with one DICOM series")
    slices = [_read_slice(path, what, folder) for path in candidates]
    by_series: dict[str, list[_Slice]] = {}
    for item in slices:
        by_series.setdefault(item.series, []).append(item)
    if series is not None:
        if series not in by_series:
            raise DiffTumorInputError(
                f"{what} folder {folder} holds no series {series}", f"series present: {_describe(by_series)}"
            )
        chosen = by_series[series]
    elif len(by_series) > 1:
        raise DiffTumorInputError(
            f"{what} folder {folder} holds {len(by_series)} DICOM series ({_describe(by_series)})",
            "choose one with --series UID, or give each series its own folder",
        )
    else:
        chosen = next(iter(by_series.values()))
    return [item.path for item in _check_geometry(chosen, what, folder)]


def _describe(by_series: dict[str, list[_Slice]]) -> str:
    parts = []
    for uid, items in by_series.items():
        label = f" '{items[0].description}'" if items[0].description else ""
        parts.append(f"{uid}{label}: {len(items)} slice{'s' if len(items) != 1 else ''}")
    return "; ".join(parts)


def _check_geometry(slices: list[_Slice], what: str, folder: Path) -> list[_Slice]:
    first = slices[0]
    if len(slices) < 2:
        raise DiffTumorInputError(
            f"{what} folder {folder} holds a single slice ({first.path.name})", "pass a 3-D series of many slices"
        )
    for item in slices[1:]:
        if not np.allclose(item.orientation, first.orientation, atol=1e-4):
            raise DiffTumorInputError(
                f"{what} slice {item.path.name} in {folder} is oriented unlike {first.path.name}",
                "the folder mixes series; keep one series per folder",
            )
        if (item.rows, item.columns) != (first.rows, first.columns):
            raise DiffTumorInputError(
                f"{what} slice {item.path.name} in {folder} is {item.rows} × {item.columns}, "
                f"not {first.rows} × {first.columns} like {first.path.name}",
                "the folder mixes series; keep one series per folder",
            )
        if not np.allclose(item.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise DiffTumorInputError(
                f"{what} slice {item.path.name} in {folder} has pixel spacing {list(item.pixel_spacing)} mm, not "
                f"{list(first.pixel_spacing)} like {first.path.name}",
                "the folder mixes series or reconstructions; keep one series per folder",
            )
    check_volume_size((first.rows, first.columns, len(slices)), what, folder)
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    ordered = sorted(slices, key=lambda item: float(item.position @ normal))
    depth = np.array([float(item.position @ normal) for item in ordered])
    steps = np.diff(depth)
    spacing = float(np.median(steps))
    for index, step in enumerate(steps):
        a, b = ordered[index].path.name, ordered[index + 1].path.name
        if step < 1e-3:
            raise DiffTumorInputError(
                f"{what} slices {a} and {b} in {folder} lie at the same position ({depth[index]:.2f} mm)",
                "remove the duplicate, or keep one series per folder",
            )
        if abs(step - spacing) > 0.01 * spacing + 1e-3:
            missing = round(step / spacing) - 1
            problem = (
                f"{missing} slice{'s are' if missing > 1 else ' is'} missing between {a} and {b}"
                if missing >= 1
                else f"slices {a} and {b} are {step:.3f} mm apart where the others are {spacing:.3f} mm"
            )
            raise DiffTumorInputError(
                f"{what} series in {folder}: {problem} (at {depth[index]:.2f}–{depth[index + 1]:.2f} mm)",
                "export the complete series again; an uneven series would give a volume with wrong geometry",
            )
    return ordered
