"""On-the-fly tumour synthesis for segmentation training: a MONAI dictionary transform and a batched twin.

For healthy crops only, with probability ``prob``, a tumour of a size class drawn from ``size_mix`` (the original:
early 0.8, medium 0.1, large 0.1) is placed in the crop's organ and painted by any registered synthesizer; the
label gets the tumour. The synthesizer (and its models) is created once per process and reused. The trainer uses
:class:`TumorSynthesisOnBatch` after collation so that diffusion crops of a batch go through the model together.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

from ..errors import DiffTumorInputError
from .geometry import TumorSpec, place_tumor
from .synthesizers import CropBatch, TumorSynthesizer, get_synthesizer

DEFAULT_SIZE_MIX = {"early": 0.8, "medium": 0.1, "large": 0.1}


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
    ):
        mix = dict(size_mix or DEFAULT_SIZE_MIX)
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
        (low, high), (a, b) = self.window, self.intensity_range
        return (image - a) / (b - a) * (high - low) + low

    def _from_hu(self, hu: np.ndarray) -> np.ndarray:
        (low, high), (a, b) = self.window, self.intensity_range
        return np.clip((hu - low) / (high - low), 0.0, 1.0) * (b - a) + a

    def plan(self, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str] | None:
        """A tumour mask for a healthy crop ``label`` ``(X, Y, Z)``; ``None`` if not drawn, not healthy or no room."""
        if rng.random() >= self.prob or (label == self.tumor_label).any():
            return None
        organ = label == self.organ_label
        if organ.sum() < 100:
            return None
        size = self.sizes[int(rng.choice(len(self.sizes), p=self.size_probabilities))]
        try:
            tumor = place_tumor(organ, self.organ, TumorSpec(size), rng, max_attempts=8)
        except DiffTumorInputError:
            return None  # this crop's organ cannot hold the tumour: leave it healthy
        return tumor.mask, tumor.size_class

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

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int], healthy: Sequence[bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        image_array, label_array = images.cpu().numpy(), labels.cpu().numpy()
        chosen, plans = [], []
        for index, seed in enumerate(seeds):
            if healthy is not None and not healthy[index]:
                continue
            plan = self.core.plan(label_array[index, 0], np.random.default_rng([int(seed), 3]))
            if plan is not None:
                chosen.append(index)
                plans.append(plan)
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
