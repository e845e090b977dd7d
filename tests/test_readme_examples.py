"""The user docs' examples, executed as written: the README's Python API (whole CT and own crops, on the GPU when
there is one) and organ-mask recipe, and docs/segmentation.md's MONAI pipeline with worker processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: End to end and minutes long: the slow tier (`python -m pytest -m slow`, run by CI too).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOCS = {"README.md": (REPO / "README.md").read_text()} | {
    f"docs/{path.name}": path.read_text() for path in sorted((REPO / "docs").glob("*.md"))
}


def example(name: str, language: str) -> str:
    """The code block that follows ``<!-- readme-example: name -->`` in the README or a page of docs/."""
    for text in DOCS.values():
        match = re.search(rf"<!-- readme-example: {name} -->\n```{language}\n(.*?)```", text, re.S)
        if match:
            return match.group(1)
    raise AssertionError(f"no {name} example in the README or docs/")


def test_python_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(example("python", "python"), "README.md", "exec"), {"__name__": "readme_example"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("voxels changed") and "torch.Size([1, 1, 64, 64, 64])" in lines[1]
    after, before = (float(v) for v in re.findall(r"(-?\d+) HU", lines[1]))
    assert after < before - 5  # a hypo-attenuating tumour where the mask is
    manifest = json.loads((tmp_path / "python_demo" / "tumors.json").read_text())
    assert len(manifest["tumors"]) == 2 and manifest["synthesizer"] == "diffusion"


def test_mask_recipe(tmp_path):
    """The bash lines run from a folder laid out like the repository root (the demo case linked in)."""
    (tmp_path / "difftumor" / "assets").mkdir(parents=True)
    (tmp_path / "difftumor" / "assets" / "demo_case").symlink_to(REPO / "difftumor" / "assets" / "demo_case")
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = "set -euo pipefail\n" + example("masks", "bash")
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    organs = np.asarray(nib.load(str(REPO / "difftumor" / "assets" / "demo_case" / "organs.nii.gz")).dataobj)
    for folder, label in (("pancreas_demo", 7), ("kidney_demo", 3)):
        manifest = json.loads((tmp_path / folder / "tumors.json").read_text())
        tumour = np.asarray(nib.load(str(tmp_path / folder / "label.nii.gz")).dataobj) == manifest["tumor_label"]
        assert manifest["input"]["organ_label"] == label and set(np.unique(organs[tumour])) == {label}
    assert "trained on" not in run.stderr  # the handcrafted synthesizer has no training organ to warn about


def test_monai_example(capsys):
    """Dataset + DataLoader with two worker processes."""
    exec(compile(example("monai", "python"), "README.md", "exec"), {"__name__": "readme_example"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("torch.Size([2, 1," in line and "'painted', 'painted'" in line for line in lines)
    assert all(int(line.split("]) ")[1].split()[0]) > 0 for line in lines)  # tumour voxels labelled 200
