"""A machine reader: can a classifier tell synthetic lesions from real ones? (a classifier two-sample test)

If two groups of lesions look alike, no classifier does better than chance at telling them apart; the better one
does, the more they differ. The reader sees each lesion on the 1 mm grid of :mod:`difftumor.evaluation.realism`,
in units of its own organ's noise — ``z = (HU − organ core mean) / organ core std`` — so that the contrast phase of
the scan (absolute HU) cannot give the answer, and summarised by :data:`READER_FEATURES`:

- the intensity profile across the lesion's boundary: mean and standard deviation of ``z`` in bands of signed
  distance to the boundary (inside: > 4, 2–4, 0–2 mm; outside, organ only: 0–2, 2–4, 4–6, 6–10 mm);
- the gradient magnitude (``z``/mm) inside, on the boundary shell and in the 2–5 mm ring;
- fine texture: the Laplacian-of-Gaussian (σ = 1 mm) spread inside and in the ring, and the autocorrelation of the
  high-pass residual inside at lags 1, 2 and 4 mm;
- the shape of the intensity histogram inside: q10 and q90 about the mean, skewness;
- the decoder's stride lattice energy (the realism ``stride_artifact``).

The lesion's size and shape are *not* features (a size-only reader is reported beside, so that a difference in
size distributions is visible for what it is). The classifier is a ridge-regularised linear discriminant on the
standardised features (missing values — bands a tiny lesion does not have — imputed with the training fold's
median). Its AUC is the mean, over repeated stratified 5-fold cross-validations, of the ROC AUC within each held-out
fold (pooling the folds' scores biases the AUC of two identical groups below 0.5; see
:func:`cross_validated_auc`); the 95 % interval is a percentile bootstrap over lesions resampled within each group,
and a permutation test of the group labels gives a p-value. AUC ≈ 0.5: indistinguishable to this reader; → 1: told
apart. A reader that finds no difference is evidence of likeness only as far as its features reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, stats

INSIDE_BANDS_MM = ((4.0, np.inf), (2.0, 4.0), (0.0, 2.0))
OUTSIDE_BANDS_MM = ((0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 10.0))
READER_FEATURES = (
    *(f"z_mean_in_{lo:g}-{hi:g}mm" for lo, hi in INSIDE_BANDS_MM),
    *(f"z_std_in_{lo:g}-{hi:g}mm" for lo, hi in INSIDE_BANDS_MM),
    *(f"z_mean_out_{lo:g}-{hi:g}mm" for lo, hi in OUTSIDE_BANDS_MM),
    *(f"z_std_out_{lo:g}-{hi:g}mm" for lo, hi in OUTSIDE_BANDS_MM),
    "gradient_inside",
    "gradient_shell",
    "gradient_ring",
    "log_std_inside",
    "log_std_ring",
    "autocorrelation_1mm",
    "autocorrelation_2mm",
    "autocorrelation_4mm",
    "q10_about_mean",
    "q90_about_mean",
    "skewness",
    "stride_artifact",
)
#: Fewest lesions per group for a reader's AUC (below it the interval spans most of [0, 1]).
MIN_LESIONS = 8
FOLDS = 5
REPEATS = 10
BOOTSTRAP = 200
BOOTSTRAP_REPEATS = 2
PERMUTATIONS = 200
L2 = 0.1


def _band_stats(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    if mask.sum() < 3:
        return float("nan"), float("nan")
    selected = values[mask]
    return float(selected.mean()), float(selected.std())


def _autocorrelation(residual: np.ndarray, region: np.ndarray, lag: int) -> float:
    """Mean over the three axes of the correlation of the residual with itself ``lag`` voxels further, inside
    ``region``."""
    values = []
    for axis in range(3):
        index = [slice(None)] * 3
        shifted = [slice(None)] * 3
        index[axis], shifted[axis] = slice(0, -lag), slice(lag, None)
        both = region[tuple(index)] & region[tuple(shifted)]
        if both.sum() < 8:
            continue
        a, b = residual[tuple(index)][both], residual[tuple(shifted)][both]
        if a.std() > 0 and b.std() > 0:
            values.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(values)) if values else float("nan")


def reader_features(
    hu: np.ndarray,
    organ: np.ndarray,
    lesion: np.ndarray,
    others: np.ndarray,
    core_mean: float,
    core_std: float,
    stride_artifact: float,
) -> np.ndarray:
    """The reader's view of one lesion (:data:`READER_FEATURES`), from 1 mm arrays of its neighbourhood: ``hu``,
    the organ, the lesion and other lesions (bool), and the organ core's mean and std (HU)."""
    z = (hu.astype(np.float64) - core_mean) / core_std if core_std > 0 else np.full(hu.shape, np.nan)
    inside = ndimage.distance_transform_edt(lesion)
    outside = ndimage.distance_transform_edt(~lesion)
    clear = organ & ~others & ~lesion
    means, stds = [], []
    for low, high in INSIDE_BANDS_MM:
        m, s = _band_stats(z, lesion & (inside > low) & (inside <= high))
        means.append(m)
        stds.append(s)
    out_means, out_stds = [], []
    for low, high in OUTSIDE_BANDS_MM:
        m, s = _band_stats(z, clear & (outside > low) & (outside <= high))
        out_means.append(m)
        out_stds.append(s)
    gradient = np.sqrt(sum(g**2 for g in np.gradient(z)))
    shell = lesion & ~ndimage.binary_erosion(lesion, np.ones((3, 3, 3)))
    ring = clear & (outside > 2) & (outside <= 5)
    laplacian = ndimage.gaussian_laplace(z, 1.0)
    residual = z - ndimage.uniform_filter(z, 3, mode="nearest")
    values = z[lesion]
    centred = values - values.mean()
    q10, q90 = np.percentile(centred, [10, 90]) if values.size >= 3 else (np.nan, np.nan)
    return np.asarray(
        [
            *means,
            *stds,
            *out_means,
            *out_stds,
            _band_stats(gradient, lesion)[0],
            _band_stats(gradient, shell)[0],
            _band_stats(gradient, ring)[0],
            _band_stats(laplacian, lesion)[1],
            _band_stats(laplacian, ring)[1],
            _autocorrelation(residual, lesion, 1),
            _autocorrelation(residual, lesion, 2),
            _autocorrelation(residual, lesion, 4),
            q10,
            q90,
            float(stats.skew(values)) if values.size >= 3 and values.std() > 0 else np.nan,
            stride_artifact,
        ],
        dtype=np.float64,
    )


