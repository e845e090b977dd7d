"""Lets plain diffusers load this folder:

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

It only imports the installed difftumor package (pip install difftumor); difftumor's own
TumorInpaintPipeline.from_pretrained never runs this file.
"""

from difftumor.pipelines.tumor_inpaint.pipeline_tumor_inpaint import TumorInpaintPipeline  # noqa: F401
