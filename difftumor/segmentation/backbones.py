"""Segmentation backbones by name (MONAI networks, configured as in DiffTumor's STEP3), extensible by entry points.

Third-party packages add backbones under the entry-point group ``difftumor.segmentation_backbones``: a callable
``(in_channels, out_channels, **kwargs) -> nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from ..errors import DiffTumorInputError


def _unet(
    in_channels: int,
    out_channels: int,
    channels=(16, 32, 64, 128, 256),
    strides=(2, 2, 2, 2),
    num_res_units: int = 2,
    **kwargs: Any,
) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        **kwargs,
    )


def _dynunet(in_channels: int, out_channels: int, levels: int = 5, filters=None, **kwargs: Any) -> nn.Module:
    """nnU-Net-style configuration: 3×3×3 kernels, stride 1 then 2 per level, instance norm (the original's
    ``get_kernels_strides`` for 96³ patches at ~1 mm)."""
    from monai.networks.nets import DynUNet

    strides = [[1, 1, 1]] + [[2, 2, 2]] * (levels - 1)
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[[3, 3, 3]] * levels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(filters) if filters else None,
        norm_name="instance",
        deep_supervision=False,
        res_block=kwargs.pop("res_block", False),
        **kwargs,
    )


def _swinunetr(in_channels: int, out_channels: int, feature_size: int = 48, **kwargs: Any) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        spatial_dims=3,
        norm_name="instance",
        **kwargs,
    )


def _segresnet(in_channels: int, out_channels: int, init_filters: int = 16, **kwargs: Any) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(
        spatial_dims=3, in_channels=in_channels, out_channels=out_channels, init_filters=init_filters, **kwargs
    )


_BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "dynunet": _dynunet,
    "nnunet": _dynunet,
    "swinunetr": _swinunetr,
    "segresnet": _segresnet,
}


def available_backbones() -> list[str]:
    plugins = {entry.name for entry in entry_points(group="difftumor.segmentation_backbones")}
    return sorted(set(_BUILTIN) | plugins)


def make_backbone(name: str, in_channels: int = 1, out_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name``."""
    if name in _BUILTIN:
        factory = _BUILTIN[name]
    else:
        plugins = {entry.name: entry for entry in entry_points(group="difftumor.segmentation_backbones")}
        if name not in plugins:
            raise DiffTumorInputError(
                f"unknown segmentation backbone {name!r}", f"choose one of {', '.join(available_backbones())}"
            )
        factory = plugins[name].load()
    try:
        return factory(in_channels, out_channels, **kwargs)
    except TypeError as error:
        raise DiffTumorInputError(f"backbone {name} does not accept these settings ({error})") from None
