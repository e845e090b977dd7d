"""Map the original DiffTumor state dicts and hyper-parameters onto :class:`VQModel3D` and :class:`UNet3DInpaintModel`.

Both mappings are ordered lists of ``(pattern, replacement)`` regular expressions over key names. Every original
key must match exactly one rule (or be dropped on purpose), and every parameter of our model must be filled, so a
checkpoint of another architecture fails loudly instead of loading half its weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import DiffTumorInputError
from ..limits import check_model_size
from ..models.unet_3d_blocks import RotaryEmbedding
from ..models.unet_3d_inpaint import UNet3DInpaintModel
from ..models.vq_model_3d import VQModel3D

# Original VQ-GAN key -> VQModel3D key. Training-only parts (discriminators, LPIPS) are dropped.
_VQ_RULES: list[tuple[str, str | None]] = [
    (r"^encoder\.conv_first\.conv\.", "encoder.conv_in.conv."),
    (r"^encoder\.conv_blocks\.(\d+)\.down\.conv\.", r"encoder.down_blocks.\1.downsample.conv."),
    (r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down_blocks.\1.resnet."),
    (r"^encoder\.final_block\.0\.", "encoder.norm_out."),
    (r"^decoder\.final_block\.0\.", "decoder.norm_in."),
    (r"^decoder\.conv_blocks\.(\d+)\.up\.convt\.", r"decoder.up_blocks.\1.upsample.convt."),
    (r"^decoder\.conv_blocks\.(\d+)\.res1\.", r"decoder.up_blocks.\1.resnets.0."),
    (r"^decoder\.conv_blocks\.(\d+)\.res2\.", r"decoder.up_blocks.\1.resnets.1."),
    (r"^decoder\.conv_last\.conv\.", "decoder.conv_out.conv."),
    (r"^pre_vq_conv\.conv\.", "quant_conv.conv."),
    (r"^post_vq_conv\.conv\.", "post_quant_conv.conv."),
    (r"^codebook\.embeddings$", "quantizer.embeddings"),
    (r"^codebook\.N$", "quantizer.cluster_size"),
    (r"^codebook\.z_avg$", "quantizer.embedding_sum"),
    (r"^(image_discriminator|video_discriminator|perceptual_model)\.", None),
]

_RESNET = r"(block1\.proj|block1\.norm|block2\.proj|block2\.norm|mlp\.1|res_conv)"
_RESNET_NAMES = {
    "block1.proj": "conv1.conv",
    "block1.norm": "norm1",
    "block2.proj": "conv2.conv",
    "block2.norm": "norm2",
    "mlp.1": "time_emb_proj",
    "res_conv": "conv_shortcut",
}

# Original Unet3D key -> UNet3DInpaintModel key. The shared rotary frequencies are constants: dropped (and checked).
_UNET_RULES: list[tuple[str, str | None]] = [
    (r"^time_rel_pos_bias\.", "position_bias."),
    (r"^init_conv\.", "conv_in.conv."),
    (r"^(.*)rotary_emb\.freqs$", None),
    (r"^init_temporal_attn\.fn\.fn\.fn\.", "depth_attention_in."),
    (r"^init_temporal_attn\.fn\.norm\.gamma$", "depth_attention_in.norm.weight"),
    (r"^time_mlp\.1\.", "time_embedding.linear_1."),
    (r"^time_mlp\.3\.", "time_embedding.linear_2."),
    (r"^(downs|ups)\.(\d+)\.([01])\." + _RESNET + r"\.", "LEVEL_RESNET"),
    (r"^(downs|ups)\.(\d+)\.2\.fn\.fn\.", r"\1.\2.plane_attention."),
    (r"^(downs|ups)\.(\d+)\.2\.fn\.norm\.gamma$", r"\1.\2.plane_attention.norm.weight"),
    (r"^(downs|ups)\.(\d+)\.3\.fn\.fn\.fn\.", r"\1.\2.depth_attention."),
    (r"^(downs|ups)\.(\d+)\.3\.fn\.norm\.gamma$", r"\1.\2.depth_attention.norm.weight"),
    (r"^(downs|ups)\.(\d+)\.4\.", r"\1.\2.resample.conv."),
    (r"^mid_block([12])\." + _RESNET + r"\.", "MID_RESNET"),
    (r"^mid_spatial_attn\.fn\.fn\.fn\.", "mid_plane_attention."),
    (r"^mid_spatial_attn\.fn\.norm\.gamma$", "mid_plane_attention.norm.weight"),
    (r"^mid_temporal_attn\.fn\.fn\.fn\.", "mid_depth_attention."),
    (r"^mid_temporal_attn\.fn\.norm\.gamma$", "mid_depth_attention.norm.weight"),
    (r"^final_conv\.0\." + _RESNET + r"\.", "OUT_RESNET"),
    (r"^final_conv\.1\.", "conv_out."),
]
_LEVELS = {"downs": "down_blocks", "ups": "up_blocks"}


def _rename(key: str, rules: list[tuple[str, str | None]]) -> tuple[bool, str | None]:
    for pattern, replacement in rules:
        match = re.match(pattern, key)
        if not match:
            continue
        if replacement is None:
            return True, None
        rest = key[match.end() :]
        if replacement == "LEVEL_RESNET":
            level, index, resnet, part = match.groups()
            return True, f"{_LEVELS[level]}.{index}.resnets.{resnet}.{_RESNET_NAMES[part]}.{rest}"
        if replacement == "MID_RESNET":
            number, part = match.groups()
            return True, f"mid_resnet_{number}.{_RESNET_NAMES[part]}.{rest}"
        if replacement == "OUT_RESNET":
            return True, f"resnet_out.{_RESNET_NAMES[match.group(1)]}.{rest}"
        renamed = match.expand(replacement) + rest
        for level, name in _LEVELS.items():
            renamed = re.sub(rf"^{level}\.", f"{name}.", renamed)
        return True, renamed
    return False, None


def _squeezed_shape(shape: torch.Size) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def _load_mapped(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    rules: list[tuple[str, str | None]],
    what: str,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> None:
    targets = model.state_dict()
    converted: dict[str, torch.Tensor] = dict(extra or {})
    unknown = []
    for key, value in state_dict.items():
        known, new_key = _rename(key, rules)
        if not known:
            unknown.append(key)
            continue
        if new_key is None:
            continue
        if new_key not in targets:
            unknown.append(key)
            continue
        target = targets[new_key]
        if value.shape != target.shape:
            # In-plane convolutions drop the unit depth axis of the original's 1×k×k kernels (and vice versa).
            if _squeezed_shape(value.shape) != _squeezed_shape(target.shape):
                raise DiffTumorInputError(
                    f"{what} weight {key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}",
                    "the checkpoint does not match the configuration it was converted with",
                )
            value = value.reshape(target.shape)
        converted[new_key] = value.to(target.dtype)
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise DiffTumorInputError(
            f"{what} state dict has {len(unknown)} unexpected keys ({shown})",
            "is this an original DiffTumor checkpoint of the released architecture?",
        )
    missing = sorted(set(targets) - set(converted))
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise DiffTumorInputError(
            f"{what} state dict lacks {len(missing)} weights our model needs ({shown})",
            "is this an original DiffTumor checkpoint of the released architecture?",
        )
    model.load_state_dict(converted, strict=True)


# --------------------------------------------------------------------------------------------------------------
# VQ-GAN
# --------------------------------------------------------------------------------------------------------------


def vqmodel_config_from_original(config: Mapping[str, Any]) -> dict[str, Any]:
    """``VQModel3D`` constructor arguments from the original's ``cfg`` (sections ``model`` and ``dataset``)."""
    try:
        model_cfg = config["model"]
        dataset_cfg = config.get("dataset", {}) or {}
        if model_cfg.get("norm_type", "group") != "group":
            raise DiffTumorInputError(
                f"VQ-GAN norm_type {model_cfg['norm_type']!r} is not supported",
                "only the released GroupNorm autoencoder (norm_type: group) converts",
            )
        return {
            "in_channels": int(dataset_cfg.get("image_channels", 1)),
            "hidden_channels": int(model_cfg["n_hiddens"]),
            "downsample": tuple(int(d) for d in model_cfg["downsample"]),
            "latent_channels": int(model_cfg["embedding_dim"]),
            "num_codes": int(model_cfg["n_codes"]),
            "norm_num_groups": int(model_cfg.get("num_groups", 32)),
            "padding_mode": str(model_cfg.get("padding_type", "replicate")),
            "restart_threshold": float(model_cfg.get("restart_thres", 1.0)),
            "random_restart": not bool(model_cfg.get("no_random_restart", False)),
        }
    except (KeyError, TypeError) as error:
        raise DiffTumorInputError(
            f"VQ-GAN configuration lacks {error}",
            "pass the checkpoint's hyper_parameters['cfg'] with 'model' and 'dataset' sections",
        ) from None


