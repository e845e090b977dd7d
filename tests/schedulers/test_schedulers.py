"""Samplers: DiffTumor's schedule, the original's 4-step DDPM loop and 50-step DDIM, and every safe sampler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from difftumor.errors import DiffTumorInputError
from difftumor.pipelines.tumor_inpaint.pipeline_tumor_inpaint import step_kwargs
from difftumor.schedulers import available_schedulers, difftumor_cosine_betas, make_scheduler
from tests.conftest import load_fixture
from tests.helpers.noise_tape import replay_ddpm_noise
from tests.helpers.released_formats import original_schedule_buffers

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def t4(fixtures_dir):
    return load_fixture("diffusion_T4_io.pt")


def test_schedule_buffers_reproduce_the_original(t4):
    ours = original_schedule_buffers(4)
    for name, value in t4["schedule_buffers"].items():
        torch.testing.assert_close(ours[name], value, atol=0, rtol=1e-6, msg=name)
    assert difftumor_cosine_betas(4)[-1] == pytest.approx(0.9999)


def test_scheduler_alphas_are_the_float64_schedule(t4):
    scheduler = make_scheduler("ddpm", 4)
    assert torch.equal(scheduler.alphas_cumprod, t4["schedule_buffers"]["alphas_cumprod"])
    # Plain diffusers accumulates in float32 and is 1.7e-4 off at the last step: the reason for the subclasses.
    plain = DDPMScheduler.from_config(scheduler.config)
    assert abs(plain.alphas_cumprod[-1] / scheduler.alphas_cumprod[-1] - 1) > 1e-4


def test_forward_process_and_epsilon_objective_match_the_original(t4, original_small):
    scheduler = make_scheduler("ddpm", 4)
    x_t = scheduler.add_noise(t4["x_start"], t4["noise"], t4["t"])
    torch.testing.assert_close(x_t, t4["x_t"], atol=ATOL, rtol=RTOL)
    with torch.no_grad():
        predicted = original_small["unet"](x_t, t4["t"], t4["cond"]).sample
    torch.testing.assert_close(F.l1_loss(predicted, t4["noise"]), t4["p_losses_l1"], atol=ATOL, rtol=RTOL)


def _original_posterior_mean(buffers, x_t, epsilon, t):
    """The original's p_mean_variance(clip_denoised=True) for one timestep, from its stored buffers."""
    x0 = (buffers["sqrt_recip_alphas_cumprod"][t] * x_t - buffers["sqrt_recipm1_alphas_cumprod"][t] * epsilon).clamp(
        -1, 1
    )
    return buffers["posterior_mean_coef1"][t] * x0 + buffers["posterior_mean_coef2"][t] * x_t


def test_one_ancestral_step_has_the_original_mean_and_variance(t4, original_small):
    scheduler = make_scheduler("ddpm", 4)
    scheduler.set_timesteps(4)
    buffers = t4["schedule_buffers"]
    with torch.no_grad():
        predicted = original_small["unet"](t4["x_t"], t4["t"], t4["cond"]).sample
    for i, t in enumerate(t4["t"].tolist()):
        x_t, epsilon = t4["x_t"][i : i + 1], predicted[i : i + 1]
        with replay_ddpm_noise([torch.zeros_like(x_t)]):
            mean = scheduler.step(epsilon, t, x_t).prev_sample
        # The scheduler's arithmetic is the original's, given the same ε̂ ...
        # (up to rounding, which x̂0's factor √(1/ᾱ) = 263 at t = 3 magnifies to a few 1e-6).
        torch.testing.assert_close(mean, _original_posterior_mean(buffers, x_t, epsilon, t), atol=ATOL, rtol=1e-5)
        # ... and against the recorded mean, our UNet's ε̂ tolerance (1e-5) is amplified by coef1·√(1/ᾱ − 1)
        # (≈ 100 at t = 3, where ᾱ = 1.4e-5).
        amplification = float(buffers["posterior_mean_coef1"][t] * buffers["sqrt_recipm1_alphas_cumprod"][t])
        torch.testing.assert_close(mean, t4["p_mean"][i : i + 1], atol=ATOL * (1 + amplification), rtol=RTOL)
        torch.testing.assert_close(
            scheduler._get_variance(t), t4["p_posterior_variance"][i].reshape(()), atol=1e-7, rtol=RTOL
        )


def test_four_step_loop_reproduces_the_original_with_its_noise(t4, original_small):
    scheduler = make_scheduler("ddpm", 4)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [3, 2, 1, 0]
    sample = t4["loop_x_T"].clone()
    with replay_ddpm_noise(t4["loop_noises"]) as tape, torch.no_grad():
        for t in scheduler.timesteps:
            sample = scheduler.step(original_small["unet"](sample, t, t4["cond"]).sample, t, sample).prev_sample
    assert len(tape) == 1  # the original also draws noise at t = 0 and multiplies it by zero
    reference = t4["loop_out"]
    # Systematic agreement: the average deviation is at the UNet's own rounding level ...
    assert (sample - reference).abs().mean() < ATOL
    # ... and no element leaves the UNet tolerance amplified by the most sensitive step (t = 3, ≈ 100x).
    buffers = t4["schedule_buffers"]
    amplification = float((buffers["posterior_mean_coef1"] * buffers["sqrt_recipm1_alphas_cumprod"]).max())
    torch.testing.assert_close(sample, reference, atol=ATOL * (1 + amplification), rtol=RTOL)


