"""``difftumor train autoencoder|diffusion|segmentation``: Accelerate trainers configured by YAML + overrides."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app, console, examples

train_app = typer.Typer(
    help="Train the autoencoder, the diffusion model or a segmentation model.", no_args_is_help=True
)
app.add_typer(train_app, name="train")

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML config file, or a packaged one: released, tiny_cpu.")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: --set optim.lr=1e-4 (repeatable).")
]
ResumeOption = Annotated[bool, typer.Option(help="Continue from the newest checkpoint in the output folder.")]


@train_app.command(
    "autoencoder",
    epilog=examples(
        "difftumor train autoencoder --config tiny_cpu --set data.datalist=cases.json --set run.output_dir=runs/ae",
        "difftumor train autoencoder --config released --set data.datalist=cases.json --resume",
    ),
)
def autoencoder(
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: ResumeOption = False,
    trust_config_code: Annotated[
        bool, typer.Option(help="Let the config import 'module:callable' hooks (loss.perceptual_network).")
    ] = False,
) -> None:
    """Train VQModel3D (L1 + commitment + 2-D/3-D hinge GAN + feature matching); writes <output_dir>/vqmodel."""
    from ..training.autoencoder import load_autoencoder_config, train_autoencoder

    out = train_autoencoder(
        load_autoencoder_config(config, set_), resume=resume, trust_config_code=trust_config_code, inputs=(config,)
    )
    console.print(f"wrote {out} (checkpoints in {out.parent / 'checkpoints'})")


@train_app.command(
    "diffusion",
    epilog=examples(
        "difftumor train diffusion --config tiny_cpu --set vqmodel=runs/ae/vqmodel --set data.datalist=early.json",
        "difftumor train diffusion --config released --set vqmodel=runs/ae/vqmodel --set run.max_steps=20000 --resume",
    ),
)
def diffusion(config: ConfigOption = None, set_: SetOption = None, resume: ResumeOption = False) -> None:
    """Train the tumour-inpainting UNet on real tumours with a frozen VQ model; writes <output_dir>/pipeline."""
    from ..training.diffusion import load_diffusion_config, train_diffusion

    out = train_diffusion(load_diffusion_config(config, set_), resume=resume, inputs=(config,))
    console.print(f"wrote {out}; load it with TumorInpaintPipeline.from_pretrained('{out}')")


@train_app.command(
    "segmentation",
    epilog=examples(
        "difftumor train segmentation --set data.healthy_datalist=healthy.json --set data.datalist=real.json",
        "difftumor train segmentation --set synthesis.synthesizer=diffusion --set synthesis.pipeline=liver-early/",
    ),
)
def segmentation(config: ConfigOption = None, set_: SetOption = None, resume: ResumeOption = False) -> None:
    """Train a MONAI segmentation model with tumours synthesised on the fly into healthy CTs; writes
    <output_dir>/model (and best_model when validating)."""
    from ..training.segmentation import load_segmentation_config, train_segmentation

    out = train_segmentation(load_segmentation_config(config, set_), resume=resume, inputs=(config,))
    console.print(f"wrote {out}; apply it with `difftumor segment CT --model {out} --out prediction.nii.gz`")
