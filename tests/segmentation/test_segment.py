"""`difftumor segment`: any input geometry in, prediction on the input grid out; post-processing rules."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from difftumor.cli.main import main as cli
from difftumor.segmentation import SegmentationModel, available_backbones, make_backbone, postprocess
from tests.helpers.training_data import small_training_set
from tests.helpers.volumes import reoriented_anisotropic_copy


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    model = SegmentationModel(
        backbone="unet", backbone_kwargs={"channels": [4, 8], "strides": [2], "num_res_units": 0}, roi_size=(32, 32, 32)
    )
    folder = tmp_path_factory.mktemp("seg") / "model"
    model.save_pretrained(folder)
    return folder


def test_prediction_is_written_on_the_input_grid(tiny_model, tmp_path, data_dir):
    data = small_training_set(tmp_path / "data")
    source = tmp_path / "data" / "lits" / "images" / "lits117.nii.gz"
    reoriented = reoriented_anisotropic_copy(source, tmp_path / "odd.nii.gz")
    for ct in (source, reoriented):
        out = tmp_path / f"pred_{ct.name}"
        assert cli(["segment", str(ct), "--model", str(tiny_model), "--out", str(out)]) == 0
        prediction, image = nib.load(str(out)), nib.load(str(ct))
        assert prediction.shape == image.shape and np.array_equal(prediction.affine, image.affine)
        assert set(np.unique(np.asanyarray(prediction.dataobj))) <= {0, 1, 2}
    assert data["lits"].exists()


def test_saved_model_loads_back_identically(tiny_model):
    loaded = SegmentationModel.from_pretrained(tiny_model)
    again = SegmentationModel.from_pretrained(tiny_model)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), again(x))
    assert loaded.config.backbone == "unet" and list(loaded.config.roi_size) == [32, 32, 32]


def test_postprocessing_rules():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:35, 5:35, 5:35] = 1
    labels[10:20, 10:20, 10:20] = 2  # kept: radius 6.2 mm
    labels[25:27, 25:27, 25:27] = 2  # 8 mm³: radius 1.2 mm -> organ
    labels[36:40, 0:4, 0:4] = 0
    labels[37:40, 0:3, 0:3] = 2  # 27 mm³ (radius 1.9 mm) and outside the organ -> background
    out = postprocess(labels, np.array([1.0, 1.0, 1.0]))
    assert (out[10:20, 10:20, 10:20] == 2).all() and (out[25:27, 25:27, 25:27] == 1).all()
    assert (out[37:40, 0:3, 0:3] == 0).all()
    far = labels.copy()
    far[0:4, 36:40, 0:4] = 0
    big_away = far.copy()
    big_away[0:10, 0:10, 36:40] = 2  # large but not touching the organ: removed when restricting
    assert (postprocess(big_away, np.ones(3))[0:10, 0:10, 36:40] == 0).all()
    assert (postprocess(big_away, np.ones(3), restrict_to_organ=False)[0:10, 0:10, 36:40] == 2).all()


def test_postprocessing_keeps_the_organ_not_its_stray_fragments():
    labels = np.zeros((40, 40, 60), np.uint8)
    labels[5:35, 5:35, 5:30] = 1  # the organ
    labels[10:20, 10:20, 10:20] = 2  # a tumour in it
    labels[20:30, 20:30, 40:46] = 1  # a stray "organ" fragment elsewhere ...
    labels[22:30, 22:30, 46:54] = 2  # ... with a large "tumour" touching it
    out = postprocess(labels, np.ones(3))
    assert (out[10:20, 10:20, 10:20] == 2).all()
    assert not out[:, :, 35:].any()  # fragment and its tumour are background
    kidneys = postprocess(labels, np.ones(3), organ_components=2)  # two kidneys: the second part is kept
    assert (kidneys[22:30, 22:30, 46:54] == 2).all()
    assert (postprocess(labels, np.ones(3), restrict_to_organ=False)[22:30, 22:30, 46:54] == 2).all()


def test_backbone_registry():
    assert {"unet", "dynunet", "swinunetr", "segresnet"} <= set(available_backbones())
    for name, kwargs in (
        ("dynunet", {"levels": 3, "filters": [4, 8, 16]}),
        ("segresnet", {"init_filters": 8}),
        ("swinunetr", {"feature_size": 12}),
    ):
        network = make_backbone(name, 1, 3, **kwargs).eval()
        size = 64 if name == "swinunetr" else 32  # SwinUNETR downsamples 32x: 32³ would leave one voxel
        with torch.no_grad():
            assert network(torch.rand(1, 1, size, size, size)).shape == (1, 3, size, size, size)


def test_segment_errors(tiny_model, tmp_path, capsys):
    assert (
        cli(["segment", str(tmp_path / "none.nii.gz"), "--model", str(tiny_model), "--out", str(tmp_path / "p.nii.gz")])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        cli(
            [
                "segment",
                str(tmp_path / "none.nii.gz"),
                "--model",
                str(tiny_model),
                "--out",
                str(tmp_path / "missing" / "p.nii.gz"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_folder_in_folder_out_with_continue_device_auto_and_label_names(tiny_model, tmp_path, capsys):
    import json

    from difftumor.assets import DEMO_CASE

    source = nib.load(str(DEMO_CASE / "ct.nii.gz"))
    cts = tmp_path / "cts"
    cts.mkdir()
    for name, start in (("a", 0), ("b", 40)):
        array = np.asanyarray(source.dataobj)[40:72, 30:62, start : start + 24].astype(np.int16)
        nib.save(nib.Nifti1Image(array, source.affine), str(cts / f"{name}.nii.gz"))
    out = tmp_path / "predictions"
    arguments = ["segment", str(cts), "--model", str(tiny_model), "--out", str(out)]
    assert cli(arguments) == 0  # --device auto: the CPU here
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(
        [".difftumor"] + [f"{c}{s}" for c in "ab" for s in (".nii.gz", ".labels.json", ".ctbl", ".itksnap.txt")]
    )
    assert json.loads((out / "a.labels.json").read_text()) == {"0": "background", "1": "liver", "2": "liver tumour"}
    first = (out / "a.nii.gz").stat().st_mtime_ns
    (out / "b.nii.gz").unlink()
    assert cli([*arguments, "--continue"]) == 0  # only b again
    assert (out / "a.nii.gz").stat().st_mtime_ns == first and (out / "b.nii.gz").exists()
    assert cli(arguments) == 2  # without --continue or --overwrite an existing prediction is kept
    assert "already exists" in capsys.readouterr().err
    assert cli([*arguments[:-1], str(tmp_path / "one.nii.gz")]) == 2  # a folder of CTs into one file
    assert "pass a folder for --out" in capsys.readouterr().err
