"""The training curves' smoothing is the exponential moving average it says it is."""
import pytest

from mpo_lib.reporting.figures import smoothed


def test_smoothing_is_a_bias_corrected_exponential_average():
    values = [1.0, 0.0, 0.0, 4.0]  # 4 points: half-life 1 step, so each step keeps weight 1/2
    by_hand = [1.0, 1 / 3, 1 / 7, (4 * 1 + 0 * 0.5 + 0 * 0.25 + 1 * 0.125) / (1 + 0.5 + 0.25 + 0.125)]
    assert smoothed(values).tolist() == pytest.approx(by_hand)
    assert smoothed([0.7] * 50).tolist() == pytest.approx([0.7] * 50)  # a flat curve stays flat
