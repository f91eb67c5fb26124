import numpy as np
import pytest

from mpo_lib.reporting.bootstrap import equal_length_difference_ci, mean_ci, paired_difference_ci


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
    assert low_99 < low_90 < high_90 < high_99 and low_99 >= 0 and high_99 <= 1


def test_degenerate_inputs():
    assert mean_ci([0.5] * 10) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci([1.0])


def test_paired_interval_excludes_zero_where_the_marginal_intervals_overlap():
    """Prompts vary far more than the policies do: b is a plus a small gain on every prompt, so the
    two marginal intervals overlap, while the paired one (prompts resampled jointly) excludes 0."""
    rng = np.random.default_rng(5)
    baseline = rng.normal(0.0, 1.0, size=100)
    policy = baseline + 0.1 + rng.normal(0.0, 0.05, size=100)
    _, policy_low, _ = mean_ci(policy, seed=0)
    _, _, baseline_high = mean_ci(baseline, seed=0)
    assert policy_low < baseline_high  # the marginal intervals overlap
    mean, low, high = paired_difference_ci(policy, baseline, seed=0)
    assert mean == pytest.approx(np.mean(policy - baseline)) and 0 < low < mean < high


def test_paired_difference_of_a_hand_computed_case():
    # differences 1, -1, 2, 0: mean 0.5; the interval lies within the differences' range and holds the mean
    mean, low, high = paired_difference_ci([3.0, 1.0, 4.0, 2.0], [2.0, 2.0, 2.0, 2.0], seed=0)
    assert mean == 0.5 and -1.0 <= low < 0.5 < high <= 2.0
    with pytest.raises(ValueError, match="one value of each policy per prompt"):
        paired_difference_ci([1.0, 2.0, 3.0], [1.0, 2.0])


def test_equal_length_difference_takes_out_a_linear_length_preference():
    """An RM that takes 0.02 off per word: the policy answers 8 words longer on average and gains 0.2 at equal
    length, so its plain paired difference is about 0.2 - 0.16; the intercept of d_i = alpha + beta * Δwords_i is 0.2."""
    rng = np.random.default_rng(3)
    baseline_words = rng.integers(5, 40, size=96)
    policy_words = baseline_words + rng.integers(0, 17, size=96)
    baseline = rng.normal(0.0, 1.0, size=96)
    policy = baseline + 0.2 - 0.02 * (policy_words - baseline_words) + rng.normal(0.0, 0.05, size=96)
    _, _, plain_high = paired_difference_ci(policy, baseline, seed=0)
    alpha, low, high = equal_length_difference_ci(policy, baseline, policy_words, baseline_words, seed=0)
    d, dl = policy - baseline, (policy_words - baseline_words).astype(float)
    assert alpha == pytest.approx(np.polyfit(dl, d, 1)[1])  # the least-squares intercept
    assert low < 0.2 < high and plain_high < low  # the plain difference understates it


def test_equal_length_difference_is_the_plain_one_when_lengths_differ_alike():
    policy, baseline = [0.5, 0.1, 0.9, 0.3], [0.2, 0.0, 0.4, 0.1]
    assert equal_length_difference_ci(policy, baseline, [10] * 4, [7] * 4, n_resamples=999)[0] == pytest.approx(0.275)
    with pytest.raises(ValueError, match="a reward and a length per answer"):
        equal_length_difference_ci(policy, baseline, [10] * 3, [7] * 3)
