"""TumorInpaintPipeline at crop level: determinism, untouched voxels, save/load round trip."""

from __future__ import annotations

import pytest
import torch

from difftumor import TumorInpaintPipeline
from difftumor.errors import DiffTumorInputError
from difftumor.schedulers import make_scheduler
from tests.conftest import DEVICE


@pytest.fixture()
def small_pipeline(original_small):
    return TumorInpaintPipeline(
        original_small["vqmodel"], original_small["unet"], make_scheduler("ddpm", 4), organ="liver", tumor_stage="early"
    ).to(DEVICE)


def _crop_and_mask(seed=0):
    generator = torch.Generator().manual_seed(seed)
    hu = torch.rand(2, 1, 32, 32, 32, generator=generator) * 600 - 300  # values outside the window too
    mask = torch.zeros(2, 1, 32, 32, 32, dtype=torch.bool)
    mask[0, 0, 10:16, 12:18, 14:19] = True
    mask[1, 0, 18:22, 8:13, 5:9] = True
    return hu, mask


def test_same_seed_same_result_and_untouched_voxels_keep_their_hu(small_pipeline):
    hu, mask = _crop_and_mask()
    first = small_pipeline(hu, mask, generator=torch.Generator().manual_seed(7))
    second = small_pipeline(hu, mask, generator=torch.Generator().manual_seed(7))
    other = small_pipeline(hu, mask, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.images, second.images)
    assert not torch.equal(first.images, other.images)
    untouched = first.blend_weights == 0
    assert untouched.any() and torch.equal(first.images[untouched], hu[untouched])
    changed = first.images != hu
    assert changed[mask].float().mean() > 0.5  # the tumour itself is repainted
    assert (first.blend_weights[mask] > 0).all()


def test_save_and_load_round_trip_is_bit_exact(small_pipeline, tmp_path):
    hu, mask = _crop_and_mask(1)
    small_pipeline.save_pretrained(tmp_path / "pipe")
    loaded = TumorInpaintPipeline.from_pretrained(tmp_path / "pipe").to(DEVICE)
    assert type(loaded.scheduler) is type(small_pipeline.scheduler)
    a = small_pipeline(hu, mask, generator=torch.Generator().manual_seed(3))
    b = loaded(hu, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)


def test_from_pretrained_takes_diffusers_keywords_and_refuses_the_rest(small_pipeline, tmp_path):
    small_pipeline.save_pretrained(tmp_path / "pipe")
    ddim = make_scheduler("ddim", small_pipeline.scheduler.config)
    loaded = TumorInpaintPipeline.from_pretrained(tmp_path / "pipe", scheduler=ddim, torch_dtype=torch.float32)
    assert loaded.scheduler is ddim and loaded.unet.dtype == torch.float32
    with pytest.raises(DiffTumorInputError, match="does not take low_cpu_mem_usage"):
        TumorInpaintPipeline.from_pretrained(tmp_path / "pipe", low_cpu_mem_usage=True)
    with pytest.raises(DiffTumorInputError, match="use_safetensors=False is not supported"):
        TumorInpaintPipeline.from_pretrained(tmp_path / "pipe", use_safetensors=False)


@pytest.mark.parametrize("name", ["ddim", "dpm++", "unipc", "euler"])
def test_swapped_samplers_run_through_the_pipeline(small_pipeline, name):
    hu, mask = _crop_and_mask(2)
    small_pipeline.scheduler = make_scheduler(name, small_pipeline.scheduler.config)
    out = small_pipeline(hu, mask, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    expected = {
        "ddim": "DDIM",
        "dpm++": "DPMSolverMultistep",
        "unipc": "UniPCMultistep",
        "euler": "EulerDiscrete",
        "heun": "HeunDiscrete",
    }[name]
    assert type(small_pipeline.scheduler).__name__ == f"Precise{expected}Scheduler"
    # (Sampler accuracy is tested with an exact model in tests/schedulers; this model has random weights.)
    assert torch.isfinite(out.latents).all() and torch.isfinite(out.images).all()
    untouched = out.blend_weights == 0
    assert torch.equal(out.images[untouched], hu[untouched]) and not torch.equal(out.images[mask], hu[mask])
    reference = make_scheduler("ddpm", small_pipeline.scheduler.config)
    small_pipeline.scheduler = reference
    baseline = small_pipeline(hu, mask, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(baseline.latents, out.latents)  # the swap really changed the sampler


def test_bad_inputs_are_reported(small_pipeline):
    hu, mask = _crop_and_mask()
    with pytest.raises(DiffTumorInputError, match="divisible"):
        small_pipeline(hu[..., :30], mask[..., :30])
    with pytest.raises(DiffTumorInputError, match="tumor_mask shape"):
        small_pipeline(hu, mask[:1])
    with pytest.raises(DiffTumorInputError, match="num_inference_steps"):
        small_pipeline(hu, mask, num_inference_steps=9)
    with pytest.raises(DiffTumorInputError, match="blur_sigma has 3 values for 2 crops"):
        small_pipeline(hu, mask, blur_sigma=[1.0, 2.0, 3.0])
    with pytest.raises(DiffTumorInputError, match="blend 'soft' is not supported"):
        small_pipeline(hu, mask, blend="soft")
    with pytest.raises(DiffTumorInputError, match="output_type 'pil'"):
        small_pipeline(hu, mask, output_type="pil")
    from diffusers import PNDMScheduler

    small_pipeline.scheduler = PNDMScheduler.from_config(small_pipeline.scheduler.config)
    with pytest.raises(DiffTumorInputError, match="PNDM's Runge-Kutta warm-up breaks"):
        small_pipeline(hu, mask)
    from diffusers import HeunDiscreteScheduler

    small_pipeline.scheduler = HeunDiscreteScheduler.from_config(small_pipeline.scheduler.config)
    with pytest.raises(DiffTumorInputError, match="heun needs a model trained with T >= 20"):
        small_pipeline(hu, mask)


def test_outputs_are_on_the_inputs_device(small_pipeline):
    """Blending runs on the pipeline's device; every output goes back where the input was."""
    hu, mask = _crop_and_mask()
    for inputs in ((hu, mask), (hu.to(DEVICE), mask.to(DEVICE))):
        out = small_pipeline(*inputs, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
        assert {value.device for value in out.values()} == {inputs[0].device}


def test_the_outside_blend_keeps_what_the_model_painted_inside_the_tumour(small_pipeline):
    """The original's blend weights the decoded crop by the blurred mask inside the tumour too (below 1 for a tumour a
    few σ wide); blend="outside" keeps the decoded tumour whole and fades only outside it."""
    from difftumor.windowing import from_window

    hu, mask = _crop_and_mask(2)
    kwargs = {"generator": torch.Generator().manual_seed(5), "blur_sigma": 2.0}
    blurred = small_pipeline(hu, mask, **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(5)
    outside = small_pipeline(hu, mask, blend="outside", **kwargs)
    assert torch.equal(blurred.decoded, outside.decoded)  # the same painting, blended two ways
    assert blurred.blend_weights[mask].max() < 1 and (outside.blend_weights[mask] == 1).all()
    rim = ~mask & (blurred.blend_weights > 0)
    assert torch.equal(outside.blend_weights[rim], blurred.blend_weights[rim])
    decoded_hu = from_window(outside.decoded.double().clamp(-1, 1)).float()
    assert torch.allclose(outside.images[mask], decoded_hu[mask], atol=1e-3)
