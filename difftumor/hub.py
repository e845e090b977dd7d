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


def model_card(folder: str | os.PathLike, repo_id: str) -> str:
    """A model card for a pipeline folder: what it is, what it was trained on, T, intended use and licence.

    Reads ``model_index.json`` and the scheduler config, plus ``training.json`` (written by the trainers) or
    ``CONVERSION.md`` (written by ``difftumor convert``) when present.
    """
    import json

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    vq = json.loads((folder / "vqmodel" / "config.json").read_text())
    unet = json.loads((folder / "unet" / "config.json").read_text())
    training = json.loads((folder / "training.json").read_text()) if (folder / "training.json").exists() else {}
    conversion = (folder / "CONVERSION.md").read_text() if (folder / "CONVERSION.md").exists() else ""
    license_id = training.get("license") or ("other" if conversion else "apache-2.0")
    organ = index.get("organ") or training.get("organ") or "unspecified organ"
    stage = index.get("tumor_stage") or "unspecified"
    trained_on = training.get("data_description") or (
        "converted from the authors' released DiffTumor checkpoint (see CONVERSION.md)"
        if conversion
        else "not recorded"
    )
    lines = [
        "---",
        f"license: {license_id}",
        "library_name: difftumor",
        "tags:",
        "- medical-imaging",
        "- computed-tomography",
        "- tumor-synthesis",
        "- diffusers",
        "- difftumor",
        "---",
        "",
        f"# {repo_id}",
        "",
        f"A DiffTumor tumour-inpainting pipeline (`TumorInpaintPipeline`) for **{stage}** {organ} tumours in CT.",
        "",
        "| | |",
        "|---|---|",
        f"| organ | {organ} |",
        f"| tumour stage | {stage} |",
        f"| diffusion steps (T) | {scheduler.get('num_train_timesteps')} |",
        f"| default sampler | {scheduler.get('_class_name')}, {index.get('default_num_inference_steps')} steps |",
        f"| autoencoder | VQModel3D, {vq.get('hidden_channels')} hidden, downsample {vq.get('downsample')}, "
        f"{vq.get('num_codes')} codes × {vq.get('latent_channels')} |",
        f"| denoiser | UNet3DInpaintModel, base {unet.get('base_channels')}, multipliers "
        f"{unet.get('channel_multipliers')} |",
        f"| HU window | {index.get('window')} |",
        f"| trained on | {trained_on} |",
    ]
    for key in ("steps", "command", "quality"):
        if key in training:
            lines.append(f"| {key} | {training[key]} |")
    lines += [
        "",
        "## Intended use",
        "",
        "Research: generating synthetic tumours to train and evaluate tumour segmentation models. Not a medical "
        "device; synthetic images must not be used for diagnosis.",
        "",
        "## How to use",
        "",
        "```python",
        "from difftumor import TumorInpaintPipeline",
        f'pipe = TumorInpaintPipeline.from_pretrained("{repo_id}")',
        "```",
        "",
        "or `difftumor synthesize CT --organ-mask MASK --organ liver --pipeline " + repo_id + " --out DIR`.",
        "",
    ]
    if conversion:
        lines += ["## Provenance", "", conversion.replace("# Converted DiffTumor checkpoint", "").strip(), ""]
    return "\n".join(lines)


def _is_segmentation_model(folder: Path) -> bool:
    import json

    config = folder / "config.json"
    return config.exists() and json.loads(config.read_text()).get("_class_name") == "SegmentationModel"


def segmentation_model_card(folder: str | os.PathLike, repo_id: str) -> str:
    """A model card for a :class:`SegmentationModel` folder (backbone, data handling, training provenance)."""
    import json

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    training = json.loads((folder / "training.json").read_text()) if (folder / "training.json").exists() else {}
    synthesizer = training.get("synthesizer")
    synthesis = f"{synthesizer} synthetic tumours" if synthesizer not in (None, "none") else "real tumours only"
    lines = [
        "---",
        f"license: {training.get('license', 'apache-2.0')}",
        "library_name: difftumor",
        "tags:",
        "- medical-imaging",
        "- computed-tomography",
        "- segmentation",
        "- difftumor",
        "---",
        "",
        f"# {repo_id}",
        "",
        f"{config.get('organ', 'organ').capitalize()} and tumour segmentation ({config.get('backbone')} backbone), "
        f"trained with difftumor ({synthesis}).",
        "",
        "| | |",
        "|---|---|",
        f"| labels | {', '.join(config.get('labels', []))} |",
        f"| working space | RAS, {config.get('spacing')} mm, HU window {config.get('window')} -> [0, 1] |",
        f"| patch size | {config.get('roi_size')} |",
        f"| training steps | {training.get('steps', 'not recorded')} |",
        "",
        "## Intended use",
        "",
        "Research on tumour segmentation and synthetic training data. Not a medical device.",
        "",
        "## How to use",
        "",
        f"`difftumor segment ct.nii.gz --model {repo_id} --out prediction.nii.gz`",
        "",
    ]
    return "\n".join(lines)


def push_pipeline_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload TumorInpaintPipeline",
) -> str:
    """Upload a pipeline or segmentation-model folder to the Hub with a generated model card (``README.md`` unless
    the folder has one).

    Returns:
        The URL of the commit.
    """
    import tempfile

    from huggingface_hub import HfApi

    folder = Path(folder)
    if (folder / "model_index.json").exists():
        make_card = model_card
    elif _is_segmentation_model(folder):
        make_card = segmentation_model_card
    else:
        raise DiffTumorInputError(
            f"{folder} is neither a pipeline folder (model_index.json) nor a segmentation model folder",
            "pass a folder written by save_pretrained, `difftumor convert` or the trainers",
        )
    if repo_id.count("/") != 1:
        raise DiffTumorInputError(f"repo id {repo_id!r} is not 'owner/name'", "e.g. my-lab/difftumor-liver-early")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as card_dir:
        readme = folder / "README.md"
        if not readme.exists():
            readme = Path(card_dir) / "README.md"
            readme.write_text(make_card(folder, repo_id))
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_file(
            path_or_fileobj=str(readme), path_in_repo="README.md", repo_id=repo_id, commit_message="Add model card"
        )
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            commit_message=commit_message,
            ignore_patterns=["*.partial*", ".*"],
        )
    return str(getattr(commit, "commit_url", commit))
