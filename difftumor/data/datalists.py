"""Read a training/evaluation datalist: ``difftumor data prepare`` output or a plain list of cases."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import DiffTumorInputError


def datalist_entries(path: Path, keys: tuple[str, ...], missing_hint: str, empty_hint: str) -> list[Any]:
    """The non-empty list of entries of a JSON datalist: the file itself when it is a list, else the value of the
    first of ``keys`` it has. Every reader of datalists goes through here, so a missing file, broken JSON or an
    empty list reads the same everywhere."""
    if not path.is_file():
        raise DiffTumorInputError(f"datalist {path} does not exist", missing_hint)
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DiffTumorInputError(f"datalist {path} is not valid JSON ({error})", "fix the file") from None
    if isinstance(content, dict):
        content = next((content[key] for key in keys if key in content), None)
    if not isinstance(content, list) or not content:
        raise DiffTumorInputError(f"datalist {path} has no cases", empty_hint)
    return content


def read_cases(datalist: str | os.PathLike, max_cases: int = 0, require_label: bool = False) -> list[dict[str, Any]]:
    """Cases of a datalist (``difftumor data prepare`` output, or a plain list), paths made absolute."""
    path = Path(datalist)
    entries = datalist_entries(
        path,
        ("data", "training"),
        "create one with `difftumor data prepare`",
        "run `difftumor data prepare` on your dataset",
    )
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DiffTumorInputError(f"a case of {path} is not an object with an 'image' path", 'e.g. {"image": ...}')
        if require_label and "label" not in entry:
            raise DiffTumorInputError(f"a case of {path} lacks 'image'{' or label' if require_label else ''}")
        case = dict(entry)
        for key in ("image", "label"):
            if key in case and case[key] is not None:
                case[key] = str((path.parent / case[key]).resolve())
                if not Path(case[key]).exists():
                    raise DiffTumorInputError(f"{key} {case[key]} of datalist {path} does not exist")
        cases.append(case)
    return cases[:max_cases] if max_cases else cases
