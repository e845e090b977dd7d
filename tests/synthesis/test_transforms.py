"""On-the-fly synthesis for segmentation training: the MONAI transform and its batched twin, on real CT crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from difftumor.synthesis import HandcraftedSynthesizer
from difftumor.synthesis.transforms import RandTumorSynthesisd, TumorSynthesisOnBatch
from difftumor.training.data import preprocessing
from tests.helpers.volumes import PATIENT_A_CT, PATIENT_A_ORGANS


@pytest.fixture(scope="module")
def liver_crops(data_dir):
    """Four 64³ crops (1 mm, RAS, window -> [0, 1]) around patient A's liver; label 1 = liver."""
    data = preprocessing((-175, 250), 1.0, (64, 64, 64), True, (0.0, 1.0))(
        {"image": str(PATIENT_A_CT), "label": str(PATIENT_A_ORGANS)}
    )
    image, label = data["image"], (data["label"] == 5).float()
    center = torch.nonzero(label[0]).float().mean(0).round().long()
    crops = []
    for offset in ((0, 0, 0), (-20, 0, 0), (0, -20, 0), (0, 0, -12)):
        start = [int(c) + o - 32 for c, o in zip(center, offset)]
        box = tuple(slice(s, s + 64) for s in start)
        crops.append((image[(slice(None), *box)].clone(), label[(slice(None), *box)].clone()))
    return crops


class CountingHandcrafted(HandcraftedSynthesizer):
    calls: list[int] = []
    constructed = 0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        CountingHandcrafted.constructed += 1

    def synthesize(self, batch):
        CountingHandcrafted.calls.append(batch.images.shape[0])
        return super().synthesize(batch)


def test_monai_transform_adds_a_tumour_to_healthy_crops_only(liver_crops):
    image, label = liver_crops[0]
    transform = RandTumorSynthesisd(
        keys=("image", "label"), synthesizer="handcrafted", organ="liver", prob=1.0, size_mix={"small": 1.0}
    )
    transform.set_random_state(seed=3)
    out = transform({"image": image, "label": label})
    tumour = out["label"][0] == 2
    assert tumour.any() and (label[0][tumour] == 1).all()  # inside the liver
    changed = out["image"][0] != image[0]
    assert changed.any() and out["image"].min() >= 0 and out["image"].max() <= 1
    assert out["image"][0][tumour].mean() < image[0][tumour].mean()  # hypo-attenuating
    # The soft edge reaches 4σ ≤ 8 voxels (σ ≤ 2 mm) in every direction, diagonals included.
    near = ndimage.binary_dilation(tumour.numpy(), structure=np.ones((3, 3, 3)), iterations=9)
    far = ~torch.from_numpy(near)
    assert torch.equal(out["image"][0][far], image[0][far])
    transform.set_random_state(seed=3)
    again = transform({"image": image, "label": label})
    assert torch.equal(again["image"], out["image"]) and torch.equal(again["label"], out["label"])
    # A crop that already has a tumour is not healthy: untouched.
    unhealthy = out["label"].clone()
    assert torch.equal(transform({"image": image, "label": unhealthy})["image"], image)
    never = RandTumorSynthesisd(keys=("image", "label"), prob=0.0)
    assert torch.equal(never({"image": image, "label": label})["image"], image)


def test_batched_synthesis_loads_once_and_batches(liver_crops, monkeypatch):
    import difftumor.synthesis.transforms as transforms_module

    created = []

    def fake_get(name, **kwargs):
        created.append(name)
        return CountingHandcrafted()

    monkeypatch.setattr(transforms_module, "get_synthesizer", fake_get)
    CountingHandcrafted.calls = []
    hook = TumorSynthesisOnBatch(synthesizer="handcrafted", organ="liver", prob=1.0, size_mix={"early": 1.0})
    images = torch.stack([c[0] for c in liver_crops])
    labels = torch.stack([c[1] for c in liver_crops])
    for step in range(3):
        out_images, out_labels, count = hook(
            images, labels, seeds=[10 * step + i for i in range(4)], healthy=[True, True, False, True]
        )
        assert count == 3 and not torch.equal(out_images[0], images[0]) and torch.equal(out_images[2], images[2])
        assert (out_labels == 2).any()
    assert created == ["handcrafted"]  # built once, reused
    assert CountingHandcrafted.calls == [3, 3, 3]  # one call per batch, three crops each


def test_probability_and_size_mix_are_respected(liver_crops):
    hook = TumorSynthesisOnBatch(synthesizer=HandcraftedSynthesizer(), organ="liver", prob=0.5, size_mix={"tiny": 1.0})
    image, label = liver_crops[0]
    counts = sum(hook(image[None], label[None], seeds=[seed])[2] for seed in range(40))
    assert 10 <= counts <= 30
    with pytest.raises(Exception, match="invalid size mix"):
        TumorSynthesisOnBatch(size_mix={"early": -1.0})


