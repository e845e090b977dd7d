"""Label schemes of organ masks: which id an organ has in a multi-label map another tool wrote.

``difftumor synthesize --mask-labels totalsegmentator --organ liver`` then finds the liver at 5 without
``--organ-label``. (Truth label schemes for ``evaluate`` are :func:`difftumor.data.registry.truth_label_schemes`.)
"""

from __future__ import annotations

from ..errors import DiffTumorInputError
from .layouts import TOTALSEGMENTATOR_IDS

#: scheme -> organ -> its label ids. TotalSegmentator v2 (``--ml`` output; also ``--organ-mask auto``).
MASK_LABEL_SCHEMES: dict[str, dict[str, tuple[int, ...]]] = {"totalsegmentator": TOTALSEGMENTATOR_IDS}
#: Names of the kidney labels of TotalSegmentator v2, to name them in a refusal.
_TOTALSEGMENTATOR_SIDES = {2: "kidney_right", 3: "kidney_left"}


def organ_label_in_scheme(scheme: str | None, organ: str, organ_label: int | None) -> int | None:
    """The organ's label id: ``organ_label`` when no scheme is given; the scheme's id for ``organ`` otherwise
    (refused when ``organ_label`` says another, or when the scheme splits the organ in two, as TotalSegmentator
    does the kidneys: then ``organ_label`` picks one)."""
    if scheme is None:
        return organ_label
    if scheme not in MASK_LABEL_SCHEMES:
        raise DiffTumorInputError(f"unknown mask label scheme {scheme!r}", f"choose {', '.join(MASK_LABEL_SCHEMES)}")
    ids = MASK_LABEL_SCHEMES[scheme].get(organ)
    if ids is None:
        raise DiffTumorInputError(f"the {scheme} scheme has no {organ}", "pass --organ-label N instead")
    if organ_label is not None:
        if organ_label not in ids:
            raise DiffTumorInputError(
                f"--organ-label {organ_label} is not the {organ} in {scheme}'s labels ({', '.join(map(str, ids))})",
                "drop --organ-label, or drop --mask-labels",
            )
        return organ_label
    if len(ids) > 1:
        sides = ", ".join(f"{i} ({_TOTALSEGMENTATOR_SIDES.get(i, organ)})" for i in ids)
        raise DiffTumorInputError(
            f"{scheme} labels the {organ} in {len(ids)} parts: {sides}", "pick one with --organ-label"
        )
    return ids[0]
