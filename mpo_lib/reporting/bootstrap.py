"""Bootstrap confidence intervals for the kit's per-example means (rewards, win indicators), and
for the paired difference between two policies on the same prompts, so that a table reports how
far a difference between policies can be trusted."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import bootstrap


def mean_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 9999,
            seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the BCa interval (scipy's default), which corrects the percentile
    interval for the bias and skew of the resampled means, as 0/1 win indicators and rewards near
    a bound have. Constant values give (v, v, v), where BCa itself is undefined."""
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or len(data) < 2:
        raise ValueError(f"mean_ci needs a flat sequence of at least 2 values, got shape {data.shape}")
    mean = float(data.mean())
    if np.all(data == data[0]):
        return mean, mean, mean
    return mean, *bca_interval((data,), np.mean, confidence, n_resamples, seed)


def bca_interval(samples: tuple[np.ndarray, ...], statistic, confidence: float, n_resamples: int,
                 seed: int, **options) -> tuple[float, float]:
    """scipy's BCa interval of statistic over the samples (all of one length), resampled by row."""
    result = bootstrap(samples, statistic, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                       batch=max(1, 2_000_000 // len(samples[0])),  # <= 16 MB of resamples at once: a shared box
                       rng=np.random.default_rng(seed), **options)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, n_resamples: int = 9999,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean of a_i - b_i, low, high): the BCa interval of the mean per-prompt difference, resampling
    prompts jointly (a prompt's two answers stay together). Two policies' rewards on one prompt are
    strongly correlated, so their marginal intervals can overlap while the paired one excludes 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs one value of each policy per prompt, got {a.shape} and {b.shape}")
    return mean_ci(a - b, confidence, n_resamples, seed)


def equal_length_difference(differences: np.ndarray, length_differences: np.ndarray, axis: int = -1) -> np.ndarray:
    """The intercept alpha of the least-squares line d_i = alpha + beta·Δℓ_i: the reward difference two answers of equal
    length would have. Where Δℓ does not vary there is nothing to adjust for, and it is the mean of d."""
    d_mean, l_mean = differences.mean(axis, keepdims=True), length_differences.mean(axis, keepdims=True)
    spread = ((length_differences - l_mean) ** 2).sum(axis, keepdims=True)
    slope = np.divide(((differences - d_mean) * (length_differences - l_mean)).sum(axis, keepdims=True), spread,
                      out=np.zeros_like(spread), where=spread > 0)
    return (d_mean - slope * l_mean).squeeze(axis)


def equal_length_difference_ci(a: Sequence[float], b: Sequence[float], length_a: Sequence[float],
                               length_b: Sequence[float], confidence: float = 0.95, n_resamples: int = 9999,
                               seed: int = 0) -> tuple[float, float, float]:
    """(alpha, low, high): equal_length_difference of the per-prompt reward differences a_i - b_i against the answers'
    length differences, with a BCa interval resampling prompts jointly. A reward model that prefers longer (or
    shorter) answers moves the plain paired difference of two policies whose answers differ in length; alpha is the
    part of it that length does not explain, under a linear length effect."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    dl = np.asarray(length_a, dtype=float) - np.asarray(length_b, dtype=float)
    if d.shape != dl.shape or d.ndim != 1 or len(d) < 3:
        raise ValueError(f"an equal-length difference needs a reward and a length per answer for 3 or more prompts, "
                         f"got {d.shape} rewards and {dl.shape} lengths")
    alpha = float(equal_length_difference(d, dl))
    if np.all(d == d[0]):
        return alpha, alpha, alpha
    return alpha, *bca_interval((d, dl), equal_length_difference, confidence, n_resamples, seed, paired=True,
                                vectorized=True)
