"""Bootstrap confidence intervals for the kit's per-example means (rewards, win indicators),
so that a table reports how far a difference between policies can be trusted."""
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
