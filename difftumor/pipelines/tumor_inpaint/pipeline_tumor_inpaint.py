"""TumorInpaintPipeline: paint a tumour into 96³ CT crops with DiffTumor's latent diffusion model."""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ...errors import DiffTumorInputError
from ...limits import check_train_timesteps
from ...models.unet_3d_inpaint import UNet3DInpaintModel
from ...models.vq_model_3d import VQModel3D

# diffusers only instantiates component classes from modules that are already imported (it will not import a module
# named in model_index.json), so every component module a saved pipeline may name is imported with this one.
from ...schedulers import precise as _precise_schedulers
from ...schedulers.registry import SAMPLER_MARK, adopt_scheduler, refusal, safe_schedulers
from ...windowing import to_window
from .blending import BLEND_MODES, blend_into_hu, blend_weights, tumor_boxes
from .fast_mode import STRONG_WEIGHT, fast_precision, neighbourhood_windows
from .postprocessing import remove_stride_pattern  # noqa: F401 — public here since the first release
from .postprocessing import suppress_stride_pattern as remove_stride_patterns

_DIFFUSERS_SHIM = '''"""Lets plain diffusers load this folder:

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

It only imports the installed difftumor package (pip install difftumor); difftumor's own
TumorInpaintPipeline.from_pretrained never runs this file.
"""

from difftumor.pipelines.tumor_inpaint.pipeline_tumor_inpaint import TumorInpaintPipeline  # noqa: F401
'''


def _scheduler_class(entry: Any, folder: Path) -> type:
    """The scheduler class a ``model_index.json`` names: one of difftumor's precise schedulers or a diffusers one."""
    import diffusers

    from ...schedulers import precise

    name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
    found = getattr(precise, str(name), None) or getattr(diffusers, str(name), None)
    if not (isinstance(found, type) and issubclass(found, diffusers.SchedulerMixin)):
        raise DiffTumorInputError(
            f"{folder}/model_index.json names scheduler {entry!r}, which is not a diffusers or difftumor scheduler",
            "re-save the pipeline with a scheduler from difftumor.schedulers.make_scheduler",
        )
    return found