def test_monai_transform_keeps_meta_tensors_whether_or_not_it_paints(liver_crops):
    from monai.data import MetaTensor

    image, label = liver_crops[0]
    affine = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    affine[:3, 3] = torch.tensor([-12.0, 30.0, 410.0])
    data = {
        "image": MetaTensor(image, affine=affine, meta={"filename_or_obj": "ct.nii.gz"}),
        "label": MetaTensor(label, affine=affine, meta={"filename_or_obj": "label.nii.gz"}),
    }
    for prob in (1.0, 0.0):
        transform = RandTumorSynthesisd(
            keys=("image", "label"), synthesizer="handcrafted", organ="liver", prob=prob, size_mix={"small": 1.0}
        )
        transform.set_random_state(seed=3)
        out = transform(data)
        for key, name in (("image", "ct.nii.gz"), ("label", "label.nii.gz")):
            assert isinstance(out[key], MetaTensor), (prob, key)
            assert torch.equal(out[key].affine, affine) and out[key].meta["filename_or_obj"] == name
        assert (prob == 1.0) == bool((out["label"] == 2).any())


def test_monai_transform_refuses_crops_that_cannot_be_on_its_scale(liver_crops):
    from difftumor.errors import DiffTumorInputError
    from difftumor.windowing import unscale_window

    image, label = liver_crops[0]
    hu = unscale_window(image, (-175.0, 250.0), (0.0, 1.0))  # what LoadImaged gives without ScaleIntensityRanged
    scaled = RandTumorSynthesisd(synthesizer="handcrafted", prob=1.0, size_mix={"small": 1.0})
    with pytest.raises(DiffTumorInputError, match="looks like Hounsfield units.*ScaleIntensityRanged"):
        scaled({"image": hu, "label": label})
    in_hu = RandTumorSynthesisd(synthesizer="handcrafted", prob=1.0, size_mix={"small": 1.0}, intensity_range="hu")
    with pytest.raises(DiffTumorInputError, match="intensity_range='hu'"):
        in_hu({"image": image, "label": label})
    # The same tumour either way: painted in HU, or painted in window scale and mapped.
    in_hu.set_random_state(seed=3)
    scaled.set_random_state(seed=3)
    from_hu, from_scaled = in_hu({"image": hu, "label": label}), scaled({"image": image, "label": label})
    assert torch.equal(from_hu["label"], from_scaled["label"]) and (from_hu["label"] == 2).any()
    tumour = from_hu["label"][0] == 2
    assert from_hu["image"][0][tumour].mean() < hu[0][tumour].mean() - 10  # darker by HU, not by a fraction
    inside = tumour & (from_scaled["image"][0] > 0) & (from_scaled["image"][0] < 1)  # unclipped by the window
    expected = unscale_window(from_scaled["image"][0][inside], (-175.0, 250.0), (0.0, 1.0))
    assert torch.allclose(from_hu["image"][0][inside], expected, atol=1e-3)


def test_monai_transform_refuses_a_tumour_label_another_structure_uses(liver_crops):
    from difftumor.errors import DiffTumorInputError

    image, label = liver_crops[0]
    totalsegmentator = label * 5  # liver is 5 in TotalSegmentator's scheme
    totalsegmentator[0, :10] = 2  # kidney_right
    totalsegmentator[0, -10:] = 3  # kidney_left
    totalsegmentator[0, :, :6] = 1  # spleen
    transform = RandTumorSynthesisd(synthesizer="handcrafted", organ_label=5, prob=1.0)
    with pytest.raises(DiffTumorInputError, match="tumor_label 2 is used by another structure.*tumor_label=6"):
        transform({"image": image, "label": totalsegmentator})
    # A crop that shows only {0, 2, 5} after one that showed other structures: the map is known to hold them.
    transform = RandTumorSynthesisd(synthesizer="handcrafted", organ_label=5, prob=0.0)
    only_kidney = label * 5
    only_kidney[0, -10:] = 3
    only_kidney[0, :, :6] = 1
    transform({"image": image, "label": only_kidney})
    only_kidney[0, :10] = 2
    only_kidney[0, -10:] = 0
    with pytest.raises(DiffTumorInputError, match="used by another structure"):
        transform({"image": image, "label": only_kidney})
    fine = RandTumorSynthesisd(synthesizer="handcrafted", organ_label=5, tumor_label=200, prob=1.0)
    fine.set_random_state(seed=3)
    assert (fine({"image": image, "label": totalsegmentator})["label"] == 200).any()
    with pytest.raises(DiffTumorInputError, match="both 5"):
        RandTumorSynthesisd(organ_label=5, tumor_label=5)
    # A dataset's own extra class passes: KiTS (1 kidney, 2 tumour, 3 cyst) and an ignore label 255.
    kits = label.clone()
    kits[0, -10:] = 3
    kits[0, :4] = 255
    transform = RandTumorSynthesisd(synthesizer="handcrafted", prob=1.0)
    transform.set_random_state(seed=3)
    assert (transform({"image": image, "label": kits})["label"] == 2).any()
    kits[0, 20:24, 20:24, 20:24] = 2  # a real tumour in that crop: skipped, not refused
    assert torch.equal(transform({"image": image, "label": kits})["image"], image)


