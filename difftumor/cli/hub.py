"""``difftumor push``: share a pipeline folder on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, console, examples


@app.command(
    epilog=examples(
        "difftumor push liver-early/ my-lab/difftumor-liver-early",
        "difftumor push runs/seg/model my-lab/liver-seg --private",
    )
)
def push(
    folder: Annotated[
        Path, typer.Argument(help="Pipeline folder (model_index.json, ...) or segmentation model folder.")
    ],
    repo_id: Annotated[str, typer.Argument(help="Hub repository, owner/name (created if missing).")],
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    token: Annotated[str | None, typer.Option(help="Hub token (default: HF_TOKEN or the cached login).")] = None,
    create_pr: Annotated[bool, typer.Option(help="Open a pull request instead of committing to the branch.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to commit to (created if missing).")] = None,
) -> None:
    """Upload a pipeline or segmentation model folder to the Hub with a generated model card."""
    from ..hub import push_pipeline_folder

    url = push_pipeline_folder(folder, repo_id, token=token, private=private, create_pr=create_pr, revision=revision)
    console.print(
        f"pushed {folder} to {repo_id} ({url}); load it with TumorInpaintPipeline.from_pretrained('{repo_id}')"
    )
