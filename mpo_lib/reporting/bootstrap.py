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
    result = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                       batch=max(1, 2_000_000 // len(data)),  # <= 16 MB of resamples at once: a shared box
                       rng=np.random.default_rng(seed))
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, n_resamples: int = 9999,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean of a_i - b_i, low, high): the BCa interval of the mean per-prompt difference, resampling
    prompts jointly (a prompt's two answers stay together). Two policies' rewards on one prompt are
    strongly correlated, so their marginal intervals can overlap while the paired one excludes 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs one value of each policy per prompt, got {a.shape} and {b.shape}")
    return mean_ci(a - b, confidence, n_resamples, seed)
