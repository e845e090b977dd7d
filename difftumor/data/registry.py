"""The registry of dataset layouts: one place that says which folder structures ``difftumor data prepare`` reads,
how each is described in the CLI's help, and which truth label ids ``difftumor evaluate --truth-labels`` knows.

A layout is one :class:`Layout` (name, description, scanner, optionally the dataset's own label ids). Built-in
scanners live in :mod:`difftumor.data.layouts`; this module stays light (no NumPy, no nibabel) because the CLI
builds its help from it at start-up. Third-party packages add layouts through the entry-point group
``difftumor.layouts`` (name -> a :class:`Layout`), or in-process with :func:`register_layout`; see
``docs/extending.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from ..errors import DiffTumorInputError

ENTRY_POINT_GROUP = "difftumor.layouts"


@dataclass(frozen=True)
class TruthLabels:
    """A dataset's own label ids: which values are organ and which tumour (``evaluate --truth-labels NAME``)."""

    organ: tuple[int, ...]
    tumor: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """A dataset folder structure.

    Attributes:
        name: what users type (``difftumor data prepare NAME ROOT``).
        description: the folder structure in a few words, shown in the CLI's help.
        scanner: ``(root: Path, organ: str | None, options: dict) -> (organ, iterable of SourceCase)``, or its
            ``"module:function"`` path (imported when the layout is used). ``options`` holds ``organ_values`` and
            ``tumor_values`` (the ``--organ-value`` / ``--tumor-value`` options).
        truth_labels: the dataset's label ids, when its label files can be evaluated against directly.
    """

    name: str
    description: str
    scanner: str | Callable[..., Any]
    truth_labels: TruthLabels | None = None

    def scan(self, root: Any, organ: str | None, options: dict[str, Any]) -> tuple[str, Any]:
        scanner = self.scanner
        if isinstance(scanner, str):
            module, _, function = scanner.partition(":")
            scanner = getattr(import_module(module), function)
        return scanner(root, organ, options)


_SCANNERS = "difftumor.data.layouts"
_REGISTRY: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Add ``layout`` (or replace the one of the same name); returns it, so it can decorate a module constant."""
    _REGISTRY[layout.name] = layout
    return layout


for _layout in (
    Layout("msd", "imagesTr/ + labelsTr/ (+ dataset.json)", f"{_SCANNERS}:scan_msd", TruthLabels((1,), (2,))),
    Layout("lits", "volume-N + segmentation-N", f"{_SCANNERS}:scan_lits", TruthLabels((1,), (2,))),
    Layout(
        "kits",
        "case_*/imaging + segmentation or aggregated_MAJ_seg (cysts count as kidney)",
        f"{_SCANNERS}:scan_kits",
        TruthLabels((1, 3), (2,)),
    ),
    Layout("abdomenatlas", "<case>/ct.nii.gz + segmentations/<structure>.nii.gz", f"{_SCANNERS}:scan_abdomenatlas"),
    Layout(
        "totalsegmentator",
        "<case>/ct.nii.gz + segmentations/ per structure, or a v2 multi-label seg.nii.gz",
        f"{_SCANNERS}:scan_totalsegmentator",
    ),
    Layout("folders", "images/ + labels/ paired by name (--organ-value, --tumor-value)", f"{_SCANNERS}:scan_folders"),
):
    register_layout(_layout)


def _installed() -> dict[str, Any]:
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}


def available_layouts() -> list[str]:
    """Every layout name: built-in, registered in-process, and installed through entry points."""
    return list(_REGISTRY) + sorted(set(_installed()) - set(_REGISTRY))


def get_layout(name: str) -> Layout:
    """The layout called ``name``; an unknown name is a one-line error listing the known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    installed = _installed()
    if name in installed:
        layout = installed[name].load()
        if not isinstance(layout, Layout):
            raise DiffTumorInputError(
                f"entry point {name!r} of {ENTRY_POINT_GROUP} is not a difftumor Layout", "report it to its package"
            )
        return register_layout(layout)
    raise DiffTumorInputError(f"unknown layout {name!r}", f"choose one of {', '.join(available_layouts())}")


def layouts_help() -> str:
    """``name: description; ...`` for the CLI's help."""
    described = []
    for name in available_layouts():
        layout = _REGISTRY.get(name)
        described.append(f"{name}: {layout.description}" if layout else name)
    return "; ".join(described)


def truth_label_schemes(load_installed: bool = True) -> dict[str, TruthLabels]:
    """``evaluate --truth-labels`` choices: ``internal`` (what ``data prepare`` writes) and every layout that says
    its dataset's label ids (``load_installed=False``: without importing entry-point plugins, for help texts)."""
    schemes = {"internal": TruthLabels((1,), (2, 3))}
    # Without loading, an installed layout's label ids are unknown: no need to scan the entry points at all.
    names = available_layouts() if load_installed else list(_REGISTRY)
    for name in names:
        layout = _REGISTRY.get(name) or get_layout(name)
        if layout.truth_labels is not None:
            schemes[name] = layout.truth_labels
    return schemes
