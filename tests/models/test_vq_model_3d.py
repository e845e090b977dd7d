"""VQModel3D: parity with the original VQ-GAN, codebook behaviour, save/load, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch

from difftumor import VQModel3D
from difftumor.models.ema_codebook import nearest_code_indices
from tests.conftest import load_fixture

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def recorded(fixtures_dir):
    return load_fixture("vqgan_outputs.pt"), load_fixture("input_crop.pt")


@pytest.mark.parametrize("channels_last", [True, False])
def test_encode_quantize_decode_match_the_original(original_small, recorded, channels_last):
    vq = original_small["vqmodel"]
    vq.use_channels_last = channels_last
    outputs, crop = recorded
    with torch.no_grad():
        encoder_out = vq._run(vq.encoder, crop)
        latents = vq.encode(crop).latents
        quantized = vq.quantize(latents)
        decoded = vq.decode(latents).sample
        decoded_from_indices = vq.decode_indices(quantized.indices).sample
    torch.testing.assert_close(encoder_out, outputs["encoder_out"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(latents, outputs["z_pre_quant"], atol=ATOL, rtol=RTOL)
    assert torch.equal(quantized.indices, outputs["indices"])
    torch.testing.assert_close(quantized.latents, outputs["z_q"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(quantized.commitment_loss, outputs["commitment_loss"], atol=1e-7, rtol=RTOL)
    torch.testing.assert_close(quantized.perplexity, outputs["perplexity"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(decoded, outputs["decode_from_indices"], atol=ATOL, rtol=RTOL)
    assert torch.equal(decoded, decoded_from_indices)
    vq.use_channels_last = True


def test_latent_normalisation_uses_the_global_codebook_range(original_small, recorded):
    vq = original_small["vqmodel"]
    outputs, _ = recorded
    low, high = vq.latent_range
    assert low.item() == outputs["codebook_min"].item() and high.item() == outputs["codebook_max"].item()
    torch.testing.assert_close(vq.normalize_latents(outputs["z_pre_quant"]), outputs["z_norm"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(vq.denormalize_latents(outputs["z_norm"]), outputs["z_denorm"], atol=ATOL, rtol=RTOL)
    codebook = vq.normalize_latents(vq.codebook)
    assert codebook.min().item() == pytest.approx(-1.0) and codebook.max().item() == pytest.approx(1.0)


def test_chunked_nearest_code_search_equals_the_full_distance_matrix():
    generator = torch.Generator().manual_seed(0)
    vectors, codebook = torch.randn(1000, 8, generator=generator), torch.randn(300, 8, generator=generator)
    full = (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t() + codebook.t().pow(2).sum(0)).argmin(1)
    for chunk in (1, 7, 256, 4096):
        assert torch.equal(nearest_code_indices(vectors, codebook, chunk), full)
    codebook[5] = codebook[3]  # exact tie: the first index wins, as in the original
    assert (nearest_code_indices(codebook[3:4], codebook, 2) == 3).all()


def test_training_initialises_updates_and_restarts_the_codebook():
    torch.manual_seed(0)
    vq = VQModel3D(hidden_channels=4, latent_channels=4, num_codes=16, norm_num_groups=2, downsample=(2, 2, 2))
    vq.train()
    assert not bool(vq.quantizer.initialized)
    x = torch.rand(2, 1, 8, 8, 8) * 2 - 1
    out = vq(x)
    assert bool(vq.quantizer.initialized)
    assert out.sample.shape == x.shape and out.indices.shape == (2, 4, 4, 4)
    assert out.commitment_loss > 0 and 1 <= out.perplexity <= 16
    # Initialised from the batch's 128 encoder outputs, then one EMA step: N = 0.99 * 1 + 0.01 * usage.
    assert torch.allclose(vq.quantizer.cluster_size.sum(), torch.tensor(0.99 * 16 + 0.01 * 128), atol=1e-4)
    out.sample.mean().backward()
    assert vq.encoder.conv_in.conv.weight.grad is not None and vq.decoder.conv_out.conv.weight.grad is not None

    # A flat second batch uses a single code: codes used fewer than 3 times before fall below an EMA count of 1
    # and are restarted with one of this batch's encoder outputs.
    flat_batch = torch.zeros(2, 1, 8, 8, 8)
    with torch.no_grad():
        vectors = vq.encode(flat_batch).latents.movedim(1, -1).reshape(-1, 4)
        vq(flat_batch)
    dead = vq.quantizer.cluster_size < 1.0
    assert dead.any()
    distances = (vq.quantizer.embeddings[dead][:, None] - vectors[None]).norm(dim=-1)
    assert distances.min(dim=1).values.max() < 1e-5


def test_eval_mode_leaves_the_codebook_alone(original_small, recorded):
    vq = original_small["vqmodel"]
    _, crop = recorded
    before = {k: v.clone() for k, v in vq.quantizer.state_dict().items()}
    with torch.no_grad():
        vq(crop)
    for key, value in vq.quantizer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_save_and_load_round_trip_is_bit_exact(original_small, recorded, tmp_path):
    vq = original_small["vqmodel"]
    _, crop = recorded
    vq.save_pretrained(tmp_path / "vq")
    assert (tmp_path / "vq" / "diffusion_pytorch_model.safetensors").exists()
    loaded = VQModel3D.from_pretrained(tmp_path / "vq").eval()
    assert bool(loaded.quantizer.initialized)
    with torch.no_grad():
        assert torch.equal(vq.decode(vq.encode(crop).latents).sample, loaded.decode(loaded.encode(crop).latents).sample)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    vq = VQModel3D(hidden_channels=4, latent_channels=4, num_codes=8, norm_num_groups=2, downsample=(4, 4, 4)).eval()
    x = torch.rand(1, 1, 16, 16, 16)

    def gradients():
        vq.zero_grad()
        vq.decode(vq.encode(x).latents, force_not_quantize=True).sample.square().mean().backward()
        return [p.grad.clone() for p in vq.parameters()]

    plain = gradients()
    vq.enable_gradient_checkpointing()
    assert vq.encoder.gradient_checkpointing and vq.decoder.gradient_checkpointing
    checkpointed = gradients()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


def test_anisotropic_downsampling_and_bad_factors():
    vq = VQModel3D(hidden_channels=4, latent_channels=2, num_codes=8, norm_num_groups=2, downsample=(2, 4, 4)).eval()
    with torch.no_grad():
        latents = vq.encode(torch.zeros(1, 1, 8, 16, 16)).latents
        assert latents.shape == (1, 2, 4, 4, 4)
        assert vq.decode(latents).sample.shape == (1, 1, 8, 16, 16)
    with pytest.raises(ValueError, match="powers of two"):
        VQModel3D(downsample=(3, 4, 4))
