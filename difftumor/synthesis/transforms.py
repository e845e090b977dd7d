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

import logging
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, RandomizableTransform

from ..errors import DiffTumorInputError
from ..windowing import scale_window, unscale_window
from .bank import PaintedCropBank
from .geometry import TumorSpec, place_tumor
from .synthesizers import CropBatch, TumorSynthesizer, get_synthesizer

DEFAULT_SIZE_MIX = {"early": 0.8, "medium": 0.1, "large": 0.1}
DEFAULT_TUMORS_PER_CROP = (1, 3)
#: A crop needs this many organ voxels to be a candidate.
MIN_ORGAN_VOXELS = 100
logger = logging.getLogger(__name__)
_SIZE_ORDER = ("tiny", "small", "early", "medium", "large")
#: Why :class:`RandTumorSynthesisd` left a crop as it was: it already holds the tumour label, holds too little organ,
#: the probability draw said no, no tumour fitted in its organ, or the painting changed no voxel.
SKIP_REASONS = ("has_tumor", "no_organ", "not_drawn", "no_room", "unchanged")
#: The transform warns once when, after this many crops with organ, more than half of them were skipped for a reason
#: that is rarely intended (already holding the tumour label, or painted without effect).
WARN_AFTER_CROPS = 20


class TumorSynthesisCore:
    """Decide, place and paint tumours in working-space crops whose intensities are window-scaled.

    Args:
        synthesizer: a :class:`TumorSynthesizer` or a registered name (built lazily, once per process).
        organ: ``liver``, ``pancreas`` or ``kidney``.
        prob: probability of synthesising into a healthy crop.
        size_mix: size class -> probability.
        window: HU window of the crops' intensity scale.
        intensity_range: what the window maps to in the crops (``(0, 1)`` for segmentation, as the original:
            MONAI's ``ScaleIntensityRanged(a_min=-175, a_max=250, b_min=0, b_max=1, clip=True)`` before synthesis),
            or ``"hu"`` for crops still in Hounsfield units. A crop whose values cannot be on the stated scale is
            refused (:meth:`check_intensity`).
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
        intensity_range: Sequence[float] | str = (0.0, 1.0),
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
        if isinstance(intensity_range, str) and intensity_range != "hu":
            raise DiffTumorInputError(
                f"intensity_range {intensity_range!r}", "give (low, high) of the window-scaled crops, or 'hu'"
            )
        self.window = tuple(window)
        self.intensity_range = intensity_range if isinstance(intensity_range, str) else tuple(intensity_range)
        if int(organ_label) == int(tumor_label):
            raise DiffTumorInputError(
                f"organ_label and tumor_label are both {organ_label}", "give the tumours a label of their own"
            )
        self.organ_label, self.tumor_label = organ_label, tumor_label

    @property
    def synthesizer(self) -> TumorSynthesizer:
        if isinstance(self._synthesizer, str):
            self._synthesizer = get_synthesizer(self._synthesizer, **self._synthesizer_kwargs)
        return self._synthesizer

    def _to_hu(self, image: np.ndarray) -> np.ndarray:
        if self.intensity_range == "hu":
            return image
        return unscale_window(image, self.window, self.intensity_range)

    def _from_hu(self, hu: np.ndarray) -> np.ndarray:
        if self.intensity_range == "hu":
            return hu
        return scale_window(hu, self.window, self.intensity_range)

    def check_intensity(self, image: np.ndarray, label: np.ndarray) -> None:
        """Refuse a crop whose values cannot be on the stated scale: a window-scaled crop spans at most the scale of
        the whole HU range (air to dense bone, ~10 window widths even unclipped) and its organ lies near the
        window; a crop in HU with organ spans tens of HU of noise alone."""
        values = image[np.isfinite(image)]
        if values.size == 0:
            raise DiffTumorInputError("the image crop holds no finite value", "check the image loading")
        span = float(values.max() - values.min())
        organ = label == self.organ_label
        organ_median = float(np.median(image[organ])) if organ.any() else None
        if self.intensity_range == "hu":
            if span <= 4.0 and organ.sum() >= MIN_ORGAN_VOXELS:
                raise DiffTumorInputError(
                    f"the image crop spans only {span:.3g} (values {values.min():.3g} to {values.max():.3g}) but "
                    "intensity_range='hu' says Hounsfield units",
                    "pass intensity_range=(low, high) of your ScaleIntensityRanged output instead",
                )
            return
        low, high = self.intensity_range
        width = abs(high - low)
        outside = organ_median is not None and not (
            min(low, high) - 3 * width <= organ_median <= max(low, high) + 3 * width
        )
        if span > 25 * width or outside:
            raise DiffTumorInputError(
                f"the image crop looks like Hounsfield units (values {values.min():.4g} to {values.max():.4g}) but "
                f"RandTumorSynthesisd expects intensities scaled to {tuple(self.intensity_range)}",
                f"put ScaleIntensityRanged(keys='image', a_min={self.window[0]:g}, a_max={self.window[1]:g}, "
                f"b_min={low:g}, b_max={high:g}, clip=True) before it, or pass intensity_range='hu'",
            )

    def check_labels(self, label: np.ndarray, other_labels_seen: bool) -> bool:
        """Refuse a label map in which ``tumor_label`` names another structure. A map that shows two or more labels
        besides background, organ, tumour and 255 (ignore) is a multi-structure map (TotalSegmentator's, say: 2 is
        kidney_right there), and once one has been seen a tumour label present in a crop is that structure, not a
        tumour. A dataset's own extra class (KiTS's cyst) is one label and passes. Returns whether this map, or an
        earlier one, showed several other structures (callers carry it over to the next crops)."""
        present = {int(v) for v in np.unique(label)}
        others = present - {0, int(self.organ_label), int(self.tumor_label), 255}
        multi_structure = len(others) >= 2 or other_labels_seen
        if multi_structure and int(self.tumor_label) in present:
            shown = sorted(present)[:12]
            raise DiffTumorInputError(
                f"tumor_label {self.tumor_label} is used by another structure in this label map (labels {shown}"
                f"{' ...' if len(present) > 12 else ''}): crops holding it would be skipped as already tumorous and "
                "painted tumours would take its id",
                f"pass a tumor_label the map does not use, e.g. tumor_label={max(present) + 1}",
            )
        return multi_structure

    def _not_a_candidate(self, label: np.ndarray) -> str | None:
        """Why a crop may not receive tumours (``"has_tumor"``, ``"no_organ"``), or None when it may."""
        if (label == self.tumor_label).any():
            return "has_tumor"
        if int((label == self.organ_label).sum()) < MIN_ORGAN_VOXELS:
            return "no_organ"
        return None

    def candidate(self, label: np.ndarray) -> bool:
        """Whether a crop may receive tumours: healthy, with enough organ."""
        return self._not_a_candidate(label) is None

    def _count(self, size: str, rng: np.random.Generator) -> int:
        ranges = self.tumors_per_crop
        low, high = ranges.get(size, DEFAULT_TUMORS_PER_CROP) if isinstance(ranges, Mapping) else ranges
        return int(rng.integers(int(low), int(high) + 1))

    def plan(self, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str] | None:
        """Tumour masks (one array, possibly several components) for a candidate crop ``label`` ``(X, Y, Z)`` and
        the largest size class placed; ``None`` if not drawn, not a candidate, or no room."""
        return self.decide(label, rng)[0]

    def decide(self, label: np.ndarray, rng: np.random.Generator) -> tuple[tuple[np.ndarray, str] | None, str]:
        """:meth:`plan` and why: ``"planned"``, or the reason the crop is left as it is (:data:`SKIP_REASONS`)."""
        reason = self._not_a_candidate(label)
        if reason is not None:
            return None, reason
        if not self.drawn(rng):
            return None, "not_drawn"
        return self.place(label, rng)

    def drawn(self, rng: np.random.Generator) -> bool:
        """Whether a candidate crop is drawn for synthesis (probability ``prob``; one draw from ``rng``)."""
        return bool(rng.random() < self.prob)

    def place(self, label: np.ndarray, rng: np.random.Generator) -> tuple[tuple[np.ndarray, str] | None, str]:
        """Tumour masks for a drawn candidate crop (the rest of :meth:`decide`): ``(masks, largest size class)`` and
        ``"planned"``, or ``None`` and ``"no_room"``."""
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
            return None, "no_room"
        return (occupied, max(placed, key=_SIZE_ORDER.index)), "planned"

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


class RandTumorSynthesisd(RandomizableTransform, MapTransform, InvertibleTransform):
    """MONAI dictionary transform: synthesise a tumour into a healthy crop with probability ``prob``.

    Args:
        keys: ``(image_key, label_key)``; images ``(1, X, Y, Z)`` window-scaled to ``intensity_range`` (default
            ``(0, 1)``: put ``ScaleIntensityRanged(a_min=-175, a_max=250, b_min=0, b_max=1, clip=True)`` first) or in
            HU with ``intensity_range="hu"``; labels ``(1, X, Y, Z)`` with the organ at ``organ_label`` and a
            ``tumor_label`` no other structure uses.
        Everything else as :class:`TumorSynthesisCore`. Seed it with ``set_random_state``.

    Every call records its outcome: on a ``MetaTensor`` image, in its applied operations (``extra_info``:
    ``{"outcome": "painted" | one of SKIP_REASONS, "changed_voxels": n}``; the inverse only removes the record — a
    painted tumour is not undone); and in :attr:`outcomes`, the counts of this transform object (per worker process
    in a ``DataLoader``). It logs a warning once when more than half of the first ``WARN_AFTER_CROPS`` crops with organ
    were skipped as already holding the tumour label or were painted without effect.
    """

    def __init__(self, keys: Sequence[Hashable] = ("image", "label"), **core_kwargs: Any):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)  # the core draws its own probability
        self.core = TumorSynthesisCore(**core_kwargs)
        #: outcome -> crops, since construction (``"painted"`` and :data:`SKIP_REASONS`)
        self.outcomes: Counter[str] = Counter()
        self._multi_structure_labels = False
        self._warned = False

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        data = dict(data)
        image_key, label_key = self.keys[0], self.keys[1]
        rng = np.random.default_rng(self.R.randint(2**31 - 1))
        _check_grid(data[image_key])
        label = np.asarray(data[label_key])[0]
        image = np.asarray(data[image_key])[0]
        if label.shape != image.shape:
            raise DiffTumorInputError(
                f"label shape {label.shape} differs from image shape {image.shape}", "resample both with the same grid"
            )
        self._multi_structure_labels = self.core.check_labels(label, self._multi_structure_labels)
        self.core.check_intensity(image, label)
        plan, outcome = self.core.decide(label, rng)
        changed = 0
        if plan is not None:
            images, labels = self.core.paint([image], [label], [plan], [int(rng.integers(2**31 - 1))])
            changed = int(np.count_nonzero(images[0] != image))
            outcome = "painted" if changed else "unchanged"
            data[image_key] = _like(data[image_key], images[0][None])
            data[label_key] = _like(data[label_key], labels[0][None])
        self._count(outcome)
        if isinstance(data[image_key], MetaTensor) and get_track_meta():
            data[image_key] = self.push_transform(
                data[image_key], extra_info={"outcome": outcome, "changed_voxels": changed}
            )
        return data

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Removes this transform's record from the image's applied operations; the image keeps its tumour."""
        data = dict(data)
        image_key = self.keys[0]
        if isinstance(data[image_key], MetaTensor) and get_track_meta():
            self.pop_transform(data[image_key])
        return data

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        with_organ = sum(count for name, count in self.outcomes.items() if name != "no_organ")
        unexpected = self.outcomes["has_tumor"] + self.outcomes["unchanged"]
        if not self._warned and with_organ >= WARN_AFTER_CROPS and unexpected > with_organ / 2:
            self._warned = True
            logger.warning(
                "RandTumorSynthesisd skipped %d of %d crops with organ: %d already held tumor_label %s and %d were "
                "painted without changing a voxel; if label %s is not a tumour in your label maps, pass a "
                "tumor_label they do not use",
                unexpected,
                with_organ,
                self.outcomes["has_tumor"],
                self.core.tumor_label,
                self.outcomes["unchanged"],
                self.core.tumor_label,
            )


