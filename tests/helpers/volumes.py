"""Test volumes built from the real CT kept in the repository: reoriented/anisotropic copies and DICOM series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from difftumor.assets import DEMO_CASE
from tests.conftest import DATA

PATIENT_A_CT = DEMO_CASE / "ct.nii.gz"
PATIENT_A_ORGANS = DEMO_CASE / "organs.nii.gz"
PATIENT_A_SMALL_CT = DATA / "totalseg_example" / "example_ct_sm.nii.gz"
PATIENT_A_SMALL_ORGANS = DATA / "totalseg_example" / "example_seg.nii.gz"
LITS_CT = DATA / "lits117_upper" / "lits117_upper_ct.nii.gz"
LITS_LABEL = DATA / "lits117_upper" / "lits117_upper_label.nii.gz"
LIVER = 5  # TotalSegmentator v2 id


def reoriented_anisotropic_copy(source: Path, out: Path, dtype=np.int16) -> Path:
    """A copy of ``source`` with every other axial slice (3 × 3 × 6 mm), stored in 'PIL'-like axis order with flips.

    World geometry is kept: the affine is transformed with the array, so the copy covers the same anatomy.
    """
    image = nib.load(str(source))
    array = np.asanyarray(image.dataobj)[:, :, ::2]
    affine = image.affine.copy()
    affine[:3, 2] *= 2
    # Permute axes (x, y, z) -> (y, z, x) and flip the new first and last axes.
    array = np.transpose(array, (1, 2, 0))
    affine = affine[:, [1, 2, 0, 3]]
    for axis in (0, 2):
        array = np.flip(array, axis=axis)
        affine[:3, 3] = affine[:3, 3] + affine[:3, axis] * (array.shape[axis] - 1)
        affine[:3, axis] = -affine[:3, axis]
    copy = nib.Nifti1Image(np.ascontiguousarray(array).astype(dtype), affine)
    copy.set_qform(affine, 1)
    copy.set_sform(affine, 1)
    nib.save(copy, str(out))
    return out


def write_dicom_series(source: Path, folder: Path) -> Path:
    """Write a NIfTI CT as a DICOM CT series (one file per axial slice, LPS patient coordinates)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    image = nib.load(str(source))
    array = np.asanyarray(image.dataobj)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(0))
    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(array.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "A", k + 1
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series, study, frame
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0, 0, k, 1]))[:3]]
        row, column = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
        ds.ImageOrientationPatient = [float(v) for v in [*row, *column]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = array.shape[1], array.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(array[:, :, k].T.astype(np.int16)).tobytes()
        pydicom.dcmwrite(str(folder / f"slice_{k:03d}.dcm"), ds, enforce_file_format=True)
    return folder