def test_monai_transform_refuses_a_grid_that_is_not_1_mm(liver_crops):
    from monai.data import MetaTensor

    from difftumor.errors import DiffTumorInputError

    image, label = liver_crops[0]
    affine = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0]))
    transform = RandTumorSynthesisd(synthesizer="handcrafted", prob=1.0)
    with pytest.raises(DiffTumorInputError, match="3 x 3 x 3 mm voxels.*Spacingd"):
        transform({"image": MetaTensor(image, affine=affine), "label": MetaTensor(label, affine=affine)})


def test_monai_transform_records_every_outcome_and_warns_when_most_crops_are_skipped(liver_crops, caplog):
    from monai.data import MetaTensor

    image, label = liver_crops[0]
    transform = RandTumorSynthesisd(synthesizer="handcrafted", prob=1.0, size_mix={"small": 1.0})
    transform.set_random_state(seed=3)
    out = transform({"image": MetaTensor(image.clone()), "label": MetaTensor(label.clone())})
    record = out["image"].applied_operations[-1]
    assert record["class"] == "RandTumorSynthesisd" and record["extra_info"]["outcome"] == "painted"
    assert record["extra_info"]["changed_voxels"] == int((out["image"] != image).sum()) > 0
    assert transform.inverse(out)["image"].applied_operations == []  # the record goes; the tumour stays
    assert (out["label"] == 2).any()

    outside = torch.zeros_like(label)  # no organ in the crop
    transform({"image": MetaTensor(image.clone()), "label": MetaTensor(outside)})
    with caplog.at_level("WARNING", logger="difftumor.synthesis.transforms"):
        for _ in range(30):
            skipped = transform({"image": MetaTensor(image.clone()), "label": MetaTensor(out["label"].clone())})
    assert skipped["image"].applied_operations[-1]["extra_info"]["outcome"] == "has_tumor"
    assert transform.outcomes == {"painted": 1, "no_organ": 1, "has_tumor": 30}
    warnings = [r.getMessage() for r in caplog.records if "RandTumorSynthesisd skipped" in r.getMessage()]
    assert len(warnings) == 1 and "already held tumor_label 2" in warnings[0]


def test_a_bank_pays_the_synthesizer_once_per_reuse_uses_and_resumes(liver_crops, tmp_path):
    from difftumor.synthesis.bank import PaintedCropBank
    from difftumor.training.checkpoints import load_plain_state, save_plain_state

    images = torch.stack([c[0] for c in liver_crops])
    labels = torch.stack([c[1] for c in liver_crops])

    def run(steps, bank, start=0):
        CountingHandcrafted.calls = []
        hook = TumorSynthesisOnBatch(
            bank=bank, synthesizer=CountingHandcrafted(), organ="liver", prob=1.0, size_mix={"tiny": 1.0}
        )
        outputs = [hook(images, labels, seeds=[100 * step + i for i in range(4)]) for step in range(start, steps)]
        return hook, outputs

    hook, outputs = run(60, PaintedCropBank(capacity=8, reuse=4))
    assert hook.synthesised == 240 and len(hook.bank) == 8
    # 8 crops fill the bank; afterwards a quarter of the chosen crops are painted (binomial, 232 draws: 58 ± 20).
    assert 38 <= hook.painted - 8 <= 78, hook.painted
    assert sum(CountingHandcrafted.calls) == hook.painted
    for _, out_labels, count in outputs:  # every crop carries a tumour, banked or painted
        assert count == 4 and all((out_labels[i] == 2).any() for i in range(4))
    _, plain = run(60, None)
    assert sum(CountingHandcrafted.calls) == 240  # no bank: every crop painted

    # The bank is training state: saved at step 30 and restored, the run continues identically.
    bank = PaintedCropBank(capacity=8, reuse=4)
    run(30, bank)
    save_plain_state(bank.state_dict(), tmp_path, "state_synthesis_bank")
    restored = PaintedCropBank(capacity=8, reuse=4)
    restored.load_state_dict(load_plain_state(tmp_path, "state_synthesis_bank"))
    _, resumed = run(60, restored, start=30)
    for (a, b, _), (c, d, _) in zip(outputs[30:], resumed):
        assert torch.equal(a, c) and torch.equal(b, d)
    with pytest.raises(ValueError, match="not this run's"):
        PaintedCropBank(capacity=4, reuse=4).load_state_dict(bank.state_dict())
    with pytest.raises(Exception, match="below 1"):
        PaintedCropBank(capacity=8, reuse=0.5)
