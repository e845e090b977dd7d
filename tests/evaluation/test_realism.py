"""`difftumor realism`: every feature against hand-made volumes whose answers are known, then the command on real CT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from difftumor.cli.main import app
from difftumor.cli.main import main as cli
from difftumor.data.volumes import Volume
from difftumor.evaluation.realism import LabelledCase, measure_case, sphericity, stride_artifact
from tests.helpers.volumes import LITS_CT, LITS_LABEL, PATIENT_A_CT, PATIENT_A_ORGANS

ORGAN_HU, ORGAN_STD, CONTRAST, RADIUS = 100.0, 10.0, 30.0, 7


def _phantom(spacing: float = 1.0, pattern: float = 0.0, seed: int = 0) -> LabelledCase:
    """A 40 mm-radius organ of 100 HU with white noise of std 10 HU, and a 7 mm-radius lesion 30 HU darker with the
    same noise (optionally plus a ±``pattern`` HU dot grid of period 4 mm), sampled at ``spacing``."""
    size = int(round(100 / spacing))
    grid = (np.indices((size,) * 3) + 0.5) * spacing - 50.0
    distance = np.sqrt((grid**2).sum(0))
    organ, lesion = distance <= 40, distance <= RADIUS
    rng = np.random.default_rng(seed)
    hu = np.where(organ, ORGAN_HU, -900.0) + rng.normal(0, ORGAN_STD, organ.shape) * organ
    hu[lesion] -= CONTRAST
    if pattern:
        dots = np.where(np.floor(grid / spacing) % 4 < 2, 1.0, -1.0).prod(0)  # ±1, period 4 voxels on every axis
        hu[lesion] += pattern * dots[lesion]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return LabelledCase("phantom", Volume(hu.astype(np.float32), affine, path=None), organ, lesion)


def test_sphere_of_known_contrast_and_noise():
    (lesion,) = measure_case(_phantom())
    assert lesion["diameter_mm"] == pytest.approx(2 * RADIUS, abs=0.6)
    assert lesion["contrast_hu"] == pytest.approx(CONTRAST, abs=2.0)
    assert lesion["organ_core_hu"] == pytest.approx(ORGAN_HU, abs=0.5)
    assert lesion["organ_core_std_hu"] == pytest.approx(ORGAN_STD, abs=0.3)
    assert lesion["contrast_to_organ_mean"] == pytest.approx(CONTRAST / ORGAN_HU, abs=0.02)
    assert lesion["contrast_to_organ_std"] == pytest.approx(CONTRAST / ORGAN_STD, abs=0.2)
    assert lesion["internal_std_to_organ_std"] == pytest.approx(1.0, abs=0.08)
    assert abs(lesion["stride_artifact"]) < 0.03  # white noise has no period
    assert lesion["sphericity"] == pytest.approx(1.0, abs=0.06)
    assert lesion["elongation"] == pytest.approx(1.0, abs=0.05)


def test_coarser_scans_are_measured_on_a_1mm_grid():
    (lesion,) = measure_case(_phantom(spacing=2.0))
    assert lesion["diameter_mm"] == pytest.approx(2 * RADIUS, abs=1.5)
    assert lesion["contrast_hu"] == pytest.approx(CONTRAST, abs=4.0)  # partial volume at the 2 mm border


def test_a_decoder_dot_grid_is_caught_and_plain_texture_is_not():
    clean = measure_case(_phantom())[0]["stride_artifact"]
    dotted = measure_case(_phantom(pattern=8.0))[0]["stride_artifact"]
    assert dotted > 0.05 and abs(clean) < 0.02  # ±8 HU dots in 10 HU noise: a 4-voxel grid a reader sees
    # the score is the share of the high-pass energy at the stride: a pure pattern scores close to 1
    pattern = np.where(np.indices((24, 24, 24)) % 4 < 2, 1.0, -1.0).prod(0)
    assert stride_artifact(pattern, np.ones(pattern.shape, bool)) > 0.9


def test_sphericity_separates_a_sphere_from_a_plate():
    sphere = np.sqrt(((np.indices((30,) * 3) - 14.5) ** 2).sum(0)) <= 10
    plate = np.zeros((30, 30, 30), bool)
    plate[2:28, 2:28, 13:16] = True
    assert sphericity(sphere) > 0.9 and sphericity(plate) < 0.6


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    for sub, source in (("images", LITS_CT), ("labels", LITS_LABEL)):
        (root / sub).mkdir()
        (root / sub / "lits117.nii.gz").symlink_to(source)
    return root


def _realism(runner: CliRunner, synthetic: Path, real_folder: Path, out: Path):
    arguments = ["--synthetic", str(synthetic), "--real", str(real_folder), "--truth-labels", "lits", "--out", str(out)]
    return runner.invoke(app, ["realism", *arguments])


def test_real_lits_lesions_match_the_independent_reference(real_folder, tmp_path):
    """shared realism reference (measured independently): contrast ÷ core mean 0.35 [0.29-0.38], ÷ core std 2.7
    [2.3-3.0], internal std ÷ core std 0.97 for the real lesions < 20 mm."""
    from difftumor.evaluation.realism import realism

    report = realism([], [real_folder], truth_labels="lits")
    early = report.table["early <20mm"]
    assert early["contrast_to_organ_mean"]["real"]["median"] == pytest.approx(0.35, abs=0.03)
    assert early["contrast_to_organ_std"]["real"]["median"] == pytest.approx(2.7, abs=0.25)
    assert early["internal_std_to_organ_std"]["real"]["median"] == pytest.approx(0.97, abs=0.1)


@pytest.mark.slow
def test_realism_command_writes_the_report_and_refuses_a_bad_folder(real_folder, tmp_path, capsys):
    runner = CliRunner()
    synthetic = tmp_path / "synthetic"
    result = runner.invoke(
        app,
        [
            "synthesize",
            str(PATIENT_A_CT),
            "--organ-mask",
            str(PATIENT_A_ORGANS),
            "--organ-label",
            "5",
            "--synthesizer",
            "handcrafted",
            "--size",
            "small",
            "--count",
            "3",
            "--out",
            str(synthetic),
        ],
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "report"
    result = _realism(runner, synthetic, real_folder, out)
    assert result.exit_code == 0, result.output
    assert "contrast_to_organ_std" in result.output and "handcrafted (relative)" in result.output
    report = json.loads((out / "realism.json").read_text())
    assert len(report["lesions"]["handcrafted (relative)"]) == 3 and len(report["lesions"]["real"]) > 40
    cell = report["comparison"]["10-20mm"]["contrast_to_organ_std"]["handcrafted (relative)"]
    assert math.isfinite(cell["ratio_to_real"]) and 0 <= cell["ks"] <= 1
    assert (out / "realism.png").stat().st_size > 1000 and (out / "realism.md").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    code = cli(["realism", "--synthetic", str(empty), "--real", str(real_folder), "--out", str(tmp_path / "r2")])
    error = capsys.readouterr().err
    assert code == 2 and "tumors.json" in error and error.strip().count("\n") == 0
    assert not (tmp_path / "r2").exists()


@pytest.mark.slow
def test_realism_measures_the_rule_only_ablation_and_the_machine_reader(real_folder, tmp_path):
    """A diffusion synthesis is painted again with the contrast rule alone (same masks, same blend) and both are
    compared with the real lesions, feature by feature and by the machine reader."""
    runner = CliRunner()
    synthetic = tmp_path / "diffusion"
    common = [str(PATIENT_A_CT), "--organ-mask", str(PATIENT_A_ORGANS), "--organ-label", "5", "--size", "small"]
    result = runner.invoke(app, ["synthesize", *common, "--count", "2", "--seed", "3", "--out", str(synthetic)])
    assert result.exit_code == 0, result.output
    rule = tmp_path / "rule"
    result = runner.invoke(
        app,
        ["synthesize", *common, "--synthesizer", "rule-only", "--count", "2", "--seed", "3", "--out", str(rule)],
    )
    assert result.exit_code == 0, result.output
    manifests = [json.loads((folder / "tumors.json").read_text()) for folder in (synthetic, rule)]
    # the ablation shares the masks and the blend's σ, and paints the rule's contrast
    for painted, ablated in zip(manifests[0]["tumors"], manifests[1]["tumors"]):
        assert painted["center_mm"] == ablated["center_mm"] and painted["blend_sigma_mm"] == ablated["blend_sigma_mm"]
        assert 10 < ablated["contrast_hu"] < 60  # the rule on a non-contrast liver (≈ 45 HU)
    labels = [nib_labels(folder) for folder in (synthetic, rule)]
    assert np.array_equal(labels[0], labels[1])

    out = tmp_path / "report"
    result = _realism(runner, synthetic, real_folder, out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "realism.json").read_text())
    assert len(report["lesions"]["rule-only"]) == len(report["lesions"]["diffusion (relative)"]) == 2
    # the twin measured by realism is the rule-only synthesis above, voxel for voxel
    measured = sorted(r["lesion_hu"] for r in report["lesions"]["rule-only"])
    direct = runner.invoke(
        app,
        [
            "realism",
            "--synthetic",
            str(rule),
            "--real",
            str(real_folder),
            "--truth-labels",
            "lits",
            "--out",
            str(tmp_path / "r2"),
            "--no-reader",
        ],
    )
    assert direct.exit_code == 0, direct.output
    expected = sorted(
        r["lesion_hu"] for r in json.loads((tmp_path / "r2" / "realism.json").read_text())["lesions"]["rule-only"]
    )
    assert measured == pytest.approx(expected, abs=1e-6)
    (ablation,) = report["model_against_rule"]
    assert ablation["model_group"] == "diffusion (relative)" and "internal_std_to_organ_std" in ablation["features"]
    readers = {r["group"]: r for r in report["machine_reader"]}
    assert set(readers) == {"diffusion (relative)", "rule-only"}
    assert "fewer than" in readers["rule-only"]["note"]  # two lesions: no verdict, said so
    assert "Machine reader" in result.output and "against its ablation rule-only" in result.output


def nib_labels(folder):
    import nibabel as nib

    return np.asarray(nib.load(str(folder / "label.nii.gz")).dataobj)


@pytest.mark.slow
def test_realism_groups_by_organ_reads_nested_batches_and_warns_about_partial_volume(real_folder, tmp_path, capsys):
    """Kidney tumours are not pooled with liver tumours against liver lesions; a batch folder two levels down is
    read; lesions a few voxels wide on their 3 mm CT are flagged."""
    runner = CliRunner()
    batch = tmp_path / "runs"
    for organ, label, folder in (("liver", "5", "site_a/week1/a"), ("kidney", "2", "site_b/b")):
        common = [str(PATIENT_A_CT), "--organ-mask", str(PATIENT_A_ORGANS), "--organ-label", label]
        (batch / folder).parent.mkdir(parents=True)
        result = runner.invoke(
            app,
            [
                "synthesize", *common, "--organ", organ, "--synthesizer", "handcrafted", "--size", "tiny",
                "--count", "3", "--seed", "2", "--out", str(batch / folder),
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    out = tmp_path / "report"
    arguments = ["--synthetic", str(batch), "--real", str(real_folder), "--truth-labels", "lits", "--no-reader"]
    result = runner.invoke(app, ["realism", *arguments, "--no-ablation", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "realism.json").read_text())
    # no --organ and two organs: each group named by its organ, and said
    assert {"handcrafted (relative) [liver]", "handcrafted (relative) [kidney]"} <= set(report["lesions"])
    assert any("kidney and liver" in w and "--organ" in w for w in report["warnings"])
    (synthetic,) = [entry for entry in report["found"] if entry["kind"] == "synthetic"]
    assert synthetic["cases"] == 2 and synthetic["lesions"] == 6
    assert any("under 3 voxels across" in w and "[liver]" in w for w in report["warnings"])
    assert "warning:" in result.output and "Warnings" in (out / "realism.md").read_text()

    result = runner.invoke(
        app, ["realism", *arguments, "--no-ablation", "--organ", "liver", "--out", str(out), "--overwrite"]
    )
    report = json.loads((out / "realism.json").read_text())
    assert {"handcrafted (relative)", "handcrafted (relative) [kidney]"} <= set(report["lesions"])
    assert any(w.startswith("kidney tumours are compared with real liver lesions") for w in report["warnings"])
    code = cli(["realism", *arguments, "--organ", "spleen", "--out", str(tmp_path / "r3")])
    assert code == 2 and "unknown organ 'spleen'" in capsys.readouterr().err and not (tmp_path / "r3").exists()


def test_real_label_maps_go_through_the_label_check(tmp_path):
    """A probability map, or a label map of the right size placed elsewhere in the world, given as the real lesions'
    labels is refused, not rounded or read as if aligned (realism and reader-study make read real lesions this way)."""
    import nibabel as nib

    from difftumor.errors import DiffTumorInputError
    from difftumor.evaluation.realism import realism

    label = nib.load(str(LITS_LABEL))
    values = np.asarray(label.dataobj).astype(np.float32)
    moved = label.affine.copy()
    moved[:3, 3] += 400.0
    for name, data, affine, message in (
        ("probability", values * 0.4, label.affine, "non-integer values"),
        ("elsewhere", values, moved, "does not overlap the CT"),
    ):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        (root / "images" / "lits117.nii.gz").symlink_to(LITS_CT)
        nib.save(nib.Nifti1Image(data, affine), str(root / "labels" / "lits117.nii.gz"))
        with pytest.raises(DiffTumorInputError, match=message):
            realism([], [root], truth_labels="lits")
