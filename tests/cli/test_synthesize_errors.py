"""Bad input to `difftumor synthesize`: exit code 2, one line naming the problem and the fix, nothing written."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from difftumor.cli.main import main as cli
from tests.helpers.pipelines import save_tiny_pipeline
from tests.helpers.volumes import LIVER, PATIENT_A_CT, PATIENT_A_ORGANS


def _nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("bad")
    ct = nib.load(str(PATIENT_A_CT))
    organs = np.asanyarray(nib.load(str(PATIENT_A_ORGANS)).dataobj)
    files = {
        "text": folder / "notes.nii.gz",
        "truncated": folder / "truncated.nii.gz",
        "flat": _nifti(folder / "slice.nii.gz", np.zeros((64, 64, 1), np.int16)),
        "nan": _nifti(folder / "nan.nii.gz", np.where(np.eye(32)[..., None] > 0, np.nan, 0.0) * np.ones((32, 32, 32))),
        "empty": _nifti(folder / "empty.nii.gz", np.zeros(ct.shape, np.uint8), ct.affine),
        "far": _nifti(
            folder / "far.nii.gz",
            (organs == LIVER).astype(np.uint8),
            np.r_[ct.affine[:3], [[0, 0, 0, 1]]] + np.array([[0, 0, 0, 5000]] * 3 + [[0, 0, 0, 0]]),
        ),
        "speck": _nifti(
            folder / "speck.nii.gz", np.pad(np.ones((2, 2, 2), np.uint8), ((60, 60), (50, 49), (55, 55))), ct.affine
        ),
        "pipeline_broken": folder / "broken_pipeline",
        "file_out": folder / "taken",
    }
    files["text"].write_text("not an image\n")
    files["truncated"].write_bytes(PATIENT_A_CT.read_bytes()[:40000])  # a gzip stream cut short
    pipe = save_tiny_pipeline(files["pipeline_broken"])
    weights = pipe / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    files["file_out"].write_text("x")
    return files


GOOD = ["--organ-mask", str(PATIENT_A_ORGANS), "--organ-label", str(LIVER), "--synthesizer", "handcrafted"]

CASES = {
    "missing CT": (["/nonexistent/ct.nii.gz", *GOOD], "does not exist"),
    "text file": (["{text}", *GOOD], "not a readable NIfTI"),
    "truncated": (["{truncated}", *GOOD], "truncated"),
    "2-D image": (["{flat}", *GOOD], "not a 3-D volume"),
    "NaN values": (["{nan}", "--organ-mask", "{nan}", "--synthesizer", "handcrafted"], "NaN"),
    "empty mask": ([str(PATIENT_A_CT), "--organ-mask", "{empty}", "--synthesizer", "handcrafted"], "is empty"),
    "label absent": (
        [
            str(PATIENT_A_CT),
            "--organ-mask",
            str(PATIENT_A_ORGANS),
            "--organ-label",
            "250",
            "--synthesizer",
            "handcrafted",
        ],
        "no voxels with label 250",
    ),
    "several labels": (
        [str(PATIENT_A_CT), "--organ-mask", str(PATIENT_A_ORGANS), "--synthesizer", "handcrafted"],
        "--organ-label",
    ),
    "no overlap": (
        [str(PATIENT_A_CT), "--organ-mask", "{far}", "--synthesizer", "handcrafted"],
        "does not overlap the CT in the world",
    ),
    "organ too small": (
        [str(PATIENT_A_CT), "--organ-mask", "{speck}", "--synthesizer", "handcrafted"],
        "smaller than 1 cm",
    ),
    "count": ([str(PATIENT_A_CT), *GOOD, "--count", "0"], "count must be at least 1"),
    "size": ([str(PATIENT_A_CT), *GOOD, "--size", "gigantic"], "unknown tumour size"),
    "organ": ([str(PATIENT_A_CT), *GOOD, "--organ", "lung"], "unknown organ 'lung'"),
    "scheduler": (
        [
            str(PATIENT_A_CT),
            "--organ-mask",
            str(PATIENT_A_ORGANS),
            "--organ-label",
            str(LIVER),
            "--pipeline",
            "{pipeline_broken}",
            "--scheduler",
            "pndm",
        ],
        "not safe",
    ),
    "synthesizer": (
        [str(PATIENT_A_CT), "--organ-mask", str(PATIENT_A_ORGANS), "--synthesizer", "magic"],
        "unknown synthesizer 'magic'",
    ),
    "missing pipeline": (
        [
            str(PATIENT_A_CT),
            "--organ-mask",
            str(PATIENT_A_ORGANS),
            "--organ-label",
            str(LIVER),
            "--pipeline",
            "/nonexistent/pipe",
        ],
        "does not exist (and it is not a Hub repo id",
    ),
    "corrupt pipeline": (
        [
            str(PATIENT_A_CT),
            "--organ-mask",
            str(PATIENT_A_ORGANS),
            "--organ-label",
            str(LIVER),
            "--pipeline",
            "{pipeline_broken}",
        ],
        "cannot load the pipeline",
    ),
    "pipeline without index": (
        [
            str(PATIENT_A_CT),
            "--organ-mask",
            str(PATIENT_A_ORGANS),
            "--organ-label",
            str(LIVER),
            "--pipeline",
            "{pipeline_broken}/unet",
        ],
        "no model_index.json",
    ),
    "out is a file": ([str(PATIENT_A_CT), *GOOD], "is a file"),
    "bad centre": ([str(PATIENT_A_CT), *GOOD, "--center", "0,0,0"], "is not inside the liver"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_exit_code_2_one_line_and_no_output(case, bad_files, tmp_path, capsys):
    arguments, expected = CASES[case]
    arguments = [a.format(**{k: str(v) for k, v in bad_files.items()}) for a in arguments]
    out = bad_files["file_out"] if case == "out is a file" else tmp_path / "out"
    code = cli(["synthesize", *arguments, "--out", str(out)])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("using the bundled")]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[-1].startswith("error: ") and expected in lines[-1], stderr
    assert "Traceback" not in stderr
    if case != "out is a file":
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
