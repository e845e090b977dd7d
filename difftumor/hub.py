"""Hugging Face Hub helpers: download-then-load for repo ids, and pushing pipelines with a model card."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import DiffTumorInputError


def is_repo_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub repo id (``owner/name``) rather than a path."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) is not None and ".." not in name


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
    if not is_repo_id(name):
        raise DiffTumorInputError(
            f"folder {name} does not exist (and it is not a Hub repo id owner/name)",
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


#: Terms of the authors' released weights, named in the card of every converted pipeline.
ORIGINAL_LICENSE = {
    "license": "other",
    "license_name": "difftumor-original-weights",
    "license_link": "https://github.com/MrGiovanni/DiffTumor",
}
_COMMON_TAGS = ["medical-imaging", "computed-tomography", "difftumor"]


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def _card(data, body: str) -> str:
    """Render card data and a Markdown body through ``huggingface_hub.ModelCard`` (which validates the YAML)."""
    from huggingface_hub import ModelCard

    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _eval_results(folder: Path, model_name: str, task: str):
    """``EvalResult``s from ``metrics.json`` (``difftumor evaluate``) and ``realism.json`` beside the model."""
    from huggingface_hub import EvalResult

    results = []
    evaluation = _read_json(folder / "metrics.json")
    metrics = evaluation.get("summary", {})
    dataset = evaluation.get("dataset") or "held-out CT"
    for key, name in (
        ("tumor_dsc_mean", "tumour DSC (mean over positive cases)"),
        ("tumor_dsc_global", "tumour DSC (global)"),
        ("tumor_nsd_mean", "tumour NSD @ 2 mm"),
        ("early_lesion_sensitivity", "lesion sensitivity < 20 mm"),
    ):
        if metrics.get(key) is not None:
            results.append(
                EvalResult(
                    task_type=task,
                    dataset_type="ct",
                    dataset_name=dataset,
                    metric_type=key,
                    metric_name=name,
                    metric_value=round(float(metrics[key]), 4),
                )
            )
    realism = _read_json(folder / "realism.json").get("summary", {})
    for key, value in realism.items():
        if isinstance(value, (int, float)):
            results.append(
                EvalResult(
                    task_type=task,
                    dataset_type="ct",
                    dataset_name="real lesions",
                    metric_type=f"realism/{key}",
                    metric_value=float(value),
                )
            )
    return results or None


# The card's sections in the order they appear on the Hub; each is a few lines of formatting.
def model_card(folder: str | os.PathLike, repo_id: str) -> str:
    """A model card for a pipeline folder: what it is, what it was trained on, T, intended use and licence.

    Reads ``model_index.json`` and the scheduler config, plus ``training.json`` (written by the trainers) or
    ``CONVERSION.md`` (written by ``difftumor convert``), and ``metrics.json`` / ``realism.json`` when present.
    """
    from huggingface_hub import ModelCardData

    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    vq = _read_json(folder / "vqmodel" / "config.json")
    unet = _read_json(folder / "unet" / "config.json")
    training = _read_json(folder / "training.json")
    conversion = (folder / "CONVERSION.md").read_text() if (folder / "CONVERSION.md").exists() else ""
    licence = ORIGINAL_LICENSE if conversion else {"license": training.get("license") or "apache-2.0"}
    organ = index.get("organ") or training.get("organ") or "unspecified organ"
    stage = index.get("tumor_stage") or "unspecified"
    trained_on = training.get("data_description") or (
        "converted from the authors' released DiffTumor checkpoint (see Provenance)" if conversion else "not recorded"
    )
    data = ModelCardData(
        library_name="difftumor",
        pipeline_tag="image-to-image",
        tags=[*_COMMON_TAGS, "tumor-synthesis", "diffusers", f"{organ}-tumor"],
        datasets=training.get("datasets") or None,
        base_model=training.get("base_model") or None,
        model_name=repo_id,
        eval_results=_eval_results(folder, repo_id, "image-to-image"),
        **licence,
    )
    lines = [
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
        "## Licence",
        "",
    ]
    if conversion:
        lines += [
            "These weights are the DiffTumor authors' (Chen et al., CVPR 2024), converted to this format; the "
            f"authors' terms apply: {ORIGINAL_LICENSE['license_link']} (their code is CC BY-NC-ND 4.0).",
            "",
            "## Provenance",
            "",
            conversion.replace("# Converted DiffTumor checkpoint", "").strip(),
            "",
        ]
    else:
        lines += [f"{licence['license']}.", ""]
    return _card(data, "\n".join(lines))


def _hub_id(name: object) -> str | None:
    """``name`` when it is a Hub repo id (not a local folder), for ``base_model``."""
    return str(name) if name and is_repo_id(str(name)) and not Path(str(name)).exists() else None


def _is_segmentation_model(folder: Path) -> bool:
    return _read_json(folder / "config.json").get("_class_name") == "SegmentationModel"


def segmentation_model_card(folder: str | os.PathLike, repo_id: str) -> str:
    """A model card for a :class:`SegmentationModel` folder (backbone, data handling, training provenance)."""
    from huggingface_hub import ModelCardData

    folder = Path(folder)
    config = _read_json(folder / "config.json")
    training = _read_json(folder / "training.json")
    synthesizer = training.get("synthesizer")
    synthesis = f"{synthesizer} synthetic tumours" if synthesizer not in (None, "none") else "real tumours only"
    data = ModelCardData(
        library_name="difftumor",
        pipeline_tag="image-segmentation",
        license=training.get("license", "apache-2.0"),
        tags=[*_COMMON_TAGS, "segmentation", f"{config.get('organ', 'organ')}-tumor"],
        datasets=training.get("datasets") or None,
        base_model=_hub_id(training.get("pipeline")),
        model_name=repo_id,
        eval_results=_eval_results(folder, repo_id, "image-segmentation"),
    )
    lines = [
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
    return _card(data, "\n".join(lines))


def push_pipeline_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload TumorInpaintPipeline",
    create_pr: bool = False,
    revision: str | None = None,
) -> str:
    """Upload a pipeline or segmentation-model folder to the Hub with a generated model card (``README.md`` unless
    the folder has one), in **one** commit — on ``revision`` (a branch, created if missing) or as a pull request.

    Returns:
        The URL of the commit (or of the pull request).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

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
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)  # markers, temporaries
    ]
    if not (folder / "README.md").exists():
        card = make_card(folder, repo_id).encode()
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.create_commit(
        repo_id, operations, commit_message=commit_message, revision=revision, create_pr=create_pr
    )
    return str(commit.pr_url if create_pr and commit.pr_url else commit.commit_url)