class TumorSynthesisOnBatch:
    """The same synthesis on a collated batch ``(B, 1, X, Y, Z)``: every selected crop goes to the synthesizer in
    as few calls as it allows. ``healthy`` marks which samples may receive tumours (default: label-based).

    With a ``bank`` (:class:`~difftumor.synthesis.bank.PaintedCropBank`), a selected crop is painted only with the
    bank's ``1 / reuse`` probability and otherwise replaced by a banked painted crop, so an expensive synthesizer
    costs ``1 / reuse`` of its price per step."""

    def __init__(self, bank: PaintedCropBank | None = None, **core_kwargs: Any):
        self.core = TumorSynthesisCore(**core_kwargs)
        self.bank = bank
        #: running totals since construction: crops seen, candidates (healthy, with organ), crops given tumours,
        #: crops painted by the synthesizer (the rest of those given tumours came from the bank)
        self.seen = self.candidates = self.synthesised = self.painted = 0

    @property
    def effective_rate(self) -> float:
        """Synthesised ÷ candidate crops so far (the original's 0.5 is this rate)."""
        return self.synthesised / max(self.candidates, 1)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int], healthy: Sequence[bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        image_array, label_array = images.cpu().numpy(), labels.cpu().numpy()
        chosen, plans, banked = [], [], []
        self.seen += len(seeds)
        for index, seed in enumerate(seeds):
            if healthy is not None and not healthy[index]:
                continue
            if not self.core.candidate(label_array[index, 0]):
                continue
            self.candidates += 1
            rng = np.random.default_rng([int(seed), 3])
            if not self.core.drawn(rng):
                continue
            # A banked crop needs no placement (drawing tumour shapes is most of a handcrafted synthesis's cost).
            if self.bank is not None and not self.bank.wants_fresh(np.random.default_rng([int(seed), 4])):
                banked.append(index)
                continue
            plan = self.core.place(label_array[index, 0], rng)[0]
            if plan is not None:
                chosen.append(index)
                plans.append(plan)
        self.synthesised += len(chosen) + len(banked)
        self.painted += len(chosen)
        if not chosen and not banked:
            return images, labels, 0
        images, labels = images.clone(), labels.clone()
        for index in banked:
            image, label = self.bank.draw(np.random.default_rng([int(seeds[index]), 5]))
            images[index, 0] = torch.from_numpy(image).to(images)
            labels[index, 0] = torch.from_numpy(label).to(labels)
        if chosen:
            painted, relabelled = self.core.paint(
                [image_array[i, 0] for i in chosen],
                [label_array[i, 0] for i in chosen],
                plans,
                [int(seeds[i]) for i in chosen],
            )
            for position, index in enumerate(chosen):
                images[index, 0] = torch.from_numpy(painted[position]).to(images)
                labels[index, 0] = torch.from_numpy(relabelled[position]).to(labels)
                if self.bank is not None:
                    rng = np.random.default_rng([int(seeds[index]), 6])
                    self.bank.add(painted[position], relabelled[position], rng)
        return images, labels, len(chosen) + len(banked)


def _check_grid(image: Any, tolerance_mm: float = 0.05) -> None:
    """Refuse a ``MetaTensor`` crop whose voxels are not 1 mm: tumour sizes are drawn in voxels of a 1 mm grid, so a
    3 mm grid would get tumours three times too large."""
    if not isinstance(image, MetaTensor):
        return
    spacing = [float(v) for v in image.pixdim]
    if any(abs(v - 1.0) > tolerance_mm for v in spacing):
        raise DiffTumorInputError(
            f"the image crop has {' x '.join(f'{v:.3g}' for v in spacing)} mm voxels; tumours are sized on a 1 mm grid",
            "put Spacingd(keys, pixdim=1.0) before RandTumorSynthesisd",
        )


def _like(reference: Any, array: np.ndarray) -> Any:
    """``array`` in the type of ``reference``: a MONAI ``MetaTensor`` keeps its affine, metadata and applied
    operations (a painted crop is the same crop, so downstream inverses and savers still know where it lies)."""
    if isinstance(reference, torch.Tensor):
        tensor = torch.as_tensor(array, dtype=reference.dtype, device=reference.device)
        if isinstance(reference, MetaTensor):
            result = reference.clone()
            result.set_array(tensor)
            return result
        return tensor
    return array.astype(np.asarray(reference).dtype)
