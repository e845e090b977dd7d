"""A user's data is sacred: every mistake or attack below exits 2 with one actionable line, leaves every byte of the
workspace as it was (hashed before and after), and leaves no stray output. Built from the bundled demo CT only."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from difftumor.assets import BUNDLED_PIPELINE, DEMO_CASE
from difftumor.cli.main import main as cli
from difftumor.data.layouts import prepare_datalist
from tests.conftest import DATA
from tests.helpers.volumes import write_dicom_series

LIVER = 5  # TotalSegmentator label of the liver in the demo organ map


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, 1)
    image.set_sform(affine, 1)
    nib.save(image, str(path))
    return path


def _liver_crop() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The demo CT (3 mm) cropped to the liver with a margin: CT (int16), binary liver mask and affine."""
    ct = nib.load(str(DEMO_CASE / "ct.nii.gz"))
    organs = np.asanyarray(nib.load(str(DEMO_CASE / "organs.nii.gz")).dataobj)
    points = np.argwhere(organs == LIVER)
    low = np.maximum(points.min(0) - 6, 0)
    high = np.minimum(points.max(0) + 7, organs.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    affine = ct.affine.copy()
    affine[:3, 3] = ct.affine[:3, :3] @ low + ct.affine[:3, 3]
    array = np.asanyarray(ct.dataobj)[box].astype(np.int16)
    return array, (organs[box] == LIVER).astype(np.uint8), affine


def _header_only_nifti(path: Path, shape: tuple[int, int, int]) -> Path:
    """A NIfTI whose header claims ``shape`` but holds almost no data (a few KB on disk)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), 1)
    header.set_sform(np.eye(4), 1)
    with open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * (352 - len(header.binaryblock)) + b"\0" * 4096)
    return path


def _evil_pickle(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"state": Payload()})


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    ct, liver, affine = _liver_crop()
    assert len(set(ct.shape)) == 3  # a transposed copy must differ in shape
    for case in ("c1", "c2"):
        (root / "d" / case).mkdir(parents=True)
        _save(ct, affine, root / "d" / case / "ct.nii.gz")
        _save(liver, affine, root / "d" / case / "liver.nii.gz")
    (root / "d" / "c1" / "notes.txt").write_text("the radiologist's notes\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "readme.txt").write_text("not difftumor's\n")
    (root / "victim").mkdir()
    (root / "victim" / "keep.txt").write_text("must survive\n")
    (root / "ckpt").mkdir()
    (root / "ckpt" / "AutoencoderModel.ckpt").write_bytes(b"checkpoint bytes")
    (root / "ckpt" / "liver_early.pt").write_bytes(b"checkpoint bytes")
    _save((ct.astype(np.float32) + 1024) / 4096, affine, root / "ct01.nii.gz")  # a "normalised" CT in [0, 1]
    _save(np.ascontiguousarray(liver.transpose(2, 1, 0)), affine, root / "liver_T.nii.gz")
    (root / "odd").mkdir()  # a NIfTI under a name that a label map's sidecar would take
    shutil.copy(root / "d" / "c1" / "ct.nii.gz", root / "odd" / "scan.labels.json")
    _header_only_nifti(root / "huge.nii", (1024, 1024, 1024))
    _header_only_nifti(root / "giant.nii", (2000, 2000, 2000))
    _save(liver, affine, root / "foreign_pred.nii.gz")

    # DICOM: a small series, one with two series, one with a missing slice, one with a damaged slice.
    small = root / "small_ct.nii.gz"
    _save(ct[10:42, 10:40, 4:20], affine, small)
    for name in ("dicom", "dicom_missing", "dicom_broken"):
        write_dicom_series(small, root / name)
    (root / "dicom_missing" / "slice_007.dcm").unlink()
    broken = root / "dicom_broken" / "slice_005.dcm"
    broken.write_bytes(broken.read_bytes()[:900])
    write_dicom_series(small, root / "dicom_two")
    second = write_dicom_series(small, tmp_path_factory.mktemp("series_b"))
    for path in second.iterdir():
        shutil.copy(path, root / "dicom_two" / f"b_{path.name}")
    small.unlink()

    (root / "truth").mkdir()
    (root / "pred").mkdir()
    _save(liver, affine, root / "truth" / "case.nii.gz")
    _save(liver, affine, root / "pred" / "case.nii.gz")
    for sub in ("images", "labels"):
        (root / "dataset" / sub).mkdir(parents=True)
    _save(ct, affine, root / "dataset" / "images" / "a.nii.gz")
    _save(liver, affine, root / "dataset" / "labels" / "a.nii.gz")
    prepare_datalist("folders", root / "dataset", root / "train.json", organ="liver")
    (root / "foreign.json").write_text('{"mine": true}\n')

    from difftumor.segmentation import SegmentationModel

    model = SegmentationModel(backbone="unet", roi_size=(32, 32, 32))
    model.save_pretrained(root / "seg_model_big")
    config = json.loads((root / "seg_model_big" / "config.json").read_text())
    config["roi_size"] = [1024, 1024, 1024]
    (root / "seg_model_big" / "config.json").write_text(json.dumps(config))

    # Outputs difftumor wrote: a pipeline (as convert writes it), a synthesis result with a user's file added to it,
    # a training run whose YAML config the user keeps inside it.
    from difftumor.atomic import write_marker

    shutil.copytree(BUNDLED_PIPELINE, root / "pipe")
    write_marker(root / "pipe", "pipeline", [p.name for p in (root / "pipe").iterdir()])
    (root / "result").mkdir()
    _save(ct, affine, root / "result" / "ct.nii.gz")
    write_marker(root / "result", "synthesis", ["ct.nii.gz"])
    (root / "result" / "my_notes.txt").write_text("added later by the user\n")
    (root / "synth").mkdir()
    _save(ct, affine, root / "synth" / "ct.nii.gz")
    write_marker(root / "synth", "synthesis", ["ct.nii.gz"])
    (root / "run_cfg").mkdir()
    write_marker(root / "run_cfg", "training-run")
    (root / "run_cfg" / "config.yaml").write_text(f"data:\n  datalist: {root / 'train.json'}\n")
    for sub in ("images", "labels"):
        (root / "dataset_dup" / sub).mkdir(parents=True)
        for suffix in (".nii", ".nii.gz"):
            _save(ct if sub == "images" else liver, affine, root / "dataset_dup" / sub / f"a{suffix}")
    org255 = liver.copy()
    org255[0, 0, 0] = 255
    _save(org255, affine, root / "organs255.nii.gz")
    _save(np.clip(ct, -175, 250).astype(np.float32) + 175, affine, root / "ct_shifted.nii.gz")
    (root / "bad_train.json").write_text("[1, 2]")

    # Painted but unlabelled: the liver at 9 mm slices; a multi-label organ map; predictions that cannot be scored.
    thick = affine.copy()
    thick[:3, 2] *= 3
    _save(ct[:, :, ::3], thick, root / "ct_9mm.nii.gz")
    _save(liver[:, :, ::3], thick, root / "liver_9mm.nii.gz")
    multi = liver.copy()
    multi[:4] = np.where(liver[:4] == 0, 3, multi[:4])  # another structure, label 3
    _save(multi, affine, root / "organs_multi.nii.gz")
    for name, array, where in (
        ("pred_T", np.ascontiguousarray(liver.transpose(2, 1, 0)), affine),
        ("pred_prob", liver.astype(np.float32) * 0.9, affine),
        ("pred_labels", liver * 7, affine),
    ):
        (root / name).mkdir()
        _save(array, where, root / name / "case.nii.gz")
    far = affine.copy()
    far[:3, 3] += 5000.0
    (root / "pred_far").mkdir()
    _save(liver, far, root / "pred_far" / "case.nii.gz")

    # Sizes a file can ask for: model configs, schedules, checkpoint configs, voxel sizes.
    for name, part, key, value in (
        ("pipe_codes", "vqmodel", "num_codes", 100_000_000),
        ("pipe_steps", "scheduler", "num_train_timesteps", 200_000_000),
    ):
        shutil.copytree(BUNDLED_PIPELINE, root / name)
        config_path = root / name / part / ("scheduler_config.json" if part == "scheduler" else "config.json")
        config = json.loads(config_path.read_text())
        config[key] = value
        config_path.write_text(json.dumps(config))
    from tests.conftest import load_fixture
    from tests.helpers.released_formats import write_autoencoder_checkpoint, write_diffusion_checkpoint

    fixtures = DATA / "original_difftumor"
    write_diffusion_checkpoint(root / "ckpt" / "small_early.pt", load_fixture("unet3d_small_state_dict.pt"), None, 4)
    vq_config = yaml.safe_load((fixtures / "config_vqgan_small.yaml").read_text())
    vq_config["model"]["n_codes"] = 200_000_000
    write_autoencoder_checkpoint(root / "ckpt" / "codes.ckpt", load_fixture("vqgan_small_state_dict.pt"), vq_config)
    laughs: list = [0]
    for _ in range(64):  # one list shared twice at every level: 2⁶⁴ nodes when walked as a tree
        laughs = [laughs, laughs]
    import torch

    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": {"model": laughs}}}, root / "ckpt" / "laughs.ckpt")
    looped: list = []
    looped.append(looped)
    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": looped}}, root / "ckpt" / "looped.ckpt")
    wide = affine.copy()
    wide[:3, :3] *= 10  # a header claiming 30 mm voxels: the liver's box on a 1 mm grid is metres wide
    _save(ct, wide, root / "ct_wide.nii.gz")
    _save(liver, wide, root / "liver_wide.nii.gz")

    # Smaller cases of the same class: scaling, 8-bit, names, links, DICOM spacing, pickled weights, a body mask.
    scaled = nib.Nifti1Image(ct, affine)
    scaled.header.set_slope_inter(1e36, 0.0)
    nib.save(scaled, str(root / "ct_slope.nii.gz"))
    _save(np.clip(ct, -128, 127).astype(np.int8), affine, root / "ct_int8.nii.gz")
    (root / "loop.nii.gz").symlink_to(root / "loop.nii.gz")
    (root / "dangling").symlink_to(root / "nowhere" / "out")
    write_dicom_series(root / "d" / "c1" / "ct.nii.gz", root / "dicom_spacing")
    import pydicom

    odd = sorted((root / "dicom_spacing").iterdir())[3]
    dataset = pydicom.dcmread(str(odd))
    dataset.PixelSpacing = [2.5, 2.5]
    dataset.save_as(str(odd))
    shutil.copytree(BUNDLED_PIPELINE, root / "pipe_bin")
    for part in ("vqmodel", "unet"):
        weights = root / "pipe_bin" / part / "diffusion_pytorch_model.safetensors"
        from safetensors.torch import load_file

        torch.save(load_file(str(weights)), weights.with_suffix(".bin"))
        weights.unlink()
    _save(np.ones_like(liver), affine, root / "body.nii.gz")

    lists = root / "lists"
    lists.mkdir()
    c1 = {"image": "../d/c1/ct.nii.gz", "organ_mask": "../d/c1/liver.nii.gz"}
    c2 = {"image": "../d/c2/ct.nii.gz", "organ_mask": "../d/c2/liver.nii.gz"}
    datalists = {
        "up": [{**c1, "id": "../victim"}],
        "absolute": [{**c1, "id": str(root / "victim")}],
        "empty": [{**c1, "id": "c1"}, {**c2, "id": ""}],
        "dot": [{**c1, "id": "c1"}, {**c2, "id": "./c1"}],
        "case": [{**c1, "id": "c1"}, {**c2, "id": "C1"}],
        "missing": [{**c1, "id": "c1"}, {"image": "../d/c9/ct.nii.gz", "organ_mask": "../d/c9/liver.nii.gz"}],
        "bad_count": [{**c1, "id": "c1"}, {**c2, "id": "c2", "count": 0}],
        "newline": [{**c1, "id": "x\ny"}],
        "unreadable_second": [{**c1, "id": "c1"}, {**c2, "id": "c2", "organ_mask": "../train.json"}],
    }
    for name, content in datalists.items():
        (lists / f"{name}.json").write_text(json.dumps(content))
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the SHA-256 of its bytes (or ``dir``)."""
    found = {}
    for path in sorted(root.rglob("*")):  # rglob does not follow links into folders
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = f"link to {os.readlink(path)}"
        else:
            found[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


SYN = ["--synthesizer", "handcrafted", "--organ", "liver"]
C1 = ["{ws}/d/c1/ct.nii.gz", "--organ-mask", "{ws}/d/c1/liver.nii.gz"]
TRAIN = ["train", "segmentation", "--set", "data.datalist={ws}/train.json", "--set", "run.output_dir={ws}/runs/s"]
CONVERT = ["convert", "--autoencoder", "{ws}/ckpt/AutoencoderModel.ckpt", "--diffusion", "{ws}/ckpt/liver_early.pt"]

# Refusals of sizes a file asks for; each also runs in its own process to bound its peak memory.
BOUNDED = {
    "a pipeline whose codebook asks for 10⁸ codes": (
        "",
        ["synthesize", *C1, "--organ-label", "1", "--pipeline", "{ws}/pipe_codes", "--out", "{ws}/o"],
        "DIFFTUMOR_MAX_MODEL_PARAMETERS",
    ),
    "a pipeline whose schedule asks for 2·10⁸ steps": (
        "",
        ["synthesize", *C1, "--organ-label", "1", "--pipeline", "{ws}/pipe_steps", "--out", "{ws}/o"],
        "DIFFTUMOR_MAX_TRAIN_TIMESTEPS",
    ),
    "convert a checkpoint whose config is a shared-reference bomb": (
        "",
        [
            "convert",
            "--autoencoder",
            "{ws}/ckpt/laughs.ckpt",
            "--diffusion",
            "{ws}/ckpt/small_early.pt",
            "--out",
            "{ws}/o",
        ],
        "nests deeper than 50 levels",
    ),
    "convert a checkpoint whose config holds itself": (
        "",
        [
            "convert",
            "--autoencoder",
            "{ws}/ckpt/looped.ckpt",
            "--diffusion",
            "{ws}/ckpt/small_early.pt",
            "--out",
            "{ws}/o",
        ],
        "nests deeper than 50 levels",
    ),
    "convert a checkpoint asking for 2·10⁸ codes": (
        "",
        [
            "convert",
            "--autoencoder",
            "{ws}/ckpt/codes.ckpt",
            "--diffusion",
            "{ws}/ckpt/small_early.pt",
            "--out",
            "{ws}/o",
        ],
        "DIFFTUMOR_MAX_MODEL_PARAMETERS",
    ),
    "a header claiming 30 mm voxels": (
        "",
        ["synthesize", "{ws}/ct_wide.nii.gz", "--organ-mask", "{ws}/liver_wide.nii.gz", *SYN, "--out", "{ws}/o"],
        "1 mm working grid",
    ),
}

# name: (working folder, arguments, what the one-line error must say)
CASES = {
    # outputs never touch inputs
    "synthesize --out . deletes the cwd": (
        "d",
        ["synthesize", *C1, *SYN, "--out", ".", "--overwrite"],
        "current folder",
    ),
    "synthesize --out ancestor": ("d/c1", ["synthesize", *C1, *SYN, "--out", "..", "--overwrite"], "current folder"),
    "synthesize --out the case folder": (
        "",
        ["synthesize", *C1, *SYN, "--out", "{ws}/d/c1", "--overwrite"],
        "contains the input",
    ),
    "synthesize --out the CT itself": ("", ["synthesize", *C1, *SYN, "--out", "{ws}/d/c1/ct.nii.gz"], "is the input"),
    "synthesize --out inside a DICOM input": (
        "",
        ["synthesize", "{ws}/dicom", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/dicom/out"],
        "lies inside the input",
    ),
    "synthesize --overwrite a folder difftumor did not write": (
        "",
        ["synthesize", *C1, *SYN, "--out", "{ws}/foreign", "--overwrite"],
        "difftumor did not write",
    ),
    "convert --out . deletes the checkpoints": ("ckpt", [*CONVERT, "--out", ".", "--overwrite"], "current folder"),
    "convert --out the checkpoints' folder": (
        "",
        [*CONVERT, "--out", "{ws}/ckpt", "--overwrite"],
        "contains the input",
    ),
    "segment --out the CT": (
        "",
        ["segment", "{ws}/d/c1/ct.nii.gz", "--model", "{ws}/seg_model_big", "--out", "{ws}/d/c1/ct.nii.gz"],
        "is the input",
    ),
    "segment --out a file difftumor did not write": (
        "",
        ["segment", "{ws}/d/c1/ct.nii.gz", "--model", "{ws}/seg_model_big", "--out", "{ws}/foreign_pred.nii.gz"],
        "not written by difftumor",
    ),
    "segment --out whose label names would land on the CT": (
        "",
        ["segment", "{ws}/odd/scan.labels.json", "--model", "{ws}/seg_model_big", "--out", "{ws}/odd/scan.nii.gz"],
        "is an input",
    ),
    "evaluate --out a truth file": (
        "",
        ["evaluate", "--pred", "{ws}/pred", "--truth", "{ws}/truth", "--out", "{ws}/truth/case.nii.gz"],
        "lies inside the input",
    ),
    "data prepare --out inside the dataset": (
        "",
        ["data", "prepare", "folders", "{ws}/dataset", "--organ", "liver", "--out", "{ws}/dataset/list.json"],
        "lies inside the input",
    ),
    "data prepare --out a JSON difftumor did not write": (
        "",
        ["data", "prepare", "folders", "{ws}/dataset", "--organ", "liver", "--out", "{ws}/foreign.json"],
        "not written by difftumor",
    ),
    "data prepare over its own datalist without --overwrite": (
        "",
        ["data", "prepare", "folders", "{ws}/dataset", "--organ", "liver", "--out", "{ws}/train.json"],
        "already exists",
    ),
    "train into a folder difftumor did not write": (
        "",
        ["train", "segmentation", "--set", "data.datalist={ws}/train.json", "--set", "run.output_dir={ws}/foreign"],
        "difftumor did not write",
    ),
    "train into a folder holding its data": (
        "",
        ["train", "segmentation", "--set", "data.datalist={ws}/train.json", "--set", "run.output_dir={ws}/dataset"],
        "contains the input",
    ),
    # datalists: ids and every entry checked before the first case is written
    "datalist id ../victim": (
        "",
        ["synthesize", "--datalist", "{ws}/lists/up.json", "--out", "{ws}/b"],
        "plain folder",
    ),
    "datalist absolute id": ("", ["synthesize", "--datalist", "{ws}/lists/absolute.json", "--out", "{ws}/b"], "plain"),
    "datalist empty id": ("", ["synthesize", "--datalist", "{ws}/lists/empty.json", "--out", "{ws}/b"], "empty id"),
    "datalist ./c1 beside c1": ("", ["synthesize", "--datalist", "{ws}/lists/dot.json", "--out", "{ws}/b"], "plain"),
    "datalist ids differing in case": (
        "",
        ["synthesize", "--datalist", "{ws}/lists/case.json", "--out", "{ws}/b"],
        "same id",
    ),
    "datalist with a missing second case": (
        "",
        ["synthesize", "--datalist", "{ws}/lists/missing.json", "--out", "{ws}/b", *SYN],
        "does not exist",
    ),
    "datalist with a bad option in the second case": (
        "",
        ["synthesize", "--datalist", "{ws}/lists/bad_count.json", "--out", "{ws}/b", *SYN],
        "count must be at least 1",
    ),
    # wrong scans
    "DICOM folder with two series": (
        "",
        ["synthesize", "{ws}/dicom_two", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "holds 2 DICOM series",
    ),
    "DICOM series with a missing slice": (
        "",
        ["synthesize", "{ws}/dicom_missing", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "1 slice is missing between slice_006.dcm and slice_008.dcm",
    ),
    "DICOM series with a damaged slice": (
        "",
        ["synthesize", "{ws}/dicom_broken", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "slice_005.dcm is unreadable",
    ),
    "DICOM --series that is not there": (
        "",
        [
            "synthesize",
            "{ws}/dicom_two",
            "--series",
            "1.2.3",
            "--organ-mask",
            "{ws}/d/c1/liver.nii.gz",
            *SYN,
            "--out",
            "{ws}/o",
        ],
        "holds no series 1.2.3",
    ),
    "CT scaled to [0, 1]": (
        "",
        ["synthesize", "{ws}/ct01.nii.gz", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "not Hounsfield units",
    ),
    "mask with transposed axes, same affine": (
        "",
        ["synthesize", "{ws}/d/c1/ct.nii.gz", "--organ-mask", "{ws}/liver_T.nii.gz", *SYN, "--out", "{ws}/o"],
        "axes are transposed",
    ),
    # memory
    "1024^3 volume": (
        "",
        ["synthesize", "{ws}/huge.nii", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "over the limit",
    ),
    "header claiming 2000^3": (
        "",
        ["synthesize", "{ws}/d/c1/ct.nii.gz", "--organ-mask", "{ws}/giant.nii", *SYN, "--out", "{ws}/o"],
        "DIFFTUMOR_MAX_VOXELS",
    ),
    "segmentation model with roi_size 1024^3": (
        "",
        ["segment", "{ws}/d/c1/ct.nii.gz", "--model", "{ws}/seg_model_big", "--out", "{ws}/p.nii.gz"],
        "over the limit",
    ),
    "training crop of 1024^3": ("", [*TRAIN, "--set", "data.crop_size=[1024,1024,1024]"], "must be >= 16 and <= 512"),
    "training crops over the memory bound": (
        "",
        [*TRAIN, "--set", "data.crop_size=[512,512,512]"],
        "DIFFTUMOR_MAX_PATCH_VOXELS",
    ),
    # found by an adversarial run
    "synthesize --out the pipeline it reads": (
        "",
        ["synthesize", *C1, "--organ-label", "1", "--pipeline", "{ws}/pipe", "--out", "{ws}/pipe", "--overwrite"],
        "is the input",
    ),
    "train into the folder holding its YAML config": (
        "",
        ["train", "segmentation", "-c", "{ws}/run_cfg/config.yaml", "--set", "run.output_dir={ws}/run_cfg"],
        "contains the input",
    ),
    "data prepare with a.nii beside a.nii.gz": (
        "",
        ["data", "prepare", "folders", "{ws}/dataset_dup", "--organ", "liver", "--out", "{ws}/dup.json"],
        "both get the id a",
    ),
    "datalist whose second case is not an image": (
        "",
        ["synthesize", "--datalist", "{ws}/lists/unreadable_second.json", "--out", "{ws}/b", *SYN],
        "not a readable NIfTI",
    ),
    "negative seed": ("", ["synthesize", *C1, *SYN, "--out", "{ws}/o", "--seed", "-1"], "seed must be an integer"),
    "tumour label beyond int16": (
        "",
        ["synthesize", *C1, *SYN, "--out", "{ws}/o", "--tumor-label", "70000"],
        "tumor_label must be an integer from 1 to 32767",
    ),
    "training datalist of numbers": (
        "",
        ["train", "segmentation", "--set", "data.datalist={ws}/bad_train.json", "--set", "run.output_dir={ws}/r"],
        "is not an object",
    ),
    "CT shifted to non-negative values": (
        "",
        ["synthesize", "{ws}/ct_shifted.nii.gz", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "no value below 0",
    ),
    "centre with NaN": ("", ["synthesize", *C1, *SYN, "--out", "{ws}/o", "--center", "nan,0,0"], "is not 'x,y,z'"),
    "datalist id with a newline": (
        "",
        ["synthesize", "--datalist", "{ws}/lists/newline.json", "--out", "{ws}/b"],
        "not a plain folder name",
    ),
    "evaluate --overwrite a datalist": (
        "",
        ["evaluate", "--pred", "{ws}/pred", "--truth", "{ws}/truth", "--out", "{ws}/train.json", "--overwrite"],
        "holds a difftumor datalist, not a metrics",
    ),
    "data prepare --labels-dir over a synthesis result": (
        "",
        [
            "data",
            "prepare",
            "folders",
            "{ws}/dataset",
            "--organ",
            "liver",
            "--out",
            "{ws}/x.json",
            "--labels-dir",
            "{ws}/synth",
            "--overwrite",
        ],
        "holds a difftumor synthesis, not a labels",
    ),
    "synthesize --overwrite a result the user added a file to": (
        "",
        ["synthesize", *C1, *SYN, "--out", "{ws}/result", "--overwrite"],
        "my_notes.txt, which difftumor did not write",
    ),
    # silent wrong answers (issue "every result is right, or refused")
    "tiny tumours into a CT of 9 mm slices: painted but unlabelled": (
        "",
        [
            "synthesize",
            "{ws}/ct_9mm.nii.gz",
            "--organ-mask",
            "{ws}/liver_9mm.nii.gz",
            *SYN,
            "--out",
            "{ws}/o",
            "--size",
            "tiny",
            "--count",
            "3",
        ],
        "covers no voxel of this CT",
    ),
    "a tumour label that names another structure": (
        "",
        [
            "synthesize",
            "{ws}/d/c1/ct.nii.gz",
            "--organ-mask",
            "{ws}/organs_multi.nii.gz",
            "--organ-label",
            "1",
            *SYN,
            "--out",
            "{ws}/o",
            "--tumor-label",
            "3",
        ],
        "already names another structure",
    ),
    "a tumour label that is the organ's": (
        "",
        [
            "synthesize",
            "{ws}/d/c1/ct.nii.gz",
            "--organ-mask",
            "{ws}/organs_multi.nii.gz",
            "--organ-label",
            "1",
            *SYN,
            "--out",
            "{ws}/o",
            "--tumor-label",
            "1",
        ],
        "already names the organ itself",
    ),
    "evaluate a prediction with transposed axes": (
        "",
        ["evaluate", "--pred", "{ws}/pred_T", "--truth", "{ws}/truth", "--out", "{ws}/m.json"],
        "axes are transposed",
    ),
    "evaluate a prediction 5 m away": (
        "",
        ["evaluate", "--pred", "{ws}/pred_far", "--truth", "{ws}/truth", "--out", "{ws}/m.json"],
        "does not overlap the truth",
    ),
    "evaluate a probability map": (
        "",
        ["evaluate", "--pred", "{ws}/pred_prob", "--truth", "{ws}/truth", "--out", "{ws}/m.json"],
        "non-integer values",
    ),
    "evaluate a prediction with unknown labels": (
        "",
        ["evaluate", "--pred", "{ws}/pred_labels", "--truth", "{ws}/truth", "--out", "{ws}/m.json"],
        "holds label(s) [7]",
    ),
    # sizes that files ask for, bounded before allocation (peak memory: test_size_refusals_stay_small)
    **BOUNDED,
    "a CT whose scl_slope is 1e36": (
        "",
        ["synthesize", "{ws}/ct_slope.nii.gz", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "far beyond Hounsfield units",
    ),
    "an int8 CT": (
        "",
        ["synthesize", "{ws}/ct_int8.nii.gz", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "8-bit values",
    ),
    "an output name too long for the file system": (
        "",
        ["synthesize", *C1, *SYN, "--out", "{ws}/" + "n" * 240],
        "too long for this file system",
    ),
    "a symbolic link loop as the CT": (
        "",
        ["synthesize", "{ws}/loop.nii.gz", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "points to itself",
    ),
    "a dangling symbolic link as --out": (
        "",
        ["synthesize", *C1, *SYN, "--out", "{ws}/dangling"],
        "not a dangling link",
    ),
    "a DICOM slice with another pixel spacing": (
        "",
        ["synthesize", "{ws}/dicom_spacing", "--organ-mask", "{ws}/d/c1/liver.nii.gz", *SYN, "--out", "{ws}/o"],
        "has pixel spacing [2.5, 2.5] mm",
    ),
    "a pipeline with pickled weights": (
        "",
        ["synthesize", *C1, "--organ-label", "1", "--pipeline", "{ws}/pipe_bin", "--out", "{ws}/o"],
        "holds no safetensors weights (only pickled diffusion_pytorch_model.bin)",
    ),
    "a whole-volume organ mask": (
        "",
        ["synthesize", "{ws}/d/c1/ct.nii.gz", "--organ-mask", "{ws}/body.nii.gz", *SYN, "--out", "{ws}/o"],
        "lies in air",
    ),
    # configuration values
    "keep_checkpoints=-1": ("", [*TRAIN, "--set", "run.keep_checkpoints=-1"], "run.keep_checkpoints must be >= 1"),
    "log_every=0": ("", [*TRAIN, "--set", "run.log_every=0"], "run.log_every must be >= 1"),
    "lr=nan": ("", [*TRAIN, "--set", "optim.lr=nan"], "optim.lr must be a finite number"),
    "lr=0": ("", [*TRAIN, "--set", "optim.lr=0"], "optim.lr must be > 0"),
    "crop_size=[0,0,0]": ("", [*TRAIN, "--set", "data.crop_size=[0,0,0]"], "data.crop_size must be >= 16"),
    "spacing=0": ("", [*TRAIN, "--set", "data.spacing=0"], "data.spacing must be >= 0.1"),
    "batch_size=0": ("", [*TRAIN, "--set", "data.batch_size=0"], "data.batch_size must be >= 1"),
    "probability above 1": ("", [*TRAIN, "--set", "synthesis.prob=1.5"], "synthesis.prob must be >= 0 and <= 1"),
    "max_steps=0": ("", [*TRAIN, "--set", "run.max_steps=0"], "run.max_steps must be >= 1"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_with_one_line_and_nothing_touched(name, ws, capsys, monkeypatch):
    folder, arguments, expected = CASES[name]
    monkeypatch.chdir(ws / folder)
    before = snapshot(ws)
    code = cli([argument.format(ws=ws) for argument in arguments])
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    assert len(error.splitlines()) == 1 and error.startswith("error: "), error
    assert expected in error, error
    assert snapshot(ws) == before, "the workspace changed"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BOUNDED))
def test_size_refusals_stay_small(name, ws):
    """Each refusal of a size a file asks for happens before the allocation: the whole process peaks under 2 GB."""
    import subprocess
    import sys

    _, arguments, expected = BOUNDED[name]
    script = (
        "import resource, sys\n"
        "from difftumor.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    command = [sys.executable, "-c", script, *(argument.format(ws=ws) for argument in arguments)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ws)
    *lines, peak = result.stderr.strip().splitlines()
    assert result.returncode == 2 and expected in lines[-1], result.stderr[-2000:]
    assert int(peak) < 2 * 1024 * 1024, f"peak {int(peak) / 1024:.0f} MiB"  # ru_maxrss is in KiB on Linux


def test_out_of_memory_is_one_line_never_an_empty_message(ws, capsys, monkeypatch):
    def exhausted(*_, **__):
        raise MemoryError()

    monkeypatch.setattr("difftumor.synthesis.cases.load_volume", exhausted)
    code = cli(["synthesize", *[a.format(ws=ws) for a in C1], *SYN, "--out", str(ws / "o")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("error: out of memory;") and len(error.splitlines()) == 1


def test_a_config_hook_is_imported_only_when_trusted(ws, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "hook_ran"
    (tmp_path / "evil_hook.py").write_text(f"open({str(marker)!r}, 'w').close()\nnetwork = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = snapshot(ws)
    arguments = [
        "train",
        "autoencoder",
        "--set",
        f"data.datalist={ws}/train.json",
        "--set",
        f"run.output_dir={tmp_path}/run",
        "--set",
        "loss.perceptual_weight=1",
        "--set",
        "loss.perceptual_network=evil_hook:network",
    ]
    assert cli(arguments) == 2
    error = capsys.readouterr().err
    assert "not a registered perceptual network" in error and "--trust-config-code" in error
    assert not marker.exists() and not (tmp_path / "run").exists()
    assert snapshot(ws) == before


def test_dicom_series_is_chosen_by_uid(ws, tmp_path):
    import pydicom

    from difftumor.data.volumes import load_volume

    uid = str(pydicom.dcmread(str(ws / "dicom_two" / "b_slice_000.dcm")).SeriesInstanceUID)
    chosen = load_volume(ws / "dicom_two", "CT", series=uid)
    whole = load_volume(ws / "dicom", "CT")
    assert chosen.shape == whole.shape == (32, 30, 16)
    np.testing.assert_array_equal(chosen.array, whole.array)
    # One file of a series stands for its series, even in a folder holding two.
    assert load_volume(ws / "dicom_two" / "b_slice_003.dcm", "CT").shape == (32, 30, 16)


def test_overwrite_replaces_only_difftumor_results_and_batch_never_forces_it(ws, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["synthesize", *[a.format(ws=ws) for a in C1], *SYN]
    assert cli([*arguments, "--out", str(out)]) == 0
    first = snapshot(out)
    assert cli([*arguments, "--out", str(out), "--seed", "1"]) == 2  # no --overwrite
    assert snapshot(out) == first
    assert cli([*arguments, "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert snapshot(out) != first and (out / ".difftumor").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporaries left beside it

    batch = tmp_path / "batch"
    datalist = tmp_path / "two.json"
    datalist.write_text(
        json.dumps(
            [
                {"image": str(ws / "d" / c / "ct.nii.gz"), "organ_mask": str(ws / "d" / c / "liver.nii.gz"), "id": c}
                for c in ("c1", "c2")
            ]
        )
    )
    assert cli(["synthesize", "--datalist", str(datalist), "--out", str(batch), *SYN]) == 0
    done = snapshot(batch)
    assert cli(["synthesize", "--datalist", str(datalist), "--out", str(batch), *SYN]) == 0
    assert snapshot(batch) == done  # finished cases of the same request are kept, not redone
    assert cli(["synthesize", "--datalist", str(datalist), "--out", str(batch), *SYN, "--seed", "3"]) == 2
    assert snapshot(batch) == done  # another request is refused without --overwrite, nothing replaced
    capsys.readouterr()


def test_a_label_map_using_255_gets_a_wider_tumour_label(ws, tmp_path):
    out = tmp_path / "out"
    arguments = ["synthesize", f"{ws}/d/c1/ct.nii.gz", "--organ-mask", f"{ws}/organs255.nii.gz", "--organ-label", "1"]
    assert cli([*arguments, *SYN, "--out", str(out)]) == 0
    labels = np.asanyarray(nib.load(str(out / "label.nii.gz")).dataobj)
    assert labels.max() == 256 and (labels == 255).sum() == 1
