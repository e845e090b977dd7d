"""The rule-only ablation of a diffusion synthesis: the same tumours painted again without the model.

``difftumor realism`` measures it beside every diffusion group, so that what the diffusion model adds to the contrast
rule (:class:`~difftumor.synthesis.synthesizers.RuleOnlySynthesizer`) is measured rather than assumed. The twin is
painted from the synthesis's own record (``tumors.json``: input CT and mask, organ, size, count, seed, centres, blend
range); tumour placement depends on the seed alone, so the twin's tumour masks are the synthesis's — checked voxel
for voxel, a twin whose masks differ is left out with a note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.volumes import Volume, load_volume
from ..errors import DiffTumorInputError
from .engine import synthesize_tumors
from .synthesizers import RuleOnlySynthesizer


@dataclass
class AblationCase:
    """A rule-only twin of one synthesis case, in memory: the painted CT and its label map (the synthesis's)."""

    name: str
    ct: Volume
    labels: np.ndarray
    tumor_label: int
    organ_label: int


def rule_only_twin(manifest_path: Path) -> AblationCase:
    """Paint the tumours of the diffusion synthesis recorded in ``manifest_path`` again with the rule only.

    Raises:
        DiffTumorInputError: the record is not a diffusion synthesis, its inputs are gone, or the twin's tumour
            masks differ from the synthesis's.
    """
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("synthesizer") != "diffusion":
        raise DiffTumorInputError(f"{manifest_path} is not a diffusion synthesis", "the ablation is of diffusion only")
    record = manifest.get("input", {})
    paths = [Path(record.get("ct", "")), Path(record.get("organ_mask", ""))]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DiffTumorInputError(
            f"the inputs of {manifest_path.parent} are gone ({', '.join(missing)})",
            "keep the input CT and mask where synthesize read them to measure the rule-only ablation",
        )
    ct = load_volume(paths[0], "CT", series=manifest.get("series"))
    mask = load_volume(paths[1], "organ mask")
    tumor_label = int(manifest["tumor_label"])
    result = synthesize_tumors(
        ct,
        mask,
        record["organ"],
        RuleOnlySynthesizer(blend_sigma_mm=tuple(manifest.get("blend_sigma_mm", (1.0, 3.0)))),
        size=manifest["size"],
        count=int(manifest["count"]),
        seed=int(manifest["seed"]),
        organ_label=record.get("organ_label"),
        centers_mm=manifest.get("centers_mm"),
        tumor_label=tumor_label,
        warn=lambda message: None,
    )
    synthesized = np.rint(load_volume(manifest_path.parent / "label.nii.gz", "label map").array) == tumor_label
    if not np.array_equal(result.labels == tumor_label, synthesized):
        raise DiffTumorInputError(
            f"the rule-only twin of {manifest_path.parent} places its tumours elsewhere",
            "re-run the synthesis with this version of difftumor to measure the ablation",
        )
    organ_label = record.get("organ_label") or 1
    painted = Volume(result.ct, ct.affine, ct.path, ct.header, ct.source_format, ct.extra)
    return AblationCase(manifest_path.parent.name, painted, result.labels, tumor_label, int(organ_label))
