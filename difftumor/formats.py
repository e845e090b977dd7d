"""What a file is from its first bytes, for the lowest layers (``atomic`` must know a DICOM series folder without
importing ``data``)."""

from __future__ import annotations

from pathlib import Path


def looks_like_dicom(path: Path) -> bool:
    """Whether a file carries the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False