# -- the classifier --------------------------------------------------------------------------------------------


def _fit_ridge(features: np.ndarray, labels: np.ndarray, l2: float = L2) -> np.ndarray:
    """Weights (intercept last) of a ridge-regularised linear discriminant: least squares onto labels ±1 with an L2
    penalty on the (standardised) feature weights — closed form, so the thousands of fits of the cross-validation,
    bootstrap and permutation test take seconds."""
    target = labels * 2.0 - 1.0
    centre = target.mean()
    gram = features.T @ features + l2 * len(features) * np.eye(features.shape[1])
    weights = np.linalg.solve(gram, features.T @ (target - centre))
    return np.append(weights, centre)


def _fold_scores(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Scores of ``test`` from a reader fitted on ``train`` (imputation and standardisation from ``train`` only)."""
    fitted = features[train]
    seen = np.isfinite(fitted).any(0)
    median = np.zeros(features.shape[1])
    median[seen] = np.nanmedian(fitted[:, seen], axis=0)
    fill = lambda x: np.where(np.isfinite(x), x, median)  # noqa: E731
    fitted, tested = fill(fitted), fill(features[test])
    centre, scale = fitted.mean(0), fitted.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    weights = _fit_ridge((fitted - centre) / scale, labels[train])
    return np.hstack([(tested - centre) / scale, np.ones((len(test), 1))]) @ weights


def _stratified_folds(labels: np.ndarray, groups: np.ndarray, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sample indices in ``folds`` parts, each class dealt out evenly; samples of one group (copies of one lesion in
    a bootstrap sample) stay in one part."""
    parts: list[list[int]] = [[] for _ in range(folds)]
    for value in (0, 1):
        members = np.unique(groups[labels == value])
        for position, group in enumerate(rng.permutation(members)):
            parts[position % folds].extend(np.flatnonzero(groups == group).tolist())
    return [np.asarray(part, dtype=np.int64) for part in parts]


def _fold_plan(labels: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, int]:
    """The groups (one per sample when none are given) and the number of folds: ``FOLDS``, or fewer when a class has
    fewer groups, at least 2."""
    groups = np.arange(len(labels)) if groups is None else groups
    return groups, max(2, min(FOLDS, len(np.unique(groups[labels == 0])), len(np.unique(groups[labels == 1]))))


def cross_validated_auc(
    features: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    repeats: int = REPEATS,
    groups: np.ndarray | None = None,
) -> float:
    """The reader's AUC: the mean over ``repeats`` stratified ``FOLDS``-fold cross-validations of the AUC within each
    held-out fold.

    Within a fold the classifier is a function of the other folds only, so under the null (both groups drawn from
    one distribution) its held-out AUC is 0.5 on average. Pooling the scores of all folds into one AUC is not: each
    fold's classifier leans away from the lesions it did not see, which pulls a pooled AUC of two identical groups
    well below 0.5 (0.32 for LiTS's real lesions split in two).
    """
    groups, folds = _fold_plan(labels, groups)
    values = []
    for _ in range(repeats):
        for part in _stratified_folds(labels, groups, folds, rng):
            train = np.setdiff1d(np.arange(len(labels)), part)
            if len(np.unique(labels[part])) == 2 and len(np.unique(labels[train])) == 2:
                values.append(roc_auc(_fold_scores(features, labels, train, part), labels[part]))
    return float(np.mean(values)) if values else float("nan")


def out_of_fold_scores(
    features: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    repeats: int = REPEATS,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Each sample's score (> 0 leans towards label 1) from readers that did not see it (nor, with ``groups``, any
    sample of its group): the mean over ``repeats`` stratified ``FOLDS``-fold partitions of the held-out fold's
    score. For a verdict per sample; the reader's AUC is :func:`cross_validated_auc`'s."""
    features = features[:, np.isfinite(features).any(0)]
    groups, folds = _fold_plan(labels, groups)
    totals = np.zeros(len(labels))
    for _ in range(repeats):
        for part in _stratified_folds(labels, groups, folds, rng):
            train = np.setdiff1d(np.arange(len(labels)), part)
            totals[part] += _fold_scores(features, labels, train, part)
    return totals / repeats


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a positive scores above a negative (ties count ½)."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    ranks = stats.rankdata(np.concatenate([positive, negative]))
    pairs = positive.size * negative.size
    return float((ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2) / pairs)


def _bootstrap_interval(features: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile interval of the reader's AUC over lesions resampled within each group (copies of a lesion
    kept in one fold)."""
    positive, negative = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    values = []
    for _ in range(BOOTSTRAP):
        chosen = np.concatenate([rng.choice(negative, negative.size), rng.choice(positive, positive.size)])
        values.append(cross_validated_auc(features[chosen], labels[chosen], rng, BOOTSTRAP_REPEATS, chosen))
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class ReaderResult:
    """One machine reader's verdict: synthetic (label 1) against real (label 0)."""

    group: str
    n_real: int
    n_synthetic: int
    auc: float
    interval: tuple[float, float]
    permutation_p: float
    size_only_auc: float
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "n_real": self.n_real,
            "n_synthetic": self.n_synthetic,
            "auc": self.auc,
            "auc_95ci": list(self.interval),
            "permutation_p": self.permutation_p,
            "size_only_auc": self.size_only_auc,
            "note": self.note,
        }


