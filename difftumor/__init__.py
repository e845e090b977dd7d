"""difftumor: generalizable tumour synthesis in CT (DiffTumor, CVPR 2024) as a diffusers-style framework.

The public classes are imported lazily so that ``import difftumor`` (and the CLI's ``--help``) stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "VQModel3D": "difftumor.models.vq_model_3d",
    "UNet3DInpaintModel": "difftumor.models.unet_3d_inpaint",
    "TumorInpaintPipeline": "difftumor.pipelines.tumor_inpaint",
    "TumorInpaintPipelineOutput": "difftumor.pipelines.tumor_inpaint",
    "make_scheduler": "difftumor.schedulers",
    "DiffTumorInputError": "difftumor.errors",
    "synthesize_ct": "difftumor.synthesis",
}

__all__ = [*_LAZY, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .errors import DiffTumorInputError
    from .models.unet_3d_inpaint import UNet3DInpaintModel
    from .models.vq_model_3d import VQModel3D
    from .pipelines.tumor_inpaint import TumorInpaintPipeline, TumorInpaintPipelineOutput
    from .schedulers import make_scheduler
    from .synthesis import synthesize_ct


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'difftumor' has no attribute {name!r}")
