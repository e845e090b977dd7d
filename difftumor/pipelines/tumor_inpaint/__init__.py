from .blending import blend_into_hu
from .pipeline_tumor_inpaint import TumorInpaintPipeline, TumorInpaintPipelineOutput

__all__ = ["TumorInpaintPipeline", "TumorInpaintPipelineOutput", "blend_into_hu"]
