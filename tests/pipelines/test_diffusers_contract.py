"""What a diffusers user expects of the pipeline: NumPy in and out, step callbacks, offload hooks on encode/decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

from difftumor import TumorInpaintPipeline
from difftumor.assets import BUNDLED_PIPELINE
from difftumor.errors import DiffTumorInputError
from tests.conftest import DEVICE


@pytest.fixture(scope="module")
def pipe():
    pipeline = TumorInpaintPipeline.from_pretrained(BUNDLED_PIPELINE).to(DEVICE)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _crop():
    grid = np.indices((32, 32, 32)).sum(0).astype(np.float32)
    hu = 60.0 + 10.0 * np.sin(grid / 5)
    mask = np.zeros_like(hu, dtype=bool)
    mask[12:20, 12:20, 12:20] = True
    return hu, mask


def test_numpy_in_numpy_out_matches_torch(pipe):
    hu, mask = _crop()
    as_numpy = pipe(hu, mask, generator=torch.Generator().manual_seed(0), output_type="np")
    as_torch = pipe(
        torch.from_numpy(hu)[None, None], torch.from_numpy(mask)[None, None], generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(as_numpy.images, np.ndarray) and as_numpy.images.shape == (1, 1, 32, 32, 32)
    np.testing.assert_array_equal(as_numpy.images, as_torch.images.numpy())
    with pytest.raises(DiffTumorInputError, match="output_type"):
        pipe(hu, mask, output_type="pil")
    with pytest.raises(DiffTumorInputError, match="pass a torch.Tensor or numpy.ndarray"):
        pipe(hu.tolist(), mask)


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(pipe):
    hu, mask = _crop()
    seen = []

    def callback(pipeline, index, timestep, tensors):
        seen.append((index, int(timestep), tuple(tensors)))
        return {"latents": tensors["latents"].clamp(-0.5, 0.5)}

    out = pipe(hu, mask, generator=torch.Generator().manual_seed(0), callback_on_step_end=callback)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and all(s[2] == ("latents",) for s in seen)
    assert out.latents.abs().max() <= 0.5
    with pytest.raises(DiffTumorInputError, match="not available"):
        pipe(hu, mask, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["prompt_embeds"])


class CountingHook(ModelHook):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


def test_offload_hooks_fire_on_encode_and_decode(pipe):
    """``enable_model_cpu_offload`` moves a model when its hook fires; encode/decode must fire it (diffusers'
    ``apply_forward_hook``), as forward would, or the VQ model would never be moved to the accelerator."""
    counter = CountingHook()
    add_hook_to_module(pipe.vqmodel, counter)
    try:
        hu, mask = _crop()
        pipe(hu, mask, generator=torch.Generator().manual_seed(0))
        assert counter.calls == 2  # one masked encode, one quantised decode
    finally:
        remove_hook_from_module(pipe.vqmodel)


PLAIN_DIFFUSERS = """
import sys, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
hu = torch.full((1, 1, 32, 32, 32), 60.0)
mask = torch.zeros_like(hu, dtype=torch.bool)
mask[..., 12:20, 12:20, 12:20] = True
out = pipe(hu, mask, generator=torch.Generator().manual_seed(0))
print(type(pipe).__name__, type(pipe.scheduler).__name__, float(out.images[mask].mean()))
"""


def test_plain_diffusers_loads_a_saved_folder(pipe, tmp_path):
    """A diffusers user's first line works on a folder difftumor saved (diffusers' custom-pipeline mechanism, behind
    its own trust_remote_code gate), and gives what difftumor's loader gives."""
    import subprocess
    import sys

    pipe.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "pipeline.py").exists()
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_DIFFUSERS, str(tmp_path / "saved")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    name, scheduler, tumour = done.stdout.split()
    assert name == "TumorInpaintPipeline" and scheduler == "PreciseDDPMScheduler"
    ours = TumorInpaintPipeline.from_pretrained(tmp_path / "saved")
    hu = torch.full((1, 1, 32, 32, 32), 60.0)
    mask = torch.zeros_like(hu, dtype=torch.bool)
    mask[..., 12:20, 12:20, 12:20] = True
    expected = ours(hu, mask, generator=torch.Generator().manual_seed(0)).images[mask].mean()
    assert float(tumour) == pytest.approx(float(expected), abs=1e-4)


def test_our_loader_never_runs_the_folder_code(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    marker = tmp_path / "ran"
    (tmp_path / "saved" / "pipeline.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    TumorInpaintPipeline.from_pretrained(tmp_path / "saved")
    assert not marker.exists()
