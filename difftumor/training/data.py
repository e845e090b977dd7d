"""Training data: MONAI preprocessing to the working space, and crops that are a pure function of (seed, index).

Every sample is drawn from its own random state derived from the run seed and its global index, so a resumed run
(or a run split over several processes) sees exactly the crops an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data.datalists import read_cases  # noqa: F401 — re-exported: the trainers read datalists through here
from ..errors import DiffTumorInputError
from ..limits import check_patch_size
from .config import Fraction, NonNegativeInt, PositiveInt, Range

#: A crop edge in voxels: at least one 16-voxel block of the networks, at most what fits the memory bound.
CropEdge = Annotated[int, Range(16, 512)]


@dataclass
class DataConfig:
    """Data section shared by the trainers."""

    datalist: str = ""
    crop_size: tuple[CropEdge, CropEdge, CropEdge] = (96, 96, 96)
    batch_size: PositiveInt = 2
    window: tuple[float, float] = (-175.0, 250.0)
    spacing: Annotated[float, Range(0.1, 10.0)] = 1.0
    #: fraction of crops centred on foreground (organ/tumour) voxels
    positive_fraction: Fraction = 0.95
    num_workers: NonNegativeInt = 0
    #: limit the number of cases (0 = all), for quick experiments
    max_cases: NonNegativeInt = 0

    def validate(self) -> None:
        if not self.datalist:
            raise DiffTumorInputError("config key data.datalist is empty", "set it to a datalist JSON")
        self.validate_crops()

    def validate_crops(self) -> None:
        if any(size % 16 for size in self.crop_size):
            raise DiffTumorInputError(f"data.crop_size {self.crop_size} must be multiples of 16")
        if self.window[0] >= self.window[1]:
            raise DiffTumorInputError(f"data.window {self.window} must be (low, high) HU with low < high")
        check_patch_size(self.crop_size, "data.crop_size", self.batch_size)


def preprocessing(
    window: Sequence[float],
    spacing: float,
    crop_size: Sequence[int],
    with_label: bool,
    intensity_range: Sequence[float] = (-1.0, 1.0),
):
    """MONAI chain to the working space: load, channel first, RAS, isotropic spacing, HU window -> ``intensity_range``
    ([-1, 1] for the generative models, [0, 1] for segmentation, as in the original), pad to the crop size."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    # Images are padded with the bottom of the window (the original pads with the image minimum).
    pads = [SpatialPadd(keys="image", spatial_size=tuple(crop_size), value=float(intensity_range[0]))]
    if with_label:
        pads.append(SpatialPadd(keys="label", spatial_size=tuple(crop_size), value=0))
    return Compose(
        [
            LoadImaged(keys=keys, image_only=True),
            EnsureChannelFirstd(keys=keys),
            Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys=keys, pixdim=(spacing,) * 3, mode=modes),
            ScaleIntensityRanged(
                keys="image",
                a_min=window[0],
                a_max=window[1],
                b_min=intensity_range[0],
                b_max=intensity_range[1],
                clip=True,
            ),
            *pads,
            EnsureTyped(keys=keys, track_meta=False),
        ]
    )


class CropDataset(Dataset):
    """``dataset[i]`` is the ``i``-th training crop of the run: a case and a crop drawn from ``(seed, i)``.

    Args:
        cases: datalist entries with ``image`` (and ``label`` for label-guided crops).
        crop_transform: a callable ``(data, rng) -> dict`` making the random crop (and augmentations).
        seed: run seed.
        case_weights: optional sampling weights per case.
    """

    def __init__(self, cases, preprocess, crop_transform, seed: int, case_weights: Sequence[float] | None = None):
        self.cases = cases
        self.preprocess = preprocess
        self.crop_transform = crop_transform
        self.seed = seed
        weights = np.asarray(case_weights if case_weights is not None else np.ones(len(cases)), dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return 2**62

    def case(self, index: int) -> dict:
        if index not in self._cache:
            self._cache[index] = self.preprocess(
                {k: v for k, v in self.cases[index].items() if k in ("image", "label")}
            )
        return self._cache[index]

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        case_index = int(rng.choice(len(self.cases), p=self.probabilities))
        sample = self.crop_transform(self.case(case_index), rng)
        return {key: torch.as_tensor(np.asarray(value)) for key, value in sample.items()}


class RunIndexSampler(Sampler):
    """Global sample indices of one process, from a start step on: step ``s`` of rank ``r`` (of ``w``) takes indices
    ``(s·w + r)·B … (s·w + r)·B + B − 1``. A run resumed at step ``s`` continues with exactly those indices."""

    def __init__(self, start_step: int, max_steps: int, batch_size: int, rank: int, world_size: int):
        self.start_step, self.max_steps = start_step, max_steps
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self):
        for step in range(self.start_step, self.max_steps):
            base = (step * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)

    def __len__(self) -> int:
        return max(self.max_steps - self.start_step, 0) * self.batch_size


def run_loader(dataset: CropDataset, batch_size: int, num_workers: int, start_step: int, max_steps: int, accelerator):
    """This process's batches from ``start_step`` to ``max_steps`` (see :class:`RunIndexSampler`).

    The loader gets its own generator: creating a DataLoader iterator otherwise draws from the global torch RNG,
    which a resumed run would then consume at a different point than an uninterrupted one.
    """
    sampler = RunIndexSampler(start_step, max_steps, batch_size, accelerator.process_index, accelerator.num_processes)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(dataset.seed),
    )


def seeded(transform, rng: np.random.Generator):
    """Seed a MONAI randomizable transform (or Compose) from ``rng`` and return it."""
    transform.set_random_state(seed=int(rng.integers(2**31 - 1)))
    return transform


def seeded_crop(chain, data: dict, rng: np.random.Generator) -> dict:
    """One sample of a crop chain seeded from ``rng`` (the first when the crop transform returns a list): the crop
    step every trainer shares."""
    sample = seeded(chain, rng)(dict(data))
    return sample[0] if isinstance(sample, list) else sample
