"""Where the fast mode's change comes from: the window's GroupNorm statistics, or the decoder's border padding.

Early tumours (radius 3–8 voxels) are painted into 96 × 96 × 64 crops of the LiTS upper half with the bundled
pipeline, exact and fast (float32 window, so that bfloat16 rounding is not part of it), from the same noise. The fast
decode is then repeated with the whole crop's GroupNorm statistics — recorded from the exact decode, layer by layer —
replayed into the window for the decoder's layers at one resolution, or at all of them. With every layer replayed only
the window's border differs from the exact decode; reported: the painted crops' change of tumour mean (HU) per
variant, and with everything replayed, the decoded crop's largest change by distance from the window's edge and the
painted crop's largest change where the blend weight is below / above
:data:`~difftumor.pipelines.tumor_inpaint.fast_mode.STRONG_WEIGHT`. The crops are painted in their own HU, without
`difftumor synthesize`'s organ-relative intensities and contrast cap (which `bench_fast_mode.py` measures through), and
with no noise re-draw for scale: this shows where a change comes from, not how it compares with the sampler's noise.

    python bench/bench_fast_mode_sources.py --sigma 4 --cases 12 --threads 2
    python bench/bench_fast_mode_sources.py --sigma 4 --cases 12 --threads 2 --suppress-stride-pattern
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from difftumor.assets import BUNDLED_PIPELINE
from difftumor.models import autoencoder_blocks_3d, normalization
from difftumor.pipelines import TumorInpaintPipeline
from difftumor.pipelines.tumor_inpaint import fast_mode
from difftumor.windowing import from_window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import record_fast_windows  # noqa: E402

LITS = Path(__file__).resolve().parents[1] / "tests" / "data" / "lits117_upper"


class StatisticsReplay:
    """Wraps ``group_norm_scale_shift`` where the autoencoder calls it: records each call's ``(scale, shift)`` during
    a recorded decode and hands back the recorded ones for the chosen calls during a replayed decode."""

    def __init__(self, pipe: TumorInpaintPipeline):
        self.original = normalization.group_norm_scale_shift
        self.mode: str | None = None
        self.next_decode: str | None = None  # what the next decode does: "record" or "replay"
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.sizes: list[str] = []  # spatial shape of each call's input, to group the calls by resolution
        self.replay: set[int] = set()
        self.call = 0
        autoencoder_blocks_3d.group_norm_scale_shift = normalization.group_norm_scale_shift = self._wrapped
        decode = pipe.vqmodel.decode

        def decode_with_mode(*arguments, **keywords):
            self.call, self.mode, self.next_decode = 0, self.next_decode, None
            try:
                return decode(*arguments, **keywords)
            finally:
                self.mode = None  # encoding (which also normalises) is never recorded or replayed

        pipe.vqmodel.decode = decode_with_mode

    def _wrapped(self, x, *arguments, **keywords):
        result = self.original(x, *arguments, **keywords)
        if self.mode == "record":
            self.recorded.append(result)
            self.sizes.append(" x ".join(str(n) for n in x.shape[2:]))
        elif self.mode == "replay":
            self.call += 1
            if self.call - 1 in self.replay:
                return self.recorded[self.call - 1]
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=4.0, help="the blend's blur σ (voxels)")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--suppress-stride-pattern", action="store_true", help="as `difftumor synthesize` paints (off: the original)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fast_mode.native_bfloat16 = lambda device: False  # the fast mode's own module reads it at call time
    pipe = TumorInpaintPipeline.from_pretrained(BUNDLED_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    replay = StatisticsReplay(pipe)
    windows = record_fast_windows(pipe, lambda sigmas: "last")

    ct = np.asarray(nib.load(str(LITS / "lits117_upper_ct.nii.gz")).dataobj, dtype=np.float32)
    liver = np.argwhere(np.asarray(nib.load(str(LITS / "lits117_upper_label.nii.gz")).dataobj) >= 1)
    shape, size = np.array(ct.shape), np.array([96, 96, 64])
    rng = np.random.default_rng(args.seed)
    changes: dict[str, list[float]] = {}
    by_distance: dict[int, float] = {}
    weak, strong = [], []
    for case in range(args.cases):
        centre = liver[rng.integers(len(liver))]
        low = np.clip(centre - size // 2, 0, shape - size)
        crop = ct[tuple(slice(int(a), int(a + n)) for a, n in zip(low, size))]
        offsets = np.indices(crop.shape) - (centre - low)[:, None, None, None]
        mask = np.sqrt((offsets.astype(np.float64) ** 2).sum(0)) <= rng.uniform(3, 8)

        def paint(fast: bool, case=case, crop=crop, mask=mask):
            generator = torch.Generator().manual_seed(case)
            return pipe(
                crop,
                mask,
                generator=generator,
                blur_sigma=args.sigma,
                fast=fast,
                suppress_stride_pattern=args.suppress_stride_pattern,
            )

        replay.recorded, replay.sizes, replay.next_decode = [], [], "record"
        exact = paint(False)
        if not replay.recorded:
            raise SystemExit("nothing to replay: the statistics are recorded on the accurate GroupNorm path only (CPU)")
        levels = {f"{n} layers": {i for i, s in enumerate(replay.sizes) if s == n} for n in dict.fromkeys(replay.sizes)}
        variants = {"none": set(), **levels, "all": set(range(len(replay.recorded)))}
        tumour_exact = float(exact.images[0, 0][torch.from_numpy(mask)].double().mean())
        for name, calls in variants.items():
            replay.replay, replay.next_decode = calls, "replay"
            fast = paint(True)
            tumour_fast = float(fast.images[0, 0][torch.from_numpy(mask)].double().mean())
            changes.setdefault(name, []).append(abs(tumour_fast - tumour_exact))
        # With every layer replayed (the last variant), only the border differs.
        extent, starts = windows["last"]
        grid = np.indices(crop.shape)
        distance = np.min(
            [np.minimum(grid[a] - starts[0][a], starts[0][a] + extent[a] - 1 - grid[a]) for a in range(3)], axis=0
        )
        decoded = from_window(fast.decoded, *pipe.config.window) - from_window(exact.decoded, *pipe.config.window)
        decoded = decoded.abs()[0, 0].numpy()
        for d in range(12):
            by_distance[d] = max(by_distance.get(d, 0.0), float(decoded[distance == d].max()))
        painted = (fast.images - exact.images).abs()[0, 0].numpy()
        weights = exact.blend_weights[0, 0].numpy()
        for values, where in (
            (weak, (weights > 0) & (weights < fast_mode.STRONG_WEIGHT)),
            (strong, weights >= fast_mode.STRONG_WEIGHT),
        ):
            if where.any():
                values.append(float(painted[where].max()))
        print(case, {name: round(values[-1], 2) for name, values in changes.items()}, file=sys.stderr)

    report = {
        "sigma": args.sigma,
        "suppress_stride_pattern": args.suppress_stride_pattern,
        "cases": args.cases,
        "tumour_mean_abs_change_hu": {
            name: {
                "median": round(float(np.median(values)), 4),
                "q90": round(float(np.quantile(values, 0.9)), 4),
                "max": round(float(np.max(values)), 4),
            }
            for name, values in changes.items()
        },
        "all_replayed_decoded_max_change_hu_by_distance_from_window_edge": {
            d: round(v, 2) for d, v in by_distance.items()
        },
        "all_replayed_painted_max_change_hu": {
            "weight_below_strong": round(max(weak, default=0.0), 4),
            "weight_at_least_strong": round(max(strong, default=0.0), 4),
        },
    }
    print(json.dumps(report, indent=1))
    print("command: python bench/bench_fast_mode_sources.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
