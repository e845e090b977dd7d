"""On-the-fly tumour synthesis for segmentation training: a MONAI dictionary transform and a batched twin.

For healthy crops that contain the organ, with probability ``prob`` (the original: 0.5), 1–3 tumours (the
original; ``tumors_per_crop``) of a size class drawn from ``size_mix`` (the original: early 0.8, medium 0.1,
large 0.1) are placed in the crop's organ and painted by any registered synthesizer; the label gets the tumours.
Crops without organ are not candidates, so ``prob`` is the rate among crops that could receive a tumour; the
trainer logs that effective rate. Hu et al.'s recipe (``HU2023_RECIPE``) draws a type from tiny/small/medium/
large/mix and a count per type instead. The synthesizer (and its models) is created once per process and
reused. The trainer uses :class:`TumorSynthesisOnBatch` after collation so that diffusion crops of a batch go
through the model together.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

from ..errors import DiffTumorInputError
from ..windowing import scale_window, unscale_window
from .geometry import TumorSpec, place_tumor
from .synthesizers import CropBatch, TumorSynthesizer, get_synthesizer

DEFAULT_SIZE_MIX = {"early": 0.8, "medium": 0.1, "large": 0.1}
DEFAULT_TUMORS_PER_CROP = (1, 3)
#: A crop needs this many organ voxels to be a candidate.
MIN_ORGAN_VOXELS = 100
_SIZE_ORDER = ("tiny", "small", "early", "medium", "large")


class TumorSynthesisCore:
    """Decide, place and paint tumours in working-space crops whose intensities are window-scaled.

    Args:
        synthesizer: a :class:`TumorSynthesizer` or a registered name (built lazily, once per process).
        organ: ``liver``, ``pancreas`` or ``kidney``.
        prob: probability of synthesising into a healthy crop.
        size_mix: size class -> probability.
        window: HU window of the crops' intensity scale.
        intensity_range: what the window maps to in the crops (``(0, 1)`` for segmentation, as the original).
        organ_label, tumor_label: label ids in the crops.
        synthesizer_kwargs: arguments for a synthesizer given by name (e.g. ``pipeline=``).
        tumors_per_crop: ``(low, high)`` tumours per selected crop (inclusive), or per size class a range (Hu et
            al.'s counts); the ``"mix"`` class places tiny, small, medium and large tumours with their own ranges.
    """

    def __init__(
        self,
        synthesizer: TumorSynthesizer | str = "handcrafted",
        organ: str = "liver",
        prob: float = 0.5,
        size_mix: Mapping[str, float] | None = None,
        window: Sequence[float] = (-175.0, 250.0),
        intensity_range: Sequence[float] = (0.0, 1.0),
        organ_label: int = 1,
        tumor_label: int = 2,
        synthesizer_kwargs: dict[str, Any] | None = None,
        tumors_per_crop: Sequence[int] | Mapping[str, Sequence[int]] = DEFAULT_TUMORS_PER_CROP,
    ):
        mix = dict(size_mix or DEFAULT_SIZE_MIX)
        self.tumors_per_crop = tumors_per_crop
        if not mix or any(p < 0 for p in mix.values()) or sum(mix.values()) <= 0:
            raise DiffTumorInputError(f"invalid size mix {mix}", "give non-negative probabilities, e.g. early: 0.8")
        self._synthesizer = synthesizer
        self._synthesizer_kwargs = synthesizer_kwargs or {}
        self.organ, self.prob = organ, float(prob)
        self.sizes = list(mix)
        self.size_probabilities = np.asarray([mix[k] for k in self.sizes], dtype=np.float64)
        self.size_probabilities /= self.size_probabilities.sum()
        self.window, self.intensity_range = tuple(window), tuple(intensity_range)
        self.organ_label, self.tumor_label = organ_label, tumor_label

    @property
    def synthesizer(self) -> TumorSynthesizer:
        if isinstance(self._synthesizer, str):
            self._synthesizer = get_synthesizer(self._synthesizer, **self._synthesizer_kwargs)
        return self._synthesizer

    def _to_hu(self, image: np.ndarray) -> np.ndarray:
        return unscale_window(image, self.window, self.intensity_range)

    def _from_hu(self, hu: np.ndarray) -> np.ndarray:
        return scale_window(hu, self.window, self.intensity_range)

    def candidate(self, label: np.ndarray) -> bool:
        """Whether a crop may receive tumours: healthy, with enough organ."""
        return not (label == self.tumor_label).any() and int((label == self.organ_label).sum()) >= MIN_ORGAN_VOXELS

    def _count(self, size: str, rng: np.random.Generator) -> int:
        ranges = self.tumors_per_crop
        low, high = ranges.get(size, DEFAULT_TUMORS_PER_CROP) if isinstance(ranges, Mapping) else ranges
        return int(rng.integers(int(low), int(high) + 1))

    def plan(self, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str] | None:
        """Tumour masks (one array, possibly several components) for a candidate crop ``label`` ``(X, Y, Z)`` and
        the largest size class placed; ``None`` if not drawn, not a candidate, or no room."""
        if not self.candidate(label) or rng.random() >= self.prob:
            return None
        organ = label == self.organ_label
        size = self.sizes[int(rng.choice(len(self.sizes), p=self.size_probabilities))]
        parts = ("tiny", "small", "medium", "large") if size == "mix" else (size,)
        classes = [part for part in parts for _ in range(self._count(part, rng))]
        occupied = np.zeros_like(organ)
        placed: list[str] = []
        for size_class in classes:
            try:
                tumor = place_tumor(organ, self.organ, TumorSpec(size_class), rng, max_attempts=8, occupied=occupied)
            except DiffTumorInputError:
                continue  # no room left in this crop's organ for another one
            occupied |= tumor.mask
            placed.append(tumor.size_class)
        if not placed:
            return None
        return occupied, max(placed, key=_SIZE_ORDER.index)

    def paint(
        self, images: list[np.ndarray], labels: list[np.ndarray], plans: list[tuple[np.ndarray, str]], seeds: list[int]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Paint planned tumours into crops ``(X, Y, Z)`` (one synthesizer call per ``max_batch_size`` crops)."""
        out_images, out_labels = [], []
        step = max(1, self.synthesizer.max_batch_size)
        for start in range(0, len(images), step):
            chunk = range(start, min(start + step, len(images)))
            batch = CropBatch(
                images=torch.from_numpy(np.stack([self._to_hu(images[i]) for i in chunk])[:, None].astype(np.float32)),
                tumor_masks=torch.from_numpy(np.stack([plans[i][0] for i in chunk])[:, None]),
                organ_masks=torch.from_numpy(np.stack([labels[i] == self.organ_label for i in chunk])[:, None]),
                organ=self.organ,
                size_classes=[plans[i][1] for i in chunk],
                seeds=[seeds[i] for i in chunk],
            )
            painted = self.synthesizer.synthesize(batch).images.detach().cpu().numpy()[:, 0]
            for position, index in enumerate(chunk):
                changed = painted[position] != batch.images[position, 0].numpy()
                image = images[index].copy()
                image[changed] = self._from_hu(painted[position][changed]).astype(image.dtype)
                label = labels[index].copy()
                label[plans[index][0]] = self.tumor_label
                out_images.append(image)
                out_labels.append(label)
        return out_images, out_labels


class RandTumorSynthesisd(RandomizableTransform, MapTransform):
    """MONAI dictionary transform: synthesise a tumour into a healthy crop with probability ``prob``.

    Args:
        keys: ``(image_key, label_key)``; images ``(1, X, Y, Z)`` window-scaled, labels ``(1, X, Y, Z)``.
        Everything else as :class:`TumorSynthesisCore`. Seed it with ``set_random_state``.
    """

    def __init__(self, keys: Sequence[Hashable] = ("image", "label"), **core_kwargs: Any):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)  # the core draws its own probability
        self.core = TumorSynthesisCore(**core_kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        data = dict(data)
        image_key, label_key = self.keys[0], self.keys[1]
        rng = np.random.default_rng(self.R.randint(2**31 - 1))
        label = np.asarray(data[label_key])[0]
        plan = self.core.plan(label, rng)
        if plan is None:
            return data
        image = np.asarray(data[image_key])[0]
        images, labels = self.core.paint([image], [label], [plan], [int(rng.integers(2**31 - 1))])
        data[image_key] = _like(data[image_key], images[0][None])
        data[label_key] = _like(data[label_key], labels[0][None])
        return data


class TumorSynthesisOnBatch:
    """The same synthesis on a collated batch ``(B, 1, X, Y, Z)``: every selected crop goes to the synthesizer in
    as few calls as it allows. ``healthy`` marks which samples may receive tumours (default: label-based)."""

    def __init__(self, **core_kwargs: Any):
        self.core = TumorSynthesisCore(**core_kwargs)
        #: running totals since construction: crops seen, candidates (healthy, with organ), crops synthesised
        self.seen = self.candidates = self.synthesised = 0

    @property
    def effective_rate(self) -> float:
        """Synthesised ÷ candidate crops so far (the original's 0.5 is this rate)."""
        return self.synthesised / max(self.candidates, 1)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int], healthy: Sequence[bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        image_array, label_array = images.cpu().numpy(), labels.cpu().numpy()
        chosen, plans = [], []
        self.seen += len(seeds)
        for index, seed in enumerate(seeds):
            if healthy is not None and not healthy[index]:
                continue
            self.candidates += int(self.core.candidate(label_array[index, 0]))
            plan = self.core.plan(label_array[index, 0], np.random.default_rng([int(seed), 3]))
            if plan is not None:
                chosen.append(index)
                plans.append(plan)
        self.synthesised += len(chosen)
        if not chosen:
            return images, labels, 0
        painted, relabelled = self.core.paint(
            [image_array[i, 0] for i in chosen],
            [label_array[i, 0] for i in chosen],
            plans,
            [int(seeds[i]) for i in chosen],
        )
        images, labels = images.clone(), labels.clone()
        for position, index in enumerate(chosen):
            images[index, 0] = torch.from_numpy(painted[position]).to(images)
            labels[index, 0] = torch.from_numpy(relabelled[position]).to(labels)
        return images, labels, len(chosen)


def _like(reference: Any, array: np.ndarray) -> Any:
    """``array`` in the type of ``reference``: a MONAI ``MetaTensor`` keeps its affine, metadata and applied
    operations (a painted crop is the same crop, so downstream inverses and savers still know where it lies)."""
    if isinstance(reference, torch.Tensor):
        tensor = torch.as_tensor(array, dtype=reference.dtype, device=reference.device)
        from monai.data import MetaTensor

        if isinstance(reference, MetaTensor):
            result = reference.clone()
            result.set_array(tensor)
            return result
        return tensor
    return array.astype(np.asarray(reference).dtype)
