"""Where does a diffusion pipeline's tumour contrast come from? Measure it stage by stage on real lesions.

On the training side of the LiTS upper half (the lesion-wise split every bundled model is trained on; `difftumor data
split-lesions`, 10 mm margin, seed 0), for every real lesion's 64³ crop on the 1 mm working grid, the drop of the
lesion's mean below its organ ring (2–5 mm outside, HU) is measured:

- ``real``: in the CT;
- ``autoencoder``: after the VQ model's encode → quantise → decode (what the autoencoder can represent);
- ``condition``: the decoded masked condition — the crop with the lesion blanked to the window's middle (37.5 HU),
  which is what a model that copies its condition paints;
- ``<sampler>``: the pipeline's own painting of that lesion's mask, mean over seeds: its decoded lesion below the
  crop's own ring — what blending the tumour into the crop shows;
- ``<sampler> in decode``: the same below the decoded crop's ring (a model that darkens around the lesion too
  shows less here than above);
- ``<sampler> @ <HU>``: the first measure with the crop's organ moved to that mean (a model that follows the organ
  keeps its drop; one that copies the blanked value does not).

``--placed`` paints each lesion's mask, moved to healthy parenchyma of the same CT (≥ 15 mm from every tumour, ≥ 6 mm
inside the organ; a seeded draw), instead of on the lesion itself: there no partial-volume rim outside the label
tells the model how dark to paint, as for every tumour ``synthesize`` places. ``real`` stays the lesion's own drop
(the target); ``autoencoder`` and ``condition`` are then measured at the placed site.

Usage::

    python bench/bench_tumor_contrast.py [--pipeline DIR] [--samplers ddpm ddim] [--seeds 3] [--organ-hu 60 170]
        [--placed] [--blur-sigma S --blend blur|outside --suppress-stride-pattern]

Prints one row per lesion and the medians, and a JSON line of the medians.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
LITS = REPO / "tests" / "data" / "lits117_upper"


def _drop(volume: np.ndarray, lesion: np.ndarray, ring: np.ndarray) -> float:
    return float(volume[ring].mean() - volume[lesion].mean())


def main() -> int:
    from difftumor import TumorInpaintPipeline
    from difftumor.assets import bundled_pipeline_path
    from difftumor.schedulers import make_scheduler
    from difftumor.training.data import preprocessing
    from difftumor.windowing import from_window, to_window

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=str(bundled_pipeline_path()))
    parser.add_argument("--samplers", nargs="+", default=["ddpm", "ddim"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--organ-hu", nargs="*", type=float, default=[60.0, 170.0])
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--placed", action="store_true")
    parser.add_argument("--blur-sigma", type=float, default=0.0, help="the blend's σ (voxels; synthesize: 1-3)")
    parser.add_argument("--blend", default="blur", help="the pipeline's blend: blur (the original) or outside")
    parser.add_argument("--suppress-stride-pattern", action="store_true", help="as synthesize does")
    arguments = parser.parse_args()
    torch.set_grad_enabled(False)

    pipe = TumorInpaintPipeline.from_pretrained(arguments.pipeline)
    pipe.set_progress_bar_config(disable=True)
    stored = pipe.scheduler
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [
                "difftumor", "data", "split-lesions", str(LITS / "lits117_upper_ct.nii.gz"),
                str(LITS / "lits117_upper_label.nii.gz"), "--out", f"{folder}/split", "--margin-mm", "10",
                "--seed", "0",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        chain = preprocessing((-175.0, 250.0), 1.0, (arguments.crop,) * 3, True)
        data = chain({"image": f"{folder}/split/train_ct.nii.gz", "label": f"{folder}/split/train_label.nii.gz"})
    hu = from_window(np.asarray(data["image"])[0])
    labels = np.asarray(data["label"])[0]
    organ, tumours = labels == 1, labels == 2
    components, count = ndimage.label(tumours, np.ones((3, 3, 3)))
    half, crop = arguments.crop // 2, arguments.crop
    depth = ndimage.distance_transform_edt(organ)
    clearance = ndimage.distance_transform_edt(~tumours)
    fits = np.zeros_like(organ)
    fits[half:-half, half:-half, half:-half] = True
    columns = ["diameter_mm", "real", "autoencoder", "condition"]
    columns += [*arguments.samplers, f"{arguments.samplers[0]} in decode"]
    columns += [f"{arguments.samplers[0]} @ {v:g}" for v in arguments.organ_hu]
    rows = []
    print(" | ".join(columns))
    for index in range(1, count + 1):
        whole = components == index
        if whole.sum() < 30:  # a few voxels: no measurable mean
            continue
        centre = [int(round(v)) for v in ndimage.center_of_mass(whole)]
        low = [min(max(c - half, 0), n - crop) for c, n in zip(centre, hu.shape)]
        box = tuple(slice(a, a + crop) for a in low)
        image, lesion = hu[box].astype(np.float32), whole[box]
        outside = ndimage.distance_transform_edt(~lesion)
        ring = (outside > 2) & (outside <= 5) & organ[box] & ~tumours[box]
        target = _drop(image, lesion, ring)
        if arguments.placed:
            reach = float(np.max(np.abs(np.argwhere(whole) - centre)))
            sites = np.argwhere((depth > reach + 6) & (clearance > reach + 15) & fits)
            if not len(sites):
                continue
            site = sites[np.random.default_rng(index).integers(len(sites))]
            box = tuple(slice(int(c) - half, int(c) + half) for c in site)
            moved = np.argwhere(whole) - centre + half
            lesion = np.zeros((crop,) * 3, bool)
            lesion[tuple(moved.T)] = True
            image = hu[box].astype(np.float32)
            outside = ndimage.distance_transform_edt(~lesion)
            ring = (outside > 2) & (outside <= 5) & organ[box] & ~tumours[box]
        x = torch.from_numpy(image)[None, None]
        mask = torch.from_numpy(lesion.astype(np.float32))[None, None]
        model_x, model_mask = to_window(x).permute(0, 1, 4, 2, 3), mask.permute(0, 1, 4, 2, 3)
        back = lambda volume: from_window(volume.permute(0, 1, 3, 4, 2))[0, 0].numpy()  # noqa: E731
        row = [2 * (3 * whole.sum() / (4 * np.pi)) ** (1 / 3), target]
        row.append(_drop(back(pipe.vqmodel.decode(pipe.vqmodel.encode(model_x).latents).sample), lesion, ring))
        condition = pipe.encode_condition(model_x, model_mask)[:, :-1]
        row.append(_drop(back(pipe.vqmodel.decode(pipe.vqmodel.denormalize_latents(condition)).sample), lesion, ring))

        def painted(name: str, shift: float, x=x, mask=mask, lesion=lesion, ring=ring) -> tuple[float, float]:
            pipe.scheduler = make_scheduler(name, stored.config)
            own, decoded = [], []
            for seed in range(arguments.seeds):
                out = pipe(
                    x + shift,
                    mask,
                    generator=torch.Generator().manual_seed(seed),
                    blur_sigma=arguments.blur_sigma,
                    blend=arguments.blend,
                    suppress_stride_pattern=arguments.suppress_stride_pattern,
                )
                volume = from_window(out.decoded)[0, 0].numpy()
                own.append(float((x[0, 0].numpy() + shift)[ring].mean() - volume[lesion].mean()))
                decoded.append(_drop(volume, lesion, ring))
            return float(np.mean(own)), float(np.mean(decoded))

        first = painted(arguments.samplers[0], 0.0)
        row += [first[0], *(painted(name, 0.0)[0] for name in arguments.samplers[1:]), first[1]]
        organ_mean = float(image[ring].mean())
        row += [painted(arguments.samplers[0], target - organ_mean)[0] for target in arguments.organ_hu]
        rows.append(row)
        print(" | ".join(f"{v:6.1f}" for v in row), flush=True)
    medians = dict(zip(columns, np.median(np.asarray(rows), 0).round(1).tolist()))
    print("median | " + " | ".join(f"{v:6.1f}" for v in medians.values()))
    settings = {key: getattr(arguments, key) for key in ("placed", "blur_sigma", "blend", "suppress_stride_pattern")}
    record = {"bench": "tumor_contrast", "pipeline": arguments.pipeline, **settings, "lesions": len(rows)}
    print(json.dumps({**record, **medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
