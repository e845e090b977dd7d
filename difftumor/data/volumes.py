"""Read and write CT volumes and label maps with their geometry (NIfTI via nibabel, DICOM series via MONAI).

Arrays are kept in the file's own voxel order and dtype; ``affine`` maps voxel indices to world millimetres in
the NIfTI/RAS+ convention (MONAI converts DICOM's LPS). Everything a user can get wrong about a file is reported
as a :class:`DiffTumorInputError` naming the file.
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DiffTumorInputError
from ..formats import looks_like_dicom
from ..limits import check_volume_size
from .dicom import series_files

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Volume:
    """A 3-D image on its own grid.

    Attributes:
        array: voxel values, shape ``(X, Y, Z)``: HU for CT (stored dtype kept when unscaled), integer labels for masks.
        affine: ``(4, 4)`` float64 voxel-index -> world (RAS+, mm) matrix.
        path: where it was read from.
        header: the NIfTI header (so outputs can be written like the input), or ``None`` for DICOM.
        source_format: ``"nifti"`` or ``"dicom"``.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    header: nib.Nifti1Header | None = None
    source_format: str = "nifti"
    extra: dict = field(default_factory=dict)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along each array axis in mm."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]


def _dicom_source(path: Path, series: str | None) -> tuple[Path, str | None] | None:
    """``(series folder, series UID)`` when ``path`` is a DICOM input — a folder, or one file of a series (which
    then selects its own series) — else ``None`` (a NIfTI file)."""
    if path.is_dir():
        return path, series
    if not path.name.lower().endswith(NIFTI_SUFFIXES) and looks_like_dicom(path):
        return path.parent, series or _series_of(path)
    return None


