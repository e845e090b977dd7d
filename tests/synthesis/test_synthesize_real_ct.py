"""`difftumor synthesize` on real CT (patient A, TotalSegmentator example): geometry, untouched voxels, counts,
sizes, placement, attenuation, determinism; NIfTI in any orientation and DICOM series."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from difftumor.cli.main import main as cli
from difftumor.synthesis.geometry import SIZE_CLASSES
from tests.helpers.pipelines import save_tiny_pipeline
from tests.helpers.volumes import (
    LIVER,
    PATIENT_A_CT,
    PATIENT_A_ORGANS,
    PATIENT_A_SMALL_CT,
    PATIENT_A_SMALL_ORGANS,
    reoriented_anisotropic_copy,
    write_dicom_series,
)


def _run(*args) -> int:
    return cli(["synthesize", *map(str, args)])


def _load(folder):
    ct = nib.load(str(folder / "ct.nii.gz"))
    labels = nib.load(str(folder / "label.nii.gz"))
    return ct, labels, json.loads((folder / "tumors.json").read_text())


@pytest.fixture(scope="module")
def handcrafted_liver(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("handcrafted") / "case"
    code = _run(
        PATIENT_A_CT,
        "--organ-mask",
        PATIENT_A_ORGANS,
        "--organ-label",
        LIVER,
        "--organ",
        "liver",
        "--synthesizer",
        "handcrafted",
        "--size",
        "small",
        "--count",
        3,
        "--seed",
        11,
        "--out",
        out,
    )
    assert code == 0
    return out


def test_outputs_keep_the_input_geometry_and_untouched_voxels(handcrafted_liver):
    original = nib.load(str(PATIENT_A_CT))
    ct, labels, manifest = _load(handcrafted_liver)
    assert ct.shape == original.shape and labels.shape == original.shape
    assert np.array_equal(ct.affine, original.affine) and np.array_equal(labels.affine, original.affine)
    assert ct.get_data_dtype() == original.get_data_dtype()
    assert ct.header.get_sform(coded=True)[1] == original.header.get_sform(coded=True)[1]
    before, after = np.asanyarray(original.dataobj), np.asanyarray(ct.dataobj)
    changed = before != after
    assert 0 < changed.sum() == manifest["changed_voxels"] < 0.001 * before.size
    # Every change lies within 5 voxels of a tumour; everything else is bit-identical.
    tumour = np.asanyarray(labels.dataobj) == manifest["tumor_label"]
    assert not (changed & ~ndimage.binary_dilation(tumour, iterations=5)).any()


def test_count_size_class_and_placement_inside_the_liver(handcrafted_liver):
    _, labels, manifest = _load(handcrafted_liver)
    organ_labels = np.asanyarray(nib.load(str(PATIENT_A_ORGANS)).dataobj)
    tumours = manifest["tumors"]
    assert len(tumours) == 3 and manifest["count"] == 3
    low, high = SIZE_CLASSES["small"]["radius"]
    for tumour in tumours:
        assert tumour["size_class"] == "small" and not tumour["exophytic"]
        assert 2 * low * 0.6 <= tumour["diameter_mm"] <= 2 * high * 1.3
        assert tumour["volume_mm3"] == pytest.approx(4 / 3 * np.pi * (tumour["diameter_mm"] / 2) ** 3, rel=1e-3)
        # The centre (world mm) falls inside the liver of the input map.
        ijk = np.round(np.linalg.inv(labels.affine) @ np.r_[tumour["center_mm"], 1])[:3].astype(int)
        assert organ_labels[tuple(ijk)] == LIVER
    tumour_voxels = np.asanyarray(labels.dataobj) == manifest["tumor_label"]
    assert manifest["tumor_label"] == int(organ_labels.max()) + 1
    assert (organ_labels[tumour_voxels] == LIVER).mean() > 0.95  # label resampling at 3 mm may graze the edge
    kept = ~tumour_voxels
    assert np.array_equal(np.asanyarray(labels.dataobj)[kept], organ_labels[kept])


def test_handcrafted_tumours_are_darker_than_the_liver_relative_to_its_own_intensity(handcrafted_liver):
    from difftumor.synthesis.intensity import CONTRAST_SPREAD, expected_contrast_hu

    original = np.asanyarray(nib.load(str(PATIENT_A_CT)).dataobj).astype(float)
    ct, labels, manifest = _load(handcrafted_liver)
    after = np.asanyarray(ct.dataobj).astype(float)
    tumour = np.asanyarray(labels.dataobj) == manifest["tumor_label"]
    drop = original[tumour] - after[tumour]
    assert (drop >= 0).all()
    for record in manifest["tumors"]:
        # the drop follows the organ core measured in the tumour's crop (non-contrast liver: about 45 HU)
        mean, std = record["organ_core_hu"]
        assert 30 <= mean <= 60
        expected = expected_contrast_hu(mean, std)
        assert CONTRAST_SPREAD[0] * expected - 0.01 <= record["contrast_hu"] <= CONTRAST_SPREAD[1] * expected + 0.01
    contrasts = [t["contrast_hu"] for t in manifest["tumors"]]
    # The 3 mm grid averages the soft edge: the mean drop on it is a fraction of the contrast, never more than twice.
    assert drop.max() <= 2 * max(contrasts)
    assert 0.1 * min(contrasts) <= drop.mean() <= max(contrasts)
    liver = np.asanyarray(nib.load(str(PATIENT_A_ORGANS)).dataobj) == LIVER
    assert after[tumour].mean() < original[liver & ~tumour].mean() - 5


def test_same_seed_same_bytes_and_other_seed_differs(handcrafted_liver, tmp_path):
    args = [
        PATIENT_A_CT,
        "--organ-mask",
        PATIENT_A_ORGANS,
        "--organ-label",
        LIVER,
        "--synthesizer",
        "handcrafted",
        "--size",
        "small",
        "--count",
        3,
    ]
    assert _run(*args, "--seed", 11, "--out", tmp_path / "again") == 0
    for name in ("ct.nii.gz", "label.nii.gz", "tumors.json", "preview.png"):
        assert (tmp_path / "again" / name).read_bytes() == (handcrafted_liver / name).read_bytes(), name
    assert _run(*args, "--seed", 12, "--out", tmp_path / "other") == 0
    assert (tmp_path / "other" / "ct.nii.gz").read_bytes() != (handcrafted_liver / "ct.nii.gz").read_bytes()


def test_preview_shows_locator_and_three_planes_before_and_after_per_tumour(handcrafted_liver):
    from PIL import Image

    from difftumor.synthesis.preview import PANEL

    preview = Image.open(handcrafted_liver / "preview.png")
    assert preview.size == (7 * PANEL, 3 * (PANEL + 40))  # three tumours: locator + 3 planes × (before, after)
    pixels = np.asarray(preview.convert("RGB"))
    red = (pixels[..., 0] == 255) & (pixels[..., 1] == 60)
    assert red.sum() > 100  # the outlines are drawn


def test_non_ras_anisotropic_scan_round_trip_with_a_mask_on_another_grid(tmp_path, data_dir):
    ct_copy = reoriented_anisotropic_copy(PATIENT_A_CT, tmp_path / "ct_pil.nii.gz")
    original = nib.load(str(ct_copy))
    assert nib.aff2axcodes(original.affine) != ("R", "A", "S")
    assert len(set(np.round(original.header.get_zooms(), 3))) == 2
    out = tmp_path / "out"
    # The organ map stays on the original 3 mm RAS grid: it is resampled by affine.
    assert (
        _run(
            ct_copy,
            "--organ-mask",
            PATIENT_A_ORGANS,
            "--organ-label",
            LIVER,
            "--synthesizer",
            "handcrafted",
            "--size",
            "15",
            "--count",
            2,
            "--seed",
            3,
            "--out",
            out,
        )
        == 0
    )
    ct, labels, manifest = _load(out)
    assert np.array_equal(ct.affine, original.affine) and ct.shape == original.shape
    assert ct.get_data_dtype() == np.int16 and nib.aff2axcodes(ct.affine) == nib.aff2axcodes(original.affine)
    before, after = np.asanyarray(original.dataobj), np.asanyarray(ct.dataobj)
    tumour = np.asanyarray(labels.dataobj) == manifest["tumor_label"]
    assert tumour.any() and len(manifest["tumors"]) == 2
    assert not ((before != after) & ~ndimage.binary_dilation(tumour, iterations=5)).any()
    assert all(t["size_class"] == "small" for t in manifest["tumors"])  # 15 mm is in the small class


def test_dicom_series_input(tmp_path, data_dir):
    series = write_dicom_series(PATIENT_A_SMALL_CT, tmp_path / "dicom")
    out = tmp_path / "out"
    assert (
        _run(
            series,
            "--organ-mask",
            PATIENT_A_SMALL_ORGANS,
            "--organ-label",
            LIVER,
            "--synthesizer",
            "handcrafted",
            "--size",
            "tiny",
            "--count",
            1,
            "--out",
            out,
        )
        == 0
    )
    ct, _, manifest = _load(out)
    reference = nib.load(str(PATIENT_A_SMALL_CT))
    np.testing.assert_allclose(ct.affine, reference.affine, atol=1e-4)
    before = np.asanyarray(reference.dataobj)
    changed = np.asanyarray(ct.dataobj) != before
    assert 0 < changed.sum() < 2000 and manifest["tumors"][0]["size_class"] == "tiny"


@pytest.mark.slow
def test_diffusion_synthesizer_end_to_end_with_a_pipeline_folder(tmp_path, data_dir):
    pipeline = save_tiny_pipeline(tmp_path / "pipe")
    args = [
        PATIENT_A_CT,
        "--organ-mask",
        PATIENT_A_ORGANS,
        "--organ-label",
        LIVER,
        "--pipeline",
        pipeline,
        "--size",
        "early",
        "--count",
        2,
        "--seed",
        5,
    ]
    assert _run(*args, "--out", tmp_path / "a") == 0
    assert _run(*args, "--scheduler", "dpm++", "--steps", 2, "--out", tmp_path / "b") == 0
    assert _run(*args, "--out", tmp_path / "c") == 0
    _, labels, manifest = _load(tmp_path / "a")
    assert manifest["synthesizer"] == "diffusion" and len(manifest["model_hash"]) == 16
    assert manifest["model_id"] == str(pipeline) and manifest["scheduler"] == "PreciseDDPMScheduler"
    assert all(t["size_class"] in ("tiny", "small") and 0 <= t["blend_sigma_mm"] <= 4 for t in manifest["tumors"])
    assert (tmp_path / "a" / "ct.nii.gz").read_bytes() == (tmp_path / "c" / "ct.nii.gz").read_bytes()
    assert json.loads((tmp_path / "b" / "tumors.json").read_text())["scheduler"] == "PreciseDPMSolverMultistepScheduler"
    original = np.asanyarray(nib.load(str(PATIENT_A_CT)).dataobj)
    changed = np.asanyarray(nib.load(str(tmp_path / "a" / "ct.nii.gz")).dataobj) != original
    tumour = np.asanyarray(labels.dataobj) == manifest["tumor_label"]
    assert changed.any() and not (changed & ~ndimage.binary_dilation(tumour, iterations=8)).any()


def _lesion_contrasts(ct: np.ndarray, tumour: np.ndarray, organ: np.ndarray) -> list[float]:
    """Mean HU of a 3-voxel organ ring around each lesion minus the lesion's mean HU."""
    components, count = ndimage.label(tumour)
    contrasts = []
    for index in range(1, count + 1):
        lesion = components == index
        ring = ndimage.binary_dilation(lesion, iterations=3) & organ & ~tumour
        if lesion.sum() >= 4 and ring.sum() >= 10:
            contrasts.append(float(ct[ring].mean() - ct[lesion].mean()))
    return contrasts


