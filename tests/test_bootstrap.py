import numpy as np
import pytest

from mpo_lib.bootstrap import mean_ci


def test_interval_of_a_normal_mean_has_the_textbook_width():
    values = np.random.default_rng(7).normal(loc=1.0, scale=2.0, size=2000)
    mean, low, high = mean_ci(values, n_resamples=4999, seed=0)
    assert mean == pytest.approx(values.mean()) and low < 1.0 < high and low < mean < high
    assert high - low == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(2000), rel=0.15)


def test_interval_is_reproducible_and_narrows_with_confidence():
    values = np.random.default_rng(1).integers(0, 2, size=200).astype(float)  # win indicators
    assert mean_ci(values, seed=3) == mean_ci(values, seed=3)
    _, low_90, high_90 = mean_ci(values, confidence=0.90)
    _, low_99, high_99 = mean_ci(values, confidence=0.99)
    assert low_99 < low_90 < high_90 < high_99 and 0 <= low_99 and high_99 <= 1


def test_degenerate_inputs():
    assert mean_ci([0.5] * 10) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci([1.0])
