"""The README's main job: `difftumor demo` with the bundled CT and the bundled pipeline."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from difftumor.assets import BUNDLED_PIPELINE, DEMO_CASE, bundled_pipeline_path
from difftumor.cli.main import main as cli
from difftumor.synthesis.outputs import OUTPUT_FILES


@pytest.mark.slow
def test_demo_writes_the_synthesize_outputs_with_the_bundled_pipeline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "bundled demo pipeline" in printed.err and "wrote" in printed.out
    assert sorted(p.name for p in out.iterdir()) == sorted([".difftumor", *OUTPUT_FILES])
    assert json.loads((out / "label.labels.json").read_text())["5"] == "liver"
    assert (
        "liver tumour" in (out / "label.itksnap.txt").read_text() and "liver_tumour" in (out / "label.ctbl").read_text()
    )
    manifest = json.loads((out / "tumors.json").read_text())
    assert manifest["synthesizer"] == "diffusion" and manifest["model_id"] == str(BUNDLED_PIPELINE)
    assert len(manifest["tumors"]) == 3 and all(t["size_class"] == "small" for t in manifest["tumors"])
    before = np.asanyarray(nib.load(str(DEMO_CASE / "ct.nii.gz")).dataobj).astype(float)
    after = np.asanyarray(nib.load(str(out / "ct.nii.gz")).dataobj).astype(float)
    tumour = np.asanyarray(nib.load(str(out / "label.nii.gz")).dataobj) == manifest["tumor_label"]
    # Hypo-dense like a real early lesion of this non-contrast liver (≈ 45 HU: about 23 HU darker on a 1 mm grid,
    # partly averaged away on this 3 mm grid), neither invisible nor a hole.
    drop = before[tumour].mean() - after[tumour].mean()
    assert 8 < drop < 40


def test_synthesize_without_a_pipeline_uses_and_names_the_bundled_one(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        cli(
            [
                "synthesize",
                str(DEMO_CASE / "ct.nii.gz"),
                "--organ-mask",
                str(DEMO_CASE / "organs.nii.gz"),
                "--organ-label",
                "5",
                "--size",
                "tiny",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert f"using the bundled demo pipeline ({bundled_pipeline_path()})" in capsys.readouterr().err
    assert (out / "tumors.json").exists()


def test_bundled_pipeline_is_small_and_documented():
    size = sum(p.stat().st_size for p in BUNDLED_PIPELINE.rglob("*") if p.is_file())
    assert size < 8 * 2**20
    card = (BUNDLED_PIPELINE / "README.md").read_text()
    assert "demo quality" in card.lower() and "scripts/train_bundled_pipeline.sh" in card
    assert not list(BUNDLED_PIPELINE.rglob("*.bin")) and list(BUNDLED_PIPELINE.rglob("*.safetensors"))


def test_preview_is_radiological_with_letters_and_before_after():
    from difftumor.synthesis.preview import PANEL, _panel

    plane = np.full((40, 30), -1000.0)  # (x, y) of a RAS+ volume: x grows towards the patient's right
    plane[35:, 12:18] = 200.0  # something bright on the patient's right
    mask = np.zeros_like(plane, dtype=bool)
    mask[18:22, 13:17] = True
    panel = np.asarray(_panel(plane, mask, "axial", (1.0, 1.0)))
    assert panel.shape == (PANEL, PANEL, 3)
    bright = np.argwhere(panel[..., 0] > 200)
    bright = bright[(panel[bright[:, 0], bright[:, 1], 1] > 200)]  # white, not the red outline or letters
    assert bright[:, 1].mean() < PANEL / 3  # patient right on the image left
    red = (panel[..., 0] > 200) & (panel[..., 1] < 100)
    assert red.any()


@pytest.mark.slow
def test_fast_flag_reaches_the_pipeline_and_is_recorded(tmp_path, capsys):
    arguments = ["synthesize", str(DEMO_CASE / "ct.nii.gz"), "--organ-mask", str(DEMO_CASE / "organs.nii.gz")]
    arguments += ["--organ-label", "5", "--size", "tiny", "--seed", "3"]
    assert cli([*arguments, "--fast", "--out", str(tmp_path / "fast")]) == 0
    assert cli([*arguments, "--out", str(tmp_path / "exact")]) == 0
    manifest = json.loads((tmp_path / "fast" / "tumors.json").read_text())
    assert manifest["fast"] is True and manifest["tumors"]
    # The flag reaches the pipeline: the same tumours (labels), painted by a different decode.
    fast, exact = (np.asanyarray(nib.load(str(tmp_path / n / "ct.nii.gz")).dataobj) for n in ("fast", "exact"))
    labels = (np.asanyarray(nib.load(str(tmp_path / n / "label.nii.gz")).dataobj) for n in ("fast", "exact"))
    assert np.array_equal(*labels) and not np.array_equal(fast, exact)
    assert cli([*arguments, "--fast", "--synthesizer", "handcrafted", "--out", str(tmp_path / "no")]) == 2
    assert "--fast applies to the diffusion synthesizer" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