def _open_nifti(path: Path, what: str) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI image object (header only, nothing read yet), refused above the memory limit."""
    try:
        image = nib.load(str(path))
    except Exception as error:  # noqa: BLE001 — nibabel raises several types for non-images
        raise DiffTumorInputError(
            f"{what} {path} is not a readable NIfTI image ({_short(error)})",
            "pass a .nii/.nii.gz file or a DICOM series folder",
        ) from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DiffTumorInputError(f"{what} {path} is not a NIfTI image", "convert it to NIfTI or pass a DICOM folder")
    check_volume_size(image.header.get_data_shape(), what, path)
    return image


def _read_nifti(path: Path, what: str) -> Volume:
    image = _open_nifti(path, what)
    try:
        array = np.asanyarray(image.dataobj)
    except (EOFError, OSError, zlib.error, ValueError) as error:
        raise DiffTumorInputError(
            f"{what} {path} cannot be read to the end ({_short(error)})",
            "the file is truncated or corrupt; re-export it",
        ) from None
    # nibabel moves the header's scaling into the data proxy: keep it, so outputs can say how the file stored values
    scaling = (float(getattr(image.dataobj, "slope", 1.0)), float(getattr(image.dataobj, "inter", 0.0)))
    extra = {"scaling": scaling, "stored_dtype": np.dtype(image.get_data_dtype())}
    return Volume(np.asarray(array), image.affine.astype(np.float64), path, image.header.copy(), "nifti", extra)


def _read_dicom_series(path: Path, series: str | None, what: str) -> Volume:
    import re

    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    files = series_files(path, what, series)
    # MONAI stacks every DICOM file of a folder; the regex limits it to the checked slices of the chosen series.
    only = "|".join(re.escape(str(f)) for f in files)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI warns that GPU DICOM decoders are absent
            reader = PydicomReader(fname_regex=f"^(?:{only})$")
            data = LoadImage(reader=reader, image_only=True, dtype=None)(str(path))
    except Exception as error:  # noqa: BLE001
        raise DiffTumorInputError(
            f"{what} {path} is not a readable DICOM series ({_short(error)})",
            "pass a folder holding one DICOM series, or a NIfTI file",
        ) from None
    array = np.asarray(data)
    if np.all(np.mod(array, 1) == 0) and np.abs(array).max(initial=0) < 32768:
        array = array.astype(np.int16)
    return Volume(array, np.asarray(data.affine, dtype=np.float64), path, None, "dicom")


def probe_volume(path: str | os.PathLike, what: str = "image", series: str | None = None) -> None:
    """Check what :func:`load_volume` would refuse that a header tells — existence, format, dimensions, size, the
    DICOM series — without reading the voxels (batch runs check every case before writing the first)."""
    path = Path(path)
    if not path.exists():
        raise DiffTumorInputError(f"{what} {path} does not exist", "check the path")
    dicom = _dicom_source(path, series)
    if dicom is not None:
        folder, uid = dicom
        series_files(folder, what, uid)
        return
    shape = tuple(_open_nifti(path, what).header.get_data_shape())
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 2:  # as load_volume refuses it
        raise DiffTumorInputError(
            f"{what} {path} has shape {shape}, not a 3-D volume",
            "pass a 3-D CT volume (a single 2-D slice cannot be used)",
        )


def _series_of(path: Path) -> str | None:
    import pydicom

    try:
        return str(pydicom.dcmread(str(path), stop_before_pixels=True).SeriesInstanceUID)
    except Exception:  # noqa: BLE001 — the series check names the file properly
        return None


#: No CT holds values beyond this in HU (dense metal is about 3,000–30,000 depending on the scanner).
HU_LIMIT = 100_000.0


def check_hounsfield(volume: Volume, what: str = "CT") -> None:
    """Refuse a CT whose values cannot be Hounsfield units (normalised to [0, 1] / [-1, 1], or 8-bit display
    levels): tumours painted in HU into such an image come out meaningless."""
    array = volume.array
    low, high = float(array.min()), float(array.max())
    if low >= 0.0:
        raise DiffTumorInputError(
            f"{what} {volume.path} has no value below 0 (range [{low:.4g}, {high:.4g}]), so it is not in Hounsfield "
            "units: a CT in HU holds air (about -1000) and fat (about -100)",
            "pass the CT in HU (undo any rescaling; raw scanner values need their RescaleIntercept, often -1024)",
        )
    if high <= 1.0 and low >= -1.0:
        raise DiffTumorInputError(
            f"{what} {volume.path} holds values in [{low:.3g}, {high:.3g}], not Hounsfield units "
            "(air is about -1000, liver 40-160)",
            "pass the original CT in HU, not a normalised copy",
        )
    if max(abs(low), abs(high)) > HU_LIMIT:
        raise DiffTumorInputError(
            f"{what} {volume.path} holds values up to {max(abs(low), abs(high)):.3g}, far beyond Hounsfield units "
            f"(air -1000 to metal ~{HU_LIMIT:.0f})",
            "check the header's scl_slope/scl_inter (or the DICOM RescaleSlope/Intercept) and re-export the CT",
        )
    if array.dtype in (np.uint8, np.int8):
        raise DiffTumorInputError(
            f"{what} {volume.path} is stored as 8-bit values [{low:.0f}, {high:.0f}], display levels rather than HU",
            "pass the original CT in HU (16-bit or float NIfTI, or the DICOM series)",
        )


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:150]


def load_volume(path: str | os.PathLike, what: str = "image", series: str | None = None) -> Volume:
    """Load a NIfTI file or a DICOM series (a folder, or one file of the series) as a 3-D :class:`Volume`.

    Args:
        path: file or folder.
        what: how to name it in error messages (``"CT"``, ``"organ mask"``...).
        series: DICOM SeriesInstanceUID to read from a folder holding several (default: the only one, or the
            series of the file given).

    Raises:
        DiffTumorInputError: missing/unreadable/truncated/non-image files, 2-D images, non-finite values, more
            voxels than :func:`difftumor.limits.max_volume_voxels`, a DICOM folder with several series, a missing
            or damaged slice.
    """
    path = Path(path)
    if not path.exists():
        raise DiffTumorInputError(f"{what} {path} does not exist", "check the path")
    if not os.access(path, os.R_OK):
        raise DiffTumorInputError(f"{what} {path} is not readable", "check its permissions")
    dicom = _dicom_source(path, series)
    volume = _read_dicom_series(*dicom, what) if dicom is not None else _read_nifti(path, what)

    array = volume.array
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 2:
        raise DiffTumorInputError(
            f"{what} {path} has shape {tuple(volume.array.shape)}, not a 3-D volume",
            "pass a 3-D CT volume (a single 2-D slice cannot be used)",
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DiffTumorInputError(
            f"{what} {path} contains NaN or infinite values", "fill them (e.g. with -1024 HU) before synthesis"
        )
    if not np.isfinite(volume.affine).all() or abs(np.linalg.det(volume.affine[:3, :3])) < 1e-9:
        raise DiffTumorInputError(f"{what} {path} has an invalid (singular) affine", "fix the image header")
    volume.array = array
    return volume


def stores_whole_numbers(volume: Volume) -> bool:
    """Whether the file holds integers whose scaling gives whole numbers (e.g. uint16 with ``scl_inter`` −1024):
    its values are integer HU even though they load as floats."""
    slope, inter = volume.extra.get("scaling", (1.0, 0.0))
    stored = volume.extra.get("stored_dtype", volume.array.dtype)
    return stored.kind in "iu" and float(slope).is_integer() and float(inter).is_integer()


def as_stored(array: np.ndarray, reference: Volume) -> np.ndarray:
    """``array`` (values of ``reference``'s kind, e.g. a painted CT) in the form to write it: as it is, except for a
    reference whose integers on disk carry a scaling (``scl_slope``/``scl_inter``). Its values are then written
    unscaled: as int16 when the scaling gives whole numbers in int16's range (integer HU, painted voxels rounded as
    in any integer CT; every other voxel's value unchanged), else as float32."""
    slope, inter = reference.extra.get("scaling", (1.0, 0.0))
    stored = reference.extra.get("stored_dtype", array.dtype)
    if array.dtype.kind != "f" or (slope == 1 and inter == 0) or stored.kind not in "iu":
        return array
    if stores_whole_numbers(reference) and array.min() >= -32768.5 and array.max() <= 32767.5:
        return np.rint(array).astype(np.int16)
    return array.astype(np.float32)


def save_volume(array: np.ndarray, reference: Volume, path: str | os.PathLike, description: str | None = None) -> None:
    """Write ``array`` as NIfTI with ``reference``'s affine (and header, for NIfTI inputs) at ``path``.

    The stored dtype is ``array``'s; scaling is reset to identity so stored values are the given values.
    ``description`` goes into the header's ``descrip`` (``difftumor ...`` marks a file difftumor may overwrite).
    """
    if reference.header is not None:
        header = reference.header.copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(1.0, 0.0)
        image = nib.Nifti1Image(array, reference.affine, header=header)
        qform, qcode = reference.header.get_qform(coded=True)
        sform, scode = reference.header.get_sform(coded=True)
        image.set_qform(qform if qcode else reference.affine, int(qcode or 1))
        image.set_sform(sform if scode else reference.affine, int(scode or 1))
    else:
        image = nib.Nifti1Image(array, reference.affine)
        image.set_qform(reference.affine, 1)
        image.set_sform(reference.affine, 1)
    if description is not None:
        image.header["descrip"] = description.encode()[:79]
    nib.save(image, str(path))
