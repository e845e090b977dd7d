"""A bank of painted training crops, so that an expensive synthesizer is not paid on every training step.

Each crop chosen for synthesis is painted fresh with probability ``1 / reuse`` (always while the bank is filling) and
otherwise replaced by a crop drawn from the bank under a fresh random flip and 90° rotation. Fresh crops replace a
random entry, so the bank is refreshed throughout training; on average each painted crop is seen ``reuse`` times.
The bank is part of the training state (``state_dict``), so a resumed run continues from the same bank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import DiffTumorInputError


class PaintedCropBank:
    """Up to ``capacity`` painted ``(image, label)`` crops, each ``(X, Y, Z)``.

    Args:
        capacity: crops kept (memory: ``capacity × X·Y·Z × 5`` bytes: float32 image, uint8 label).
        reuse: expected uses of each painted crop (1 = no reuse: every chosen crop is painted).
    """

    def __init__(self, capacity: int, reuse: float) -> None:
        if capacity < 1:
            raise DiffTumorInputError(f"synthesis bank size {capacity} is below 1", "give e.g. 64, or 0 for no bank")
        if reuse < 1:
            raise DiffTumorInputError(f"synthesis bank reuse {reuse} is below 1", "give e.g. 8 (1 = paint every crop)")
        self.capacity, self.reuse = int(capacity), float(reuse)
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    def wants_fresh(self, rng: np.random.Generator) -> bool:
        """Whether the next chosen crop is painted (``True``) or drawn from the bank."""
        draw = rng.random()  # drawn every time, so the random stream does not depend on the bank's fill
        return len(self) < self.capacity or draw < 1.0 / self.reuse

    def add(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> None:
        """Keep a freshly painted crop (replacing a random entry once the bank is full)."""
        entry = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        labels = torch.from_numpy(np.ascontiguousarray(label).astype(np.uint8))
        if len(self) < self.capacity:
            self.images.append(entry)
            self.labels.append(labels)
        else:
            slot = int(rng.integers(self.capacity))
            self.images[slot], self.labels[slot] = entry, labels

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A banked crop under a random flip per axis and a random 90° rotation (in a plane whose sides are equal)."""
        slot = int(rng.integers(len(self)))
        image, label = self.images[slot].numpy(), self.labels[slot].numpy()
        flips = tuple(axis for axis in range(3) if rng.random() < 0.5)
        turns, plane = int(rng.integers(4)), [(0, 1), (0, 2), (1, 2)][int(rng.integers(3))]
        if flips:
            image, label = np.flip(image, flips), np.flip(label, flips)
        if image.shape[plane[0]] == image.shape[plane[1]]:
            image, label = np.rot90(image, turns, plane), np.rot90(label, turns, plane)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "reuse": self.reuse, "images": self.images, "labels": self.labels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity or float(state["reuse"]) != self.reuse:
            raise ValueError(
                f"the checkpoint's synthesis bank (size {state['capacity']}, reuse {state['reuse']}) is not this "
                f"run's (size {self.capacity}, reuse {self.reuse})"
            )
        self.images, self.labels = list(state["images"]), list(state["labels"])
