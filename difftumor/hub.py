"""Hugging Face Hub helpers: download-then-load for repo ids, and pushing pipelines with a model card."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DiffTumorInputError


def resolve_pipeline_folder(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> str:
    """Local folder of a pipeline: the path itself if it is a folder, else a ``snapshot_download`` of the repo id.

    diffusers resolves a repo id file by file and refuses component classes from third-party packages (such as
    ours) when doing so online; a downloaded snapshot loads like any local folder.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return str(path)
    if path.exists():
        raise DiffTumorInputError(f"pipeline path {path} is a file", "pass the pipeline folder (with model_index.json)")
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise DiffTumorInputError(
            f"pipeline {name} is neither a folder nor a Hub repo id (owner/name)",
            "check the path, or pass a repo id such as 'owner/difftumor-liver-early'",
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return snapshot_download(
            name, revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only
        )
    except RepositoryNotFoundError:
        raise DiffTumorInputError(
            f"Hub repository {name} was not found", "check the repo id, or log in (HF_TOKEN) for a private repository"
        ) from None
    except LocalEntryNotFoundError:
        raise DiffTumorInputError(
            f"pipeline {name} is not in the local Hub cache and the Hub cannot be reached",
            "connect to the internet, unset HF_HUB_OFFLINE, or pass a local folder",
        ) from None
    except HfHubHTTPError as error:
        raise DiffTumorInputError(f"downloading {name} from the Hub failed ({error})", "try again later") from None
