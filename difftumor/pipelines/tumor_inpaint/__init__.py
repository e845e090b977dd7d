from .pipeline_tumor_inpaint import TumorInpaintPipeline, TumorInpaintPipelineOutput, blend_into_hu

__all__ = ["TumorInpaintPipeline", "TumorInpaintPipelineOutput", "blend_into_hu"]
