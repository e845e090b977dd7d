"""The two diffusers models of DiffTumor."""

from .unet_3d_inpaint import UNet3DInpaintModel, UNet3DInpaintOutput
from .vq_model_3d import VQDecoderOutput3D, VQEncoderOutput3D, VQModel3D, VQQuantizeOutput3D

__all__ = [
    "UNet3DInpaintModel",
    "UNet3DInpaintOutput",
    "VQDecoderOutput3D",
    "VQEncoderOutput3D",
    "VQModel3D",
    "VQQuantizeOutput3D",
]
