"""Training and inference see a CT the same way: the MONAI chain the trainer uses (`training.data.preprocessing`)
and the working image `difftumor segment` builds (`segmentation.inference.working_image`) put it on the same grid
with the same values."""

from __future__ import annotations

import numpy as np

from difftumor.data.volumes import load_volume
from difftumor.segmentation.inference import working_image
from difftumor.spatial.grid import sample
from difftumor.training.data import preprocessing
from tests.helpers.volumes import PATIENT_A_CT


def test_training_and_inference_preprocessing_agree_on_a_real_ct():
    window, spacing = (-175.0, 250.0), 2.0
    chain = preprocessing(window, spacing, (32, 32, 32), False, (0.0, 1.0))
    sample_dict = {"image": str(PATIENT_A_CT)}
    for transform in chain.transforms[:-2]:  # up to the intensity window; padding and meta-stripping aside
        sample_dict = transform(sample_dict)
    trained = np.asarray(sample_dict["image"][0])
    trained_affine = np.asarray(sample_dict["image"].affine, dtype=np.float64)

    inferred, inferred_affine = working_image(load_volume(PATIENT_A_CT), window, spacing)
    assert np.allclose(trained_affine, inferred_affine, atol=1e-4)  # the same RAS grid, the same origin
    on_trained_grid = sample(inferred, inferred_affine, trained_affine, trained.shape, order=1, cval=np.nan)
    # Every voxel but the outermost layer (where MONAI extends the border and inference pads with the window's
    # bottom) agrees to interpolation rounding.
    inner = (slice(1, -1),) * 3
    difference = np.abs(on_trained_grid[inner] - trained[inner])
    assert np.isfinite(difference).all() and difference.max() < 1e-3