def test_handcrafted_contrast_is_on_the_scale_of_real_liver_tumours(handcrafted_liver):
    from tests.helpers.volumes import LITS_CT, LITS_LABEL

    lits_ct = np.asanyarray(nib.load(str(LITS_CT)).dataobj).astype(float)
    lits_label = np.asanyarray(nib.load(str(LITS_LABEL)).dataobj)
    real = _lesion_contrasts(lits_ct, lits_label == 2, lits_label == 1)
    assert len(real) > 20 and np.median(real) > 20  # real LiTS lesions are hypo-attenuating (median ≈ 43 HU)
    ct, labels, manifest = _load(handcrafted_liver)
    organ = np.asanyarray(nib.load(str(PATIENT_A_ORGANS)).dataobj) == LIVER
    synthetic = _lesion_contrasts(
        np.asanyarray(ct.dataobj).astype(float), np.asanyarray(labels.dataobj) == manifest["tumor_label"], organ
    )
    assert synthetic, "no synthetic lesion large enough to measure"
    low, high = np.percentile(real, [10, 90])
    assert 0.5 * low <= np.median(synthetic) <= 2 * high


@pytest.mark.slow
def test_python_whole_ct_path_matches_the_cli(tmp_path, data_dir):
    from difftumor import TumorInpaintPipeline, synthesize_ct

    folder = save_tiny_pipeline(tmp_path / "pipe")
    pipe = TumorInpaintPipeline.from_pretrained(folder)
    result = synthesize_ct(
        pipe,
        PATIENT_A_CT,
        PATIENT_A_ORGANS,
        organ="liver",
        organ_label=LIVER,
        size="small",
        count=3,
        seed=9,
        out=tmp_path / "py",
    )
    assert len(result.tumors) == 3 and all(t.size_class == "small" for t in result.tumors)
    assert (
        _run(
            PATIENT_A_CT,
            "--organ-mask",
            PATIENT_A_ORGANS,
            "--organ-label",
            LIVER,
            "--pipeline",
            folder,
            "--size",
            "small",
            "--count",
            3,
            "--seed",
            9,
            "--out",
            tmp_path / "cli",
        )
        == 0
    )
    assert (tmp_path / "py" / "ct.nii.gz").read_bytes() == (tmp_path / "cli" / "ct.nii.gz").read_bytes()
