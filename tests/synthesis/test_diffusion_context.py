"""The diffusion synthesizer gives its model the context it was trained on: crops smaller than the model's training
crops are padded to them, so 48³ training crops get tumours as dark as 64³ ones (unpadded they came out a fifth as
dark)."""

from __future__ import annotations

import numpy as np
import torch

from difftumor.synthesis import get_synthesizer
from difftumor.synthesis.synthesizers.base import CropBatch
from difftumor.synthesis.synthesizers.diffusion import _with_context
from difftumor.training.data import preprocessing
from tests.helpers.volumes import PATIENT_A_CT, PATIENT_A_ORGANS


def _liver_crop(size: int):
    data = preprocessing((-175, 250), 1.0, (size, size, size), True, (-175.0, 250.0))(  # HU, clipped to the window
        {"image": str(PATIENT_A_CT), "label": str(PATIENT_A_ORGANS)}
    )
    image, liver = data["image"][0], data["label"][0] == 5
    centre = torch.nonzero(liver).float().mean(0).round().long()
    box = tuple(slice(int(c) - size // 2, int(c) + size // 2) for c in centre)
    return image[box].float(), liver[box]


def test_small_crops_are_padded_to_the_models_training_crops(monkeypatch):
    synthesizer = get_synthesizer("diffusion", device="cpu")
    pipeline = synthesizer._pipeline_for("small")
    assert list(pipeline.config["training_crop_size"]) == [64, 64, 64]
    images = torch.arange(48**3, dtype=torch.float32).view(1, 1, 48, 48, 48)
    padded, masks, inside = _with_context(pipeline, images, torch.ones_like(images, dtype=torch.bool))
    assert padded.shape[2:] == (64, 64, 64) and masks.sum() == 48**3 and torch.equal(padded[inside], images)
    same, _, _ = _with_context(pipeline, torch.zeros(1, 1, 64, 64, 80), torch.zeros(1, 1, 64, 64, 80, dtype=bool))
    assert same.shape[2:] == (64, 64, 80)  # large enough already: unchanged

    import difftumor.synthesis.synthesizers.diffusion as diffusion_module

    def paint(size: int) -> float:
        image, liver = _liver_crop(size)
        offsets = torch.stack(torch.meshgrid(*[torch.arange(size) - size // 2] * 3, indexing="ij"))
        tumour = ((offsets**2).sum(0) <= 25) & liver  # a 1 cm sphere at the liver's centre
        batch = CropBatch(
            images=image[None, None].repeat(3, 1, 1, 1, 1),
            tumor_masks=tumour[None, None].repeat(3, 1, 1, 1, 1),
            organ_masks=liver[None, None].repeat(3, 1, 1, 1, 1),
            organ="liver",
            size_classes=["small"] * 3,
            seeds=[0, 1, 2],
        )
        painted = synthesizer.synthesize(batch).images
        return float(np.mean([(painted[i, 0] - image)[tumour].mean() for i in range(3)]))

    changes = {size: paint(size) for size in (48, 64)}
    monkeypatch.setattr(diffusion_module, "_with_context", lambda pipeline, images, masks: (images, masks, ...))
    unpadded = paint(48)
    # Patient A's unenhanced liver (46 HU) gets about -10 HU from the organ-relative rule at both sizes; without the
    # padding the 48³ tumours are fainter still.
    assert changes[64] < -5 and abs(changes[48] - changes[64]) < abs(changes[64]) / 3, changes
    assert unpadded > changes[48] + abs(changes[64]) / 3, (unpadded, changes)
