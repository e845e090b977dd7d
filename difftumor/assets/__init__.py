"""Files shipped inside the package: the bundled demo pipeline and the demo CT (see README for their provenance)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DiffTumorInputError

ASSETS = Path(__file__).resolve().parent
BUNDLED_PIPELINE = ASSETS / "tiny_pipeline"
DEMO_CASE = ASSETS / "demo_case"


def bundled_pipeline_path() -> Path:
    """Folder of the small diffusion pipeline shipped with the package (demo quality)."""
    if not (BUNDLED_PIPELINE / "model_index.json").exists():
        raise DiffTumorInputError("this installation has no bundled diffusion pipeline", "pass --pipeline PATH|REPO_ID")
    return BUNDLED_PIPELINE
