"""``difftumor convert``: the authors' released checkpoints -> a pipeline folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, console, examples


@app.command(
    epilog=examples(
        "difftumor convert --autoencoder AutoencoderModel.ckpt --diffusion liver.pt --out liver-early/",
    )
)
def convert(
    autoencoder: Annotated[Path, typer.Option(help="The authors' AutoencoderModel.ckpt (Lightning checkpoint).")],
    diffusion: Annotated[Path, typer.Option(help="A released diffusion checkpoint, e.g. liver_early.pt.")],
    out: Annotated[Path, typer.Option(help="Folder to write the pipeline to (diffusers format, safetensors).")],
    ema: Annotated[
        bool, typer.Option("--ema/--no-ema", help="Use the EMA weights (default) or the online ones.")
    ] = True,
    scheduler: Annotated[
        str | None, typer.Option(help="Sampler to store (default: ddpm for T=4, ddim for T=200).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Default number of sampling steps to store.")] = None,
    organ: Annotated[
        str | None, typer.Option(help="Organ the model was trained on (default: from the file name).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing non-empty output folder.")] = False,
) -> None:
    """Convert the authors' released checkpoints into a TumorInpaintPipeline folder."""
    from ..conversion.convert import convert_original_checkpoints

    pipeline = convert_original_checkpoints(
        autoencoder,
        diffusion,
        out,
        use_ema=ema,
        scheduler=scheduler,
        num_inference_steps=steps,
        organ=organ,
        overwrite=overwrite,
    )
    console.print(
        f"wrote {out} ({type(pipeline.scheduler).__name__}, T = {pipeline.scheduler.config.num_train_timesteps}, "
        f"{pipeline.config.default_num_inference_steps} steps); load it with "
        f"TumorInpaintPipeline.from_pretrained('{out}')"
    )
