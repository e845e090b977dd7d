"""Label names and colours written beside every label map, so 3D Slicer and ITK-SNAP show "liver", "liver tumour".

For ``<name>.nii.gz``: ``<name>.labels.json`` (``{"0": "background", "1": "liver", ...}``), ``<name>.ctbl`` (a 3D
Slicer colour table: load it with the volume and pick it as the segmentation's colour node) and ``<name>.itksnap.txt``
(an ITK-SNAP label description file: Segmentation > Import Label Descriptions).
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import replace_text

#: RGB of the organs and of every tumour (3D Slicer's GenericAnatomyColors where they exist).
_COLOURS = {
    "background": (0, 0, 0),
    "liver": (221, 130, 101),
    "pancreas": (249, 180, 111),
    "kidney": (185, 102, 83),
    "organ": (221, 130, 101),
    "tumour": (255, 40, 40),
}


def colour_of(name: str, index: int) -> tuple[int, int, int]:
    if "tumour" in name or "tumor" in name:
        return _COLOURS["tumour"]
    if name in _COLOURS:
        return _COLOURS[name]
    # Other structures of a multi-label map: distinct, stable colours.
    return ((index * 97) % 200 + 40, (index * 57) % 200 + 40, (index * 151) % 200 + 40)


def sidecar_paths(label_path: str | Path) -> dict[str, Path]:
    path = Path(label_path)
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    return {kind: path.with_name(f"{stem}{suffix}") for kind, suffix in _SUFFIXES.items()}


_SUFFIXES = {"json": ".labels.json", "slicer": ".ctbl", "itksnap": ".itksnap.txt"}


def write_label_descriptions(label_path: str | Path, names: dict[int, str], write_to: Path | None = None) -> list[Path]:
    """Write the three descriptions of ``label_path``'s labels (into ``write_to`` when given — e.g. the temporary
    folder of an atomic output — else beside it); returns the written paths."""
    targets = sidecar_paths(label_path)
    if write_to is not None:
        targets = {kind: Path(write_to) / path.name for kind, path in targets.items()}
    ordered = sorted((int(k), v) for k, v in names.items())
    replace_text(targets["json"], json.dumps({str(k): v for k, v in ordered}, indent=2) + "\n")
    slicer = [f"# Color table of {Path(label_path).name} (difftumor)", f"# {len(ordered)} values"]
    itksnap = ["################################################", "# ITK-SnAP Label Description File (difftumor)"]
    for index, name in ordered:
        red, green, blue = colour_of(name, index)
        alpha = 0 if index == 0 else 255
        slicer.append(f"{index} {name.replace(' ', '_')} {red} {green} {blue} {alpha}")
        visible = 0 if index == 0 else 1
        itksnap.append(
            f'{index:5d} {red:5d} {green:5d} {blue:5d} {alpha / 255:9.2f} {visible:2d} {visible:2d}    "{name}"'
        )
    replace_text(targets["slicer"], "\n".join(slicer) + "\n")
    replace_text(targets["itksnap"], "\n".join(itksnap) + "\n")
    return list(targets.values())