def vqmodel_from_original(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> VQModel3D:
    """Build a :class:`VQModel3D` from an original VQ-GAN ``state_dict`` and its ``cfg``.

    Args:
        state_dict: ``VQGAN.state_dict()`` (e.g. ``ckpt['state_dict']`` of ``AutoencoderModel.ckpt``, or the
            ``vqgan.``-prefixed part of a diffusion checkpoint with the prefix removed). Discriminator and LPIPS
            weights are ignored.
        config: the original ``cfg`` as a nested mapping with ``model`` and ``dataset`` sections.

    Returns:
        The model in eval mode, codebook marked initialised.
    """
    converted = vqmodel_config_from_original(config)
    check_model_size(VQModel3D, converted, "the autoencoder checkpoint's config")
    model = VQModel3D(**converted)
    # The original re-initialises its codebook on the first training batch even after loading; ours must not.
    _load_mapped(model, state_dict, _VQ_RULES, "VQ-GAN", extra={"quantizer.initialized": torch.tensor(True)})
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Unet3D
# --------------------------------------------------------------------------------------------------------------

_UNSUPPORTED_UNET_OPTIONS = {
    "cond_dim": None,
    "use_bert_text_cond": False,
    "use_sparse_linear_attn": True,
    "block_type": "resnet",
}


def unet_config_from_original(unet_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``UNet3DInpaintModel`` constructor arguments from the original ``Unet3D(**kwargs)``."""
    for option, supported in _UNSUPPORTED_UNET_OPTIONS.items():
        if option in unet_kwargs and unet_kwargs[option] != supported:
            raise DiffTumorInputError(
                f"Unet3D option {option}={unet_kwargs[option]!r} is not supported",
                f"DiffTumor checkpoints use {option}={supported!r}",
            )
    dim = int(unet_kwargs["dim"])
    if unet_kwargs.get("init_dim") not in (None, dim):
        raise DiffTumorInputError(f"Unet3D init_dim {unet_kwargs['init_dim']} != dim {dim} is not supported")
    out_dim = int(unet_kwargs.get("out_dim") or unet_kwargs["channels"])
    channels = int(unet_kwargs["channels"])
    return {
        "sample_channels": out_dim,
        "condition_channels": channels - out_dim,
        "out_channels": out_dim,
        "base_channels": dim,
        "channel_multipliers": tuple(int(m) for m in unet_kwargs.get("dim_mults", (1, 2, 4, 8))),
        "attention_heads": int(unet_kwargs.get("attn_heads", 8)),
        "attention_head_dim": int(unet_kwargs.get("attn_dim_head", 32)),
        "norm_num_groups": int(unet_kwargs.get("resnet_groups", 8)),
        "init_kernel_size": int(unet_kwargs.get("init_kernel_size", 7)),
    }


def infer_unet_kwargs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Recover ``Unet3D(dim, dim_mults, channels, out_dim)`` from the weight shapes of an original state dict."""
    try:
        init = state_dict["init_conv.weight"]
        dim, channels, kernel = init.shape[0], init.shape[1], init.shape[-1]
        out_dim = state_dict["final_conv.1.weight"].shape[0]
        mults = []
        level = 0
        while f"downs.{level}.0.block1.proj.weight" in state_dict:
            mults.append(state_dict[f"downs.{level}.0.block1.proj.weight"].shape[0] // dim)
            level += 1
        heads = state_dict["time_rel_pos_bias.relative_attention_bias.weight"].shape[1]
        head_dim = state_dict["init_temporal_attn.fn.fn.fn.to_qkv.weight"].shape[0] // (3 * heads)
    except KeyError as error:
        raise DiffTumorInputError(
            f"diffusion state dict lacks {error}", "is this an original DiffTumor diffusion checkpoint?"
        ) from None
    return {
        "dim": dim,
        "dim_mults": mults,
        "channels": channels,
        "out_dim": out_dim,
        "attn_heads": heads,
        "attn_dim_head": head_dim,
        "init_kernel_size": kernel,
    }


def unet_from_original(state_dict: Mapping[str, torch.Tensor], unet_kwargs: Mapping[str, Any]) -> UNet3DInpaintModel:
    """Build a :class:`UNet3DInpaintModel` from an original ``Unet3D`` state dict and its constructor kwargs.

    Args:
        state_dict: ``Unet3D.state_dict()`` (e.g. the ``denoise_fn.`` part of a diffusion checkpoint's ``ema``,
            prefix removed).
        unet_kwargs: the ``Unet3D`` constructor arguments, e.g. ``{"dim": 24, "dim_mults": [1, 2, 4, 8],
            "channels": 17, "out_dim": 8}``.

    Returns:
        The model in eval mode.
    """
    config = unet_config_from_original(unet_kwargs)
    check_model_size(UNet3DInpaintModel, config, "the diffusion checkpoint's config")
    model = UNet3DInpaintModel(**config)
    expected = RotaryEmbedding(min(32, config["attention_head_dim"])).freqs
    for key, value in state_dict.items():
        if key.endswith("rotary_emb.freqs") and not torch.allclose(value.float(), expected, rtol=1e-6, atol=0):
            raise DiffTumorInputError(
                f"rotary frequencies {key} differ from the standard 1/10000^(2i/d)",
                "learned rotary frequencies are not supported",
            )
    _load_mapped(model, state_dict, _UNET_RULES, "Unet3D")
    return model.eval()
