"""VQModel3D: the DiffTumor 3-D VQ-GAN autoencoder (96³ HU crops <-> 8 × 24³ latents) as a diffusers model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from .autoencoder_blocks_3d import Decoder3D, Encoder3D, SamePadConv3d
from .ema_codebook import EMACodebook
from .loading import AlignedLoadingMixin


@dataclass
class VQEncoderOutput3D(BaseOutput):
    """Output of :meth:`VQModel3D.encode`.

    Args:
        latents (`torch.Tensor` of shape `(B, latent_channels, D/f, H/f, W/f)`):
            continuous pre-quantisation latents (what the diffusion stage normalises and inpaints).
    """

    latents: torch.Tensor


@dataclass
class VQQuantizeOutput3D(BaseOutput):
    """Output of :meth:`VQModel3D.quantize`.

    Args:
        latents (`torch.Tensor` of shape `(B, C, d, h, w)`): the nearest code vectors (straight-through to the input).
        indices (`torch.LongTensor` of shape `(B, d, h, w)`): their codebook indices.
        commitment_loss (`torch.Tensor`, scalar): ``commitment_cost · MSE(z, sg(e))``.
        perplexity (`torch.Tensor`, scalar): ``exp(entropy)`` of the code usage in the batch.
    """

    latents: torch.Tensor
    indices: torch.LongTensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


@dataclass
class VQDecoderOutput3D(BaseOutput):
    """Output of :meth:`VQModel3D.decode` and :meth:`VQModel3D.forward`.

    Args:
        sample (`torch.Tensor` of shape `(B, out_channels, D, H, W)`): reconstruction in the input's intensity scale
            (HU window mapped to [-1, 1]; values may leave that range slightly: there is no output activation).
        commitment_loss (`torch.Tensor`, *optional*): set by :meth:`forward`.
        perplexity (`torch.Tensor`, *optional*): set by :meth:`forward`.
        indices (`torch.LongTensor`, *optional*): code indices, set by :meth:`forward`.
    """

    sample: torch.Tensor
    commitment_loss: torch.Tensor | None = None
    perplexity: torch.Tensor | None = None
    indices: torch.LongTensor | None = None


class VQModel3D(AlignedLoadingMixin, ModelMixin, ConfigMixin):
    r"""3-D VQ-GAN autoencoder of DiffTumor (architecture of the released ``AutoencoderModel.ckpt``).

    Tensors are ``(B, C, D, H, W)`` with ``D`` the axial (z) axis: callers permute MONAI's ``(B, C, X, Y, Z)`` with
    ``x.permute(0, 1, 4, 2, 3)`` first, as the original does. Inputs are CT crops in the HU window [-175, 250] mapped
    to [-1, 1].

    Parameters:
        in_channels (`int`, defaults to 1): image channels of the input (and of the reconstruction).
        hidden_channels (`int`, defaults to 16): width after the first convolution; each level doubles it.
        downsample (`tuple[int, int, int]`, defaults to `(4, 4, 4)`): per-axis reduction factor (powers of two);
            96³ -> 24³ with the default.
        latent_channels (`int`, defaults to 8): channels of the latent and size of each code.
        num_codes (`int`, defaults to 16384): codebook size.
        norm_num_groups (`int`, defaults to 32): GroupNorm groups.
        norm_eps (`float`, defaults to 1e-6): GroupNorm epsilon.
        padding_mode (`str`, defaults to `"replicate"`): padding of the same-size convolutions.
        commitment_cost (`float`, defaults to 0.25): weight of the commitment loss.
        codebook_decay (`float`, defaults to 0.99): EMA decay of the codebook statistics.
        restart_threshold (`float`, defaults to 1.0): EMA count under which a code is restarted during training.
        random_restart (`bool`, defaults to `True`): restart dead codes during training.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        hidden_channels: int = 16,
        downsample: Sequence[int] = (4, 4, 4),
        latent_channels: int = 8,
        num_codes: int = 16384,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        padding_mode: str = "replicate",
        commitment_cost: float = 0.25,
        codebook_decay: float = 0.99,
        restart_threshold: float = 1.0,
        random_restart: bool = True,
    ):
        super().__init__()
        downsample = tuple(downsample)
        self.encoder = Encoder3D(in_channels, hidden_channels, downsample, norm_num_groups, norm_eps, padding_mode)
        self.quant_conv = SamePadConv3d(self.encoder.out_channels, latent_channels, 1, padding_mode=padding_mode)
        self.quantizer = EMACodebook(num_codes, latent_channels, codebook_decay, restart_threshold, random_restart)
        self.post_quant_conv = SamePadConv3d(latent_channels, self.encoder.out_channels, 1, padding_mode=padding_mode)
        self.decoder = Decoder3D(in_channels, hidden_channels, downsample, norm_num_groups, norm_eps, padding_mode)
        # channels-last is 2-4x faster for these 3-D convolutions on CPU (oneDNN); it changes rounding only.
        self.use_channels_last = True

    # -- helpers ---------------------------------------------------------------------------------------------

    def _run(self, module: Encoder3D | Decoder3D, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.use_channels_last:
            hidden_states = hidden_states.contiguous(memory_format=torch.channels_last_3d)
        return module(hidden_states, channels_last=self.use_channels_last).contiguous()

    @property
    def codebook(self) -> torch.Tensor:
        """The ``(num_codes, latent_channels)`` code vectors."""
        return self.quantizer.embeddings

    @property
    def latent_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Global scalar minimum and maximum over all codebook entries (used to normalise latents)."""
        return self.quantizer.embeddings.min(), self.quantizer.embeddings.max()

    # -- public API ------------------------------------------------------------------------------------------

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> VQEncoderOutput3D | tuple[torch.Tensor]:
        """Encode ``x`` ``(B, in_channels, D, H, W)`` in [-1, 1] to continuous latents ``(B, C_latent, d, h, w)``."""
        latents = self.quant_conv(self._run(self.encoder, x))
        if not return_dict:
            return (latents,)
        return VQEncoderOutput3D(latents=latents)

    def quantize(self, latents: torch.Tensor, return_dict: bool = True) -> VQQuantizeOutput3D | tuple:
        """Snap ``latents`` ``(B, C, d, h, w)`` to their nearest codes (and, in training mode, update the codebook)."""
        quantized, indices, commitment, perplexity = self.quantizer(latents)
        commitment_loss = self.config.commitment_cost * commitment
        if not return_dict:
            return quantized, indices, commitment_loss, perplexity
        return VQQuantizeOutput3D(
            latents=quantized, indices=indices, commitment_loss=commitment_loss, perplexity=perplexity
        )

    @apply_forward_hook
    def decode(
        self, latents: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True
    ) -> VQDecoderOutput3D | tuple[torch.Tensor]:
        """Decode latents ``(B, latent_channels, d, h, w)`` to a volume ``(B, in_channels, D, H, W)``.

        By default the latents are first replaced by their nearest code vectors (what DiffTumor does with the
        output of the diffusion model); ``force_not_quantize=True`` decodes them as they are.
        """
        if not force_not_quantize:
            latents = self.quantizer.lookup(self.quantizer.nearest(latents))
        return self._decode(latents, return_dict)

    @apply_forward_hook
    def decode_indices(self, indices: torch.LongTensor, return_dict: bool = True) -> VQDecoderOutput3D | tuple:
        """Decode integer code indices ``(B, d, h, w)`` to a volume ``(B, in_channels, D, H, W)``."""
        return self._decode(self.quantizer.lookup(indices), return_dict)

    def _decode(self, codes: torch.Tensor, return_dict: bool) -> VQDecoderOutput3D | tuple[torch.Tensor]:
        sample = self._run(self.decoder, self.post_quant_conv(codes))
        if not return_dict:
            return (sample,)
        return VQDecoderOutput3D(sample=sample)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> VQDecoderOutput3D | tuple:
        """Autoencode ``sample`` ``(B, in_channels, D, H, W)``: encode, quantise (straight-through), decode."""
        quantized = self.quantize(self.encode(sample).latents)
        reconstruction = self._run(self.decoder, self.post_quant_conv(quantized.latents))
        if not return_dict:
            return reconstruction, quantized.commitment_loss, quantized.perplexity, quantized.indices
        return VQDecoderOutput3D(
            sample=reconstruction,
            commitment_loss=quantized.commitment_loss,
            perplexity=quantized.perplexity,
            indices=quantized.indices,
        )

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Map latents to the diffusion model's scale: ``(z − min) / (max − min) · 2 − 1`` with the codebook's global
        min/max. Codebook values land in [-1, 1]; encoder outputs outside the codebook range land outside it."""
        low, high = self.latent_range
        return (latents - low) / (high - low) * 2 - 1

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_latents`: ``(z + 1) / 2 · (max − min) + min``."""
        low, high = self.latent_range
        return (latents + 1) / 2 * (high - low) + low