def _as_batch(value: Any, name: str) -> torch.Tensor:
    """A crop batch ``(B, 1, X, Y, Z)`` as a tensor, from a tensor or NumPy array (a single ``(X, Y, Z)`` crop
    gets its batch and channel axes)."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise DiffTumorInputError(
            f"{name} is a {type(value).__name__}", "pass a torch.Tensor or numpy.ndarray of shape (B, 1, X, Y, Z)"
        )
    return value[None, None] if value.dim() == 3 else value


# Blur σ (voxels) is drawn from U(0, 4) when not given, as the original (after the sampler, from the same generator).
_MAX_DRAWN_SIGMA = 4.0

# MONAI volumes are (B, C, X, Y, Z); the models want the axial axis first: (B, C, Z, X, Y).
_TO_MODEL_AXES = (0, 1, 4, 2, 3)
_FROM_MODEL_AXES = (0, 1, 3, 4, 2)


@dataclass
class TumorInpaintPipelineOutput(BaseOutput):
    """Output of :class:`TumorInpaintPipeline`.

    Args:
        images (`torch.Tensor` of shape `(B, 1, X, Y, Z)`, float32, HU): the crops with the tumours blended in;
            voxels outside the blurred tumour neighbourhood are bit-identical to the input.
        decoded (`torch.Tensor` of shape `(B, 1, X, Y, Z)`, float32, [-1, 1] window scale): the VQ decoder's whole crop.
        blend_weights (`torch.Tensor` of shape `(B, 1, X, Y, Z)`, float32, [0, 1]): the weights of the
            decoded crop in the blend (0 where the input was kept; see ``blend``).
        latents (`torch.Tensor` of shape `(B, C, D/f, X/f, Y/f)`): final normalised latents of the sampler.

    Every tensor is on the device the input ``image`` came on (the CPU for NumPy input).
    """

    images: torch.Tensor
    decoded: torch.Tensor
    blend_weights: torch.Tensor
    latents: torch.Tensor


class TumorInpaintPipeline(DiffusionPipeline):
    r"""Inpaint tumours into CT crops: masked encode -> conditional latent diffusion -> quantised decode -> blend.

    Components:
        vqmodel ([`VQModel3D`]): the autoencoder (96³ window-scaled crops <-> latents).
        unet ([`UNet3DInpaintModel`]): the conditional denoiser.
        scheduler ([`SchedulerMixin`]): any sampler from :func:`difftumor.schedulers.make_scheduler`. A stock diffusers
            scheduler of the same families (``DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)``) is
            rebuilt with DiffTumor's settings when called (:func:`~difftumor.schedulers.registry.adopt_scheduler`);
            other scheduler classes are refused.

    Config (saved in ``model_index.json``):
        window (`tuple[float, float]`, defaults to `(-175.0, 250.0)`): HU window mapped to [-1, 1].
        mask_downsampling (`str`, defaults to `"nearest"`): how the tumour mask is brought to latent size for the
            condition: ``"nearest"`` (what the released models were trained with; a tumour smaller than the latent
            stride can vanish) or ``"max"`` (any tumour voxel marks its latent cell).
        default_num_inference_steps (`int`, defaults to 4): steps used when the caller gives none.
        organ (`str`, optional): organ the tumours were trained on, for model cards and manifests.
        tumor_stage (`str`, optional): ``"early"`` or ``"mid-late"`` (which size class this model synthesises).
        organ_intensity_hu (`list[float]`, optional): mean and standard deviation (HU) of the organ core in the
            training crops, recorded by the trainer; the diffusion synthesizer paints relative to it. ``None`` for
            converted checkpoints (the synthesizer then assumes contrast-enhanced parenchyma).
        training_crop_size (`list[int]`, optional): the crops the UNet was trained on (voxels, 1 mm), recorded by
            the trainer. The model paints as trained only with at least that much context: on smaller crops the
            bundled model's tumours come out a fifth as dark, so the diffusion synthesizer pads smaller crops to it.
            ``None`` for converted checkpoints (the original's 96³ is assumed).
    """

    model_cpu_offload_seq = "vqmodel->unet->vqmodel"
    _callback_tensor_inputs = ["latents", "condition", "noise_pred"]

    @register_to_config
    def __init__(
        self,
        vqmodel: VQModel3D,
        unet: UNet3DInpaintModel,
        scheduler: Any,
        window: tuple[float, float] | list[float] = (-175.0, 250.0),
        mask_downsampling: str = "nearest",
        default_num_inference_steps: int = 4,
        organ: str | None = None,
        tumor_stage: str | None = None,
        organ_intensity_hu: list[float] | None = None,
        training_crop_size: list[int] | None = None,
    ):
        super().__init__()
        self.register_modules(vqmodel=vqmodel, unet=unet, scheduler=scheduler)

    # -- loading ---------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> TumorInpaintPipeline:
        """Load from a local folder or a Hub repo id (downloaded first with ``huggingface_hub.snapshot_download``),
        with ``DiffusionPipeline.from_pretrained``'s keyword arguments where they apply:

        - ``torch_dtype``; ``revision``, ``token``, ``cache_dir``, ``local_files_only`` (the download);
        - a component to use instead of the saved one: ``vqmodel=``, ``unet=`` or ``scheduler=`` (a stock diffusers
          scheduler is adopted when called, as on assignment);
        - ``use_safetensors`` (only ``True``: nothing pickled is loaded) and ``variant`` (only ``None``).

        Any other keyword is refused in one line. The components are read with their own ``from_pretrained``
        (safetensors) and the scheduler class must be one difftumor or diffusers defines: nothing in the folder is
        executed. (The ``pipeline.py`` a saved folder carries is only for plain diffusers users:
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``.)
        """
        import json

        from ...hub import resolve_pipeline_folder

        download = {k: kwargs.pop(k) for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        torch_dtype = kwargs.pop("torch_dtype", None)
        overrides = {k: kwargs.pop(k) for k in ("vqmodel", "unet", "scheduler") if k in kwargs}
        if kwargs.pop("use_safetensors", True) is not True:
            raise DiffTumorInputError("use_safetensors=False is not supported", "difftumor loads safetensors only")
        if kwargs.pop("variant", None) is not None:
            raise DiffTumorInputError("weight variants are not supported", "drop variant=")
        if kwargs:
            raise DiffTumorInputError(
                f"from_pretrained does not take {', '.join(sorted(kwargs))}",
                "use torch_dtype, revision, token, cache_dir, local_files_only, vqmodel, unet or scheduler",
            )
        folder = Path(resolve_pipeline_folder(pretrained_model_name_or_path, **download))
        try:
            index = json.loads((folder / "model_index.json").read_text())
        except (OSError, ValueError) as error:
            raise DiffTumorInputError(
                f"{pretrained_model_name_or_path} has no readable model_index.json ({error})",
                "pass a folder written by save_pretrained or `difftumor convert`",
            ) from None
        dtype = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        scheduler_class = _scheduler_class(index.get("scheduler"), folder)
        scheduler_config = scheduler_class.load_config(folder / "scheduler")
        check_train_timesteps(scheduler_config.get("num_train_timesteps"), f"the scheduler of {folder}")
        scheduler = scheduler_class.from_config(scheduler_config)
        if scheduler_class.__module__ == _precise_schedulers.__name__:
            setattr(scheduler, SAMPLER_MARK, "loaded")  # saved with DiffTumor's settings: sampled as it is
        for part in ("vqmodel", "unet"):
            if part not in overrides and not any((folder / part).glob("*.safetensors")):
                pickled = sorted(p.name for p in (folder / part).glob("*") if p.suffix in (".bin", ".pt", ".pth"))
                raise DiffTumorInputError(
                    f"{folder / part} holds no safetensors weights"
                    + (f" (only pickled {', '.join(pickled)})" if pickled else ""),
                    "difftumor loads safetensors only: re-save the pipeline with save_pretrained, or convert the "
                    "authors' checkpoints with `difftumor convert`",
                )
        components = {
            "vqmodel": overrides.get("vqmodel")
            or VQModel3D.from_pretrained(folder / "vqmodel", use_safetensors=True, **dtype),
            "unet": overrides.get("unet")
            or UNet3DInpaintModel.from_pretrained(folder / "unet", use_safetensors=True, **dtype),
            "scheduler": overrides.get("scheduler") or scheduler,
        }
        settings = {key: value for key, value in index.items() if not key.startswith("_") and key not in components}
        return cls(**components, **settings)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, plus what lets plain diffusers load the folder: a ``pipeline.py`` that
        imports this class, named in ``model_index.json`` (diffusers' custom-pipeline mechanism)."""
        import json

        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        (folder / "pipeline.py").write_text(_DIFFUSERS_SHIM)
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = ["pipeline", type(self).__name__]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool = False,
        token: str | None = None,
        create_pr: bool = False,
        revision: str | None = None,
        safe_serialization: bool = True,
        variant: str | None = None,
    ) -> str:
        """Save the pipeline and upload it to ``repo_id`` with a generated model card in one commit (on ``revision``
        or as a pull request with ``create_pr``); returns the commit or pull-request URL."""
        import tempfile

        from ...hub import push_pipeline_folder

        if not safe_serialization or variant is not None:
            raise DiffTumorInputError(
                "difftumor pipelines are shared as safetensors without variants",
                "drop safe_serialization=False / variant",
            )
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return push_pipeline_folder(
                folder,
                repo_id,
                token=token,
                private=private,
                commit_message=commit_message or "Upload pipeline",
                create_pr=create_pr,
                revision=revision,
            )

    # -- pieces ----------------------------------------------------------------------------------------------

    @property
    def latent_factor(self) -> tuple[int, int, int]:
        """Reduction of the VQ model along (D, H, W) of model space = (Z, X, Y) of MONAI space."""
        return tuple(int(f) for f in self.vqmodel.config.downsample)  # type: ignore[return-value]

    def check_inputs(
        self,
        image: torch.Tensor,
        tumor_mask: torch.Tensor,
        num_inference_steps: int,
        blur_sigma: float | list[float] | None = None,
        fast: bool = False,
        blend: str = "blur",
        output_type: str = "pt",
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> None:
        """Every argument of :meth:`__call__` that can be wrong, checked before any work (one-line errors)."""
        if output_type not in ("pt", "np"):
            raise DiffTumorInputError(f"output_type {output_type!r} is not supported", "use 'pt' or 'np'")
        if blend not in BLEND_MODES:
            raise DiffTumorInputError(f"blend {blend!r} is not supported", f"use one of {', '.join(BLEND_MODES)}")
        unknown = sorted(set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs))
        if unknown:
            raise DiffTumorInputError(
                f"callback_on_step_end_tensor_inputs {unknown} are not available",
                f"choose from {self._callback_tensor_inputs}",
            )
        if fast and self.vqmodel.device.type == "cpu" and self.vqmodel.dtype == torch.float16:
            raise DiffTumorInputError(
                "fast mode does not run float16 weights on the CPU",
                "on CPU keep the pipeline in float32 (fast mode decodes in bfloat16 where the CPU has it); "
                "float16 is for CUDA",
            )
        if blur_sigma is not None:
            given = np.atleast_1d(np.asarray(blur_sigma, dtype=np.float64))
            if given.ndim != 1 or given.size not in (1, image.shape[0]):
                raise DiffTumorInputError(
                    f"blur_sigma has {given.size} values for {image.shape[0]} crops", "pass one σ, or one per crop"
                )
            if given.min() < 0:
                raise DiffTumorInputError(f"blur_sigma must be >= 0, got {blur_sigma}", "pass σ in voxels, e.g. 2.0")
        if image.ndim != 5 or image.shape[1] != 1:
            raise DiffTumorInputError(f"image must have shape (B, 1, X, Y, Z), got {tuple(image.shape)}")
        if tumor_mask.shape != image.shape:
            raise DiffTumorInputError(
                f"tumor_mask shape {tuple(tumor_mask.shape)} differs from image shape {tuple(image.shape)}"
            )
        depth_factor, height_factor, width_factor = self.latent_factor
        x, y, z = image.shape[2:]
        if x % height_factor or y % width_factor or z % depth_factor:
            raise DiffTumorInputError(
                f"crop size {x}×{y}×{z} is not divisible by the autoencoder's downsampling {self.latent_factor}",
                "use 96³ crops",
            )
        if num_inference_steps < 1 or num_inference_steps > self.scheduler.config.num_train_timesteps:
            raise DiffTumorInputError(
                f"num_inference_steps must be in [1, {self.scheduler.config.num_train_timesteps}], "
                f"got {num_inference_steps}"
            )
        name = type(self.scheduler).__name__
        train_steps = int(self.scheduler.config.num_train_timesteps)
        reason = refusal(name, train_steps)
        if reason is not None:
            raise DiffTumorInputError(
                f"scheduler {name} is not safe for this model: {reason}",
                "swap samplers with difftumor.schedulers.make_scheduler(name, pipe.scheduler.config), name one of "
                + ", ".join(safe_schedulers(train_steps)),
            )

    def encode_condition(
        self, window_image: torch.Tensor, tumor_mask: torch.Tensor, fill: torch.Tensor | float = 0.0
    ) -> torch.Tensor:
        """Condition for the UNet from model-space crops ``(B, 1, D, H, W)``: the normalised latent of the crop with
        tumour voxels set to ``fill`` (window scale; 0, mid-window grey, as the original — a ``(B, 1, 1, 1, 1)``
        tensor gives one value per crop, which training can draw), and the tumour mask at latent size in {-1, +1}."""
        masked = window_image * (1 - tumor_mask) + tumor_mask * fill
        latents = self.vqmodel.normalize_latents(self.vqmodel.encode(masked).latents)
        signed_mask = tumor_mask * 2 - 1
        if self.config.mask_downsampling == "max":
            small_mask = F.adaptive_max_pool3d(signed_mask, latents.shape[2:])
        else:
            small_mask = F.interpolate(signed_mask, size=latents.shape[2:], mode="nearest")
        return torch.cat([latents, small_mask.to(latents.dtype)], dim=1)

    # -- call ------------------------------------------------------------------------------------------------

    # Long by design, as every diffusers pipeline's __call__: checks, encoding, the sampling loop with its callbacks
    # and decoding read top to bottom in the order they run.
    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor | np.ndarray,
        tumor_mask: torch.Tensor | np.ndarray,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        blur_sigma: float | list[float] | None = None,
        suppress_stride_pattern: bool = False,
        fast: bool = False,
        blend: str = "blur",
        output_type: str = "pt",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> TumorInpaintPipelineOutput | tuple:
        r"""Synthesise a tumour in each crop.

        Args:
            image (`torch.Tensor` or `np.ndarray` of shape `(B, 1, X, Y, Z)`, or `(X, Y, Z)` for one crop): CT crops
                in HU, in MONAI's RAS working space (1 mm voxels, 96³ for the released models).
            tumor_mask (same type and shape as `image`): where to put the tumour (bool or {0, 1}).
            num_inference_steps (`int`, *optional*): sampler steps; defaults to the pipeline's
                ``default_num_inference_steps`` (T = 4 for early-tumour models).
            generator (`torch.Generator`, *optional*): controls every random draw (noise, blur radius).
            latents (`torch.Tensor`, *optional*): initial noise ``(B, C, Z/f, X/f, Y/f)`` (model axis order).
            blur_sigma (`float` or list, *optional*): σ in voxels of the blending blur per crop; drawn from U(0, 4)
                (the original's range) when omitted.
            suppress_stride_pattern (`bool`, defaults to `False`): remove from the decoded crop, where it is blended,
                the pattern that repeats with the decoder's up-sampling stride (a regular dot grid that a briefly
                trained autoencoder leaves; see :func:`remove_stride_pattern`). Off reproduces the original.
            fast (`bool`, defaults to `False`): decode only the tumour's neighbourhood — a window of the crop that
                holds every voxel the blend reaches and a margin, at least 48 voxels a side (12.5 % of a 96³ decode)
                — in bfloat16 where the hardware has it (AVX512-BF16/AMX CPUs, CUDA), float32 otherwise. Encoding
                and denoising are unchanged (whole crop, float32). The tumour is close to, not equal to,
                the exact path's (see :mod:`difftumor.pipelines.tumor_inpaint.fast_mode`); ``decoded`` holds the
                input (window scale) outside the window.
            blend (`str`, defaults to `"blur"`): ``"blur"`` weights the decoded crop by the blurred tumour mask
                everywhere (the original), which shows a tumour only a few σ wide at a fraction of the contrast the
                model painted; ``"outside"`` keeps the tumour's voxels as the model painted them and fades the decoded
                crop into the CT only outside the mask (:func:`~.blending.blend_weights`).
            output_type (`str`): ``"pt"`` (torch tensors, default) or ``"np"`` (NumPy arrays) for every output.
            return_dict (`bool`): return a :class:`TumorInpaintPipelineOutput` instead of a tuple.
            callback_on_step_end (`Callable`, *optional*): diffusers' step callback,
                ``callback(pipe, step_index, timestep, callback_kwargs) -> dict``; it receives the tensors named in
                ``callback_on_step_end_tensor_inputs`` (``"latents"`` by default) and may return replacements.

        Returns:
            :class:`TumorInpaintPipelineOutput` (HU crops, decoded crops, blend weights, final latents), on the
            input's device; the models and the blend run on the pipeline's.
        """
        image, tumor_mask = _as_batch(image, "image"), _as_batch(tumor_mask, "tumor_mask")
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        num_inference_steps = num_inference_steps or self.config.default_num_inference_steps
        # A stock diffusers scheduler assigned the diffusers way is rebuilt with DiffTumor's settings (or refused).
        adopted = adopt_scheduler(self.scheduler)
        if adopted is not self.scheduler:
            self.scheduler = adopted
        self.check_inputs(image, tumor_mask, num_inference_steps, blur_sigma, fast, blend, output_type, tensor_inputs)
        batch = image.shape[0]
        if blur_sigma is not None:  # one σ per crop from here on
            blur_sigma = [float(v) for v in np.broadcast_to(np.atleast_1d(np.asarray(blur_sigma, float)), (batch,))]
        device, dtype = self._execution_device, self.unet.dtype
        low, high = self.config.window

        # On CUDA: full float32 (PyTorch's default TF32 moved voxels by 30 HU) and deterministic cuDNN algorithms.
        with reproducible_float32(torch.device(device)):
            # Window scale computed where the input is (the same values whatever the pipeline's device); the fast
            # mode pastes this crop-space copy back outside its window.
            window_crop = to_window(image.float(), low, high)
            window_image = window_crop.permute(*_TO_MODEL_AXES).to(device, dtype)
            tumour = (tumor_mask > 0).to(device)
            # Read back now, while the device is idle: the boxes bound the blend's blur.
            boxes = tumor_boxes(tumour[:, 0])
            model_mask = tumour.permute(*_TO_MODEL_AXES).to(dtype)
            condition = self.encode_condition(window_image, model_mask)

            latent_shape = (batch, self.unet.config.sample_channels, *condition.shape[2:])
            if latents is None:
                latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype)
            elif latents.shape != latent_shape:
                raise DiffTumorInputError(f"latents must have shape {latent_shape}, got {tuple(latents.shape)}")
            latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma

            self.scheduler.set_timesteps(num_inference_steps, device=device)
            timesteps = self.scheduler.timesteps
            if int(timesteps.max()) >= self.scheduler.config.num_train_timesteps:
                raise DiffTumorInputError(
                    f"{num_inference_steps} steps give timestep {int(timesteps.max())} outside the model's range",
                    "use fewer steps or make_scheduler(...) (trailing spacing)",
                )
            extra = step_kwargs(self.scheduler, generator)
            with self.progress_bar(total=len(timesteps)) as progress_bar:
                for index, timestep in enumerate(timesteps):
                    model_input = self.scheduler.scale_model_input(latents, timestep)
                    noise_pred = self.unet(model_input, timestep, condition).sample
                    latents = self.scheduler.step(noise_pred, timestep, latents, **extra).prev_sample
                    if callback_on_step_end is not None:
                        available = {"latents": latents, "condition": condition, "noise_pred": noise_pred}
                        returned = callback_on_step_end(self, index, timestep, {k: available[k] for k in tensor_inputs})
                        latents = (returned or {}).get("latents", latents)
                        condition = (returned or {}).get("condition", condition)
                    progress_bar.update()

            # σ drawn and the blend weights computed before decoding (which draws nothing, so both paths get the same
            # σ): the fast mode's window is sized by where the weights reach, read back as boxes (one small transfer;
            # the sampler's steps already wait on the host). Blending runs where the models ran, its float64 blur with
            # the same deterministic algorithms.
            sigmas = self._blur_sigmas(blur_sigma, batch, generator)
            weights = blend_weights(tumour, sigmas, boxes, blend)
            windows = self._fast_windows(weights) if fast else None
            to_decode = latents if windows is None else self._latent_window(latents, *windows)
            # Through decode (offload hooks fire on it); its nearest-code search stays float32 under autocast.
            with fast_precision(torch.device(device)) if fast else contextlib.nullcontext():
                decoded = self.vqmodel.decode(self.vqmodel.denormalize_latents(to_decode)).sample
        decoded = decoded.permute(*_FROM_MODEL_AXES).float()
        if windows is not None:
            decoded = _paste(window_crop.to(device), decoded, *windows)

        if suppress_stride_pattern:
            depth, height, width = self.latent_factor  # model (Z, X, Y) -> crop (X, Y, Z)
            decoded = remove_stride_patterns(decoded, weights, (height, width, depth))
        images = blend_into_hu(image.float().to(device), decoded, weights, low, high)
        output_device = image.device

        output = TumorInpaintPipelineOutput(
            images=images.to(output_device),
            decoded=decoded.to(output_device),
            blend_weights=weights.float().to(output_device),
            latents=latents.to(output_device),
        )
        if output_type == "np":
            output = TumorInpaintPipelineOutput(
                **{name: value.detach().float().cpu().numpy() for name, value in output.items()}
            )
        self.maybe_free_model_hooks()
        return output if return_dict else output.to_tuple()

    def _fast_windows(self, weights: torch.Tensor) -> tuple[tuple[int, int, int], np.ndarray]:
        """Window size (X, Y, Z) and per-crop starts of the fast mode for blend ``weights`` ``(B, 1, X, Y, Z)`` (see
        :func:`neighbourhood_windows`)."""
        depth, height, width = self.latent_factor
        blended, strong = np.split(tumor_boxes(torch.cat([weights[:, 0] > 0, weights[:, 0] >= STRONG_WEIGHT])), 2)
        return neighbourhood_windows(blended, strong, tuple(weights.shape[2:]), stride=(height, width, depth))

    def _latent_window(self, latents: torch.Tensor, size: tuple[int, int, int], starts: np.ndarray) -> torch.Tensor:
        """The part of whole-crop latents ``(B, C, Z/f, X/f, Y/f)`` under each crop's window."""
        depth, height, width = self.latent_factor
        factors = (height, width, depth)
        pieces = []
        for index, start in enumerate(starts):
            x, y, z = (int(s) // f for s, f in zip(start, factors))
            sx, sy, sz = (n // f for n, f in zip(size, factors))
            pieces.append(latents[index, :, z : z + sz, x : x + sx, y : y + sy])
        return torch.stack(pieces)

    @staticmethod
    def _blur_sigmas(blur_sigma: list[float] | None, batch: int, generator) -> list[float]:
        """The given σ per crop, or one drawn per crop from U(0, 4) as the original draws it."""
        if blur_sigma is not None:
            return blur_sigma
        generators = generator if isinstance(generator, list) else [generator] * batch
        return [
            float(torch.rand(1, generator=g, device=g.device if g else "cpu").item() * _MAX_DRAWN_SIGMA)
            for g in generators
        ]


def _paste(full: torch.Tensor, windows: torch.Tensor, size: tuple[int, int, int], starts: np.ndarray) -> torch.Tensor:
    """``full`` ``(B, C, X, Y, Z)`` with each crop's window replaced by ``windows``."""
    full = full.clone()
    for i, (x, y, z) in enumerate(starts.tolist()):
        full[i, :, x : x + size[0], y : y + size[1], z : z + size[2]] = windows[i]
    return full


@contextlib.contextmanager
def reproducible_float32(device: torch.device) -> Iterator[None]:
    """On a CUDA ``device``: cuDNN convolutions and cuBLAS products in full float32 (no TF32) with cuDNN's
    deterministic algorithms, the caller's settings restored after. Elsewhere a no-op.

    TF32 moved single voxels of a painted crop by up to 30 HU against the CPU on an H200 (0.0009 HU without it), and
    cuDNN's default transposed-convolution algorithms accumulate with atomics: two calls with one seed differed by
    1e-4 HU in 4 % of the voxels.
    """
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def step_kwargs(scheduler: Any, generator: torch.Generator | list[torch.Generator] | None) -> dict[str, Any]:
    """Keyword arguments for ``scheduler.step``: the generator where the sampler draws noise, η = 0 for DDIM."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in accepted:
        kwargs["generator"] = generator
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    return kwargs
