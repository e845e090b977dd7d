"""A/B in one process: the released-size pipeline (exact and fast mode, one early tumour on a 96³ crop, random
weights) with the autoencoder padding through ``pad_volume`` (channels-last fill) against plain ``F.pad``,
interleaved; prints median seconds per call and whether the painted crops are identical.

    python bench/bench_pad.py --threads 2 --repeats 5
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_pad.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import _crop_and_mask, _released_pipeline  # noqa: E402

from difftumor.models import autoencoder_blocks_3d  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {
        "pad_volume": autoencoder_blocks_3d.pad_volume,
        "F.pad": lambda x, pads, mode: F.pad(x, pads, mode=mode),
    }
    hu, mask = _crop_and_mask()
    pipe = _released_pipeline()
    pipe.set_progress_bar_config(disable=True)
    times: dict[tuple[str, str], list[float]] = {}
    images: dict[tuple[str, str], torch.Tensor] = {}
    try:
        with torch.no_grad():
            for repeat in range(args.repeats):
                for fast in (False, True):
                    # Alternating which variant runs first after a mode switch (the first call after one is slower).
                    order = list(variants.items())[:: 1 if repeat % 2 == 0 else -1]
                    for name, pad in order:
                        autoencoder_blocks_3d.pad_volume = pad
                        start = time.perf_counter()
                        out = pipe(hu, mask, generator=torch.Generator().manual_seed(0), fast=fast).images
                        key = ("fast" if fast else "exact", name)
                        times.setdefault(key, []).append(time.perf_counter() - start)
                        images[key] = out
    finally:
        autoencoder_blocks_3d.pad_volume = variants["pad_volume"]
    for mode in ("exact", "fast"):
        ours, plain = statistics.median(times[(mode, "pad_volume")]), statistics.median(times[(mode, "F.pad")])
        print(
            json.dumps(
                {
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "mode": mode,
                    "pad_volume_s": round(ours, 3),
                    "f_pad_s": round(plain, 3),
                    "speed_up": round(plain / ours, 3),
                    "identical": torch.equal(images[(mode, "pad_volume")], images[(mode, "F.pad")]),
                }
            )
        )


if __name__ == "__main__":
    main()