def test_ddim_50_reproduces_the_original_sampler(fixtures_dir, original_small):
    recorded = load_fixture("ddim_T200_S50_io.pt")
    scheduler = make_scheduler("ddim", 200)
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == recorded["ddim_timesteps"].flip(0).tolist()  # 197 ... 1
    torch.testing.assert_close(scheduler.alphas_cumprod, recorded["alphas_cumprod_T200"], atol=0, rtol=1e-6)
    assert scheduler.final_alpha_cumprod.item() == pytest.approx(recorded["ddim_alphas_prev"][0].item(), rel=1e-6)
    unet, cond, sample = original_small["unet"], recorded["cond"], recorded["x_T"].clone()
    with torch.no_grad():
        for index, t in enumerate(scheduler.timesteps):
            step = scheduler.step(unet(sample, t, cond).sample, t, sample, eta=0.0)
            if index == 0:
                # x̂0 = (x − √(1−ᾱ) ε̂) / √ᾱ amplifies the UNet's ε̂ tolerance by √((1−ᾱ)/ᾱ) (≈ 17 at t = 197).
                alpha = scheduler.alphas_cumprod[t]
                atol = ATOL * (1 + float(((1 - alpha) / alpha).sqrt()))
                torch.testing.assert_close(
                    step.pred_original_sample, recorded["first_step_pred_x0"], atol=atol, rtol=RTOL
                )
                torch.testing.assert_close(step.prev_sample, recorded["first_step_x_prev"], atol=atol, rtol=RTOL)
            sample = step.prev_sample
    # 50 chained UNet calls without clipping reach |x| ≈ 300; float32 rounding of the few small entries is
    # judged against the tensor's scale rather than their own.
    reference = recorded["out"]
    torch.testing.assert_close(sample, reference, rtol=RTOL, atol=RTOL * reference.abs().max().item())


def _epsilon_oracle(scheduler, x0, noise):
    """A perfect ε-model for a known (x0, noise): ε̂ = (x_t − √ᾱ_t x0) / √(1 − ᾱ_t) at the DDPM-scaled input."""

    def predict(model_input, t):
        alpha = scheduler.alphas_cumprod[int(round(float(t)))]
        return (model_input - alpha.sqrt() * x0) / (1 - alpha).sqrt()

    return predict


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++", "unipc", "euler", "heun"])
@pytest.mark.parametrize(("train_steps", "steps"), [(4, 4), (4, 2), (200, 10)])
def test_every_safe_sampler_recovers_x0_from_an_exact_model(name, train_steps, steps):
    if name == "heun" and train_steps < 20:
        with pytest.raises(DiffTumorInputError, match="heun needs a model trained with T >= 20") as refused:
            make_scheduler(name, train_steps)
        assert str(refused.value).endswith("; choose one of ddim, ddpm, dpm++, euler, unipc")  # heun not offered
        return
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 8, 4, 6, 6, generator=generator) * 1.8 - 0.9
    noise = torch.randn(2, 8, 4, 6, 6, generator=generator)
    scheduler = make_scheduler(name, train_steps)
    scheduler.set_timesteps(steps)
    model = _epsilon_oracle(scheduler, x0, noise)
    sample = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        sample = scheduler.step(model(model_input, t), t, sample, **step_kwargs(scheduler, generator)).prev_sample
    assert torch.isfinite(sample).all()
    target = x0
    if name == "ddim" and not scheduler.config.set_alpha_to_one:
        # The original's DDIM convention starts below T − 1 (the ε̂ implied by pure noise there is kept by every
        # deterministic step) and ends on ᾱ_0, not on a clean sample.
        first, final = scheduler.alphas_cumprod[scheduler.timesteps[0]], scheduler.final_alpha_cumprod
        implied_noise = (noise - first.sqrt() * x0) / (1 - first).sqrt()
        target = final.sqrt() * x0 + (1 - final).sqrt() * implied_noise
    assert (sample - target).abs().max() < 2e-3, (name, train_steps, steps)


def test_swapping_with_from_config_keeps_the_schedule():
    ddpm = make_scheduler("ddpm", 4)
    swapped = DDIMScheduler.from_config(ddpm.config)
    assert swapped.config.num_train_timesteps == 4 and swapped.config.trained_betas == ddpm.config.trained_betas
    again = make_scheduler("euler", swapped.config)
    assert torch.equal(again.alphas_cumprod, ddpm.alphas_cumprod)


def test_names_aliases_and_clear_errors():
    assert {"ddpm", "ddim", "dpm++", "unipc", "euler"} <= set(available_schedulers())
    assert type(make_scheduler("DPMSolver++", 4)).__name__ == "PreciseDPMSolverMultistepScheduler"
    for unsafe in ("pndm", "lcm", "flowmatch"):
        with pytest.raises(DiffTumorInputError, match="not safe.*choose one of ddim, ddpm"):
            make_scheduler(unsafe, 4)
    with pytest.raises(DiffTumorInputError, match="unknown scheduler 'karras'"):
        make_scheduler("karras", 4)
    with pytest.raises(DiffTumorInputError, match="num_train_timesteps"):
        make_scheduler("ddpm", {"prediction_type": "epsilon"})