def machine_reader(
    real: Sequence[np.ndarray],
    synthetic: Sequence[np.ndarray],
    group: str = "synthetic",
    real_sizes: Sequence[float] | None = None,
    synthetic_sizes: Sequence[float] | None = None,
    seed: int = 0,
    permutations: int = PERMUTATIONS,
) -> ReaderResult:
    """Cross-validated AUC of a reader telling ``synthetic`` feature vectors (:func:`reader_features`) from ``real``
    ones, its 95 % bootstrap interval, a permutation p-value (H0: the groups are exchangeable) and the AUC of the same
    reader given only the lesions' diameters (when given)."""
    rng = np.random.default_rng(seed)
    n_real, n_synthetic = len(real), len(synthetic)
    if min(n_real, n_synthetic) < MIN_LESIONS:
        nan = float("nan")
        return ReaderResult(
            group, n_real, n_synthetic, nan, (nan, nan), nan, nan, f"fewer than {MIN_LESIONS} lesions in a group"
        )
    features = np.vstack([np.asarray(real), np.asarray(synthetic)])
    labels = np.concatenate([np.zeros(n_real), np.ones(n_synthetic)])
    usable = np.isfinite(features).any(0)
    features = features[:, usable]
    auc = cross_validated_auc(features, labels, rng)
    interval = _bootstrap_interval(features, labels, rng)
    null = [cross_validated_auc(features, rng.permutation(labels), rng, 1) for _ in range(permutations)]
    # Two-sided against chance: a reader whose AUC is far below 0.5 has also told the groups apart.
    extreme = sum(abs(value - 0.5) >= abs(auc - 0.5) for value in null)
    permutation_p = (extreme + 1) / (permutations + 1)
    size_auc = float("nan")
    if real_sizes is not None and synthetic_sizes is not None:
        sizes = np.concatenate([np.asarray(real_sizes), np.asarray(synthetic_sizes)])[:, None]
        size_auc = cross_validated_auc(np.log(sizes), labels, rng)
    return ReaderResult(group, n_real, n_synthetic, auc, interval, permutation_p, size_auc)


def reader_markdown(results: Sequence[ReaderResult]) -> str:
    """The readers' verdicts as a Markdown table."""
    lines = [
        "| synthetic group | real lesions | synthetic lesions | reader AUC [95 % CI] | permutation p | size-only AUC |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if not np.isfinite(r.auc):
            lines.append(f"| {r.group} | {r.n_real} | {r.n_synthetic} | – ({r.note}) | – | – |")
            continue
        lines.append(
            f"| {r.group} | {r.n_real} | {r.n_synthetic} | {r.auc:.2f} [{r.interval[0]:.2f}–{r.interval[1]:.2f}] | "
            f"{r.permutation_p:.3f} | {r.size_only_auc:.2f} |"
        )
    lines += [
        "",
        "Machine reader: a ridge linear classifier on each lesion's boundary profile, gradients, fine texture and "
        "intensity histogram in units of its organ's noise (no absolute HU, no size or shape); out-of-fold AUC of "
        f"{FOLDS}-fold cross-validation × {REPEATS}, 95 % bootstrap interval over lesions; 0.5 = indistinguishable "
        "to this reader, 1 = told apart. Size-only: the same classifier given only each lesion's diameter.",
    ]
    return "\n".join(lines)
