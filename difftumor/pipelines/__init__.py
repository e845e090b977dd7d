"""diffusers pipelines of difftumor."""

from .tumor_inpaint import TumorInpaintPipeline, TumorInpaintPipelineOutput

__all__ = ["TumorInpaintPipeline", "TumorInpaintPipelineOutput"]
