"""The worst-case-over-learning-rates test: its bounds, its p-value and its error rate."""

import numpy as np
import pytest
from scipy import stats as sps

from pairedstats import worstcase


def _t_bound(v, q, upper):
    v = np.asarray(v, float)
    half = sps.t.isf(q, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return v.mean() + half if upper else v.mean() - half


def test_interval_is_the_bonferroni_t_bounds_of_each_learning_rate():
    rng = np.random.default_rng(0)
    a = rng.normal([[0.9], [0.8], [0.6]], 0.05, (3, 6))
    b = rng.normal([[0.95], [0.5], [0.7]], 0.05, (3, 6))
    b[2, 4:] = np.nan  # a learning rate with fewer seeds
    q = 0.05 / (4 * 3)
    low = min(_t_bound(x, q, False) for x in a) - min(_t_bound(x[~np.isnan(x)], q, True) for x in b)
    high = min(_t_bound(x, q, True) for x in a) - min(
        _t_bound(x[~np.isnan(x)], q, False) for x in b
    )
    got = worstcase.worst_case_interval(a, b, 0.05)
    assert got[0] == pytest.approx(low) and got[1] == pytest.approx(high)


def test_pvalue_is_where_the_interval_starts_to_exclude_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(0.8, 0.05, (2, 5))
    b = rng.normal([[0.75], [0.9]], 0.05, (2, 5))
    p = float(worstcase.worst_case_pvalue(a, b))
    assert 0 < p < 1
    just_in, _ = worstcase.worst_case_interval(a, b, p * 1.001)
    just_out, _ = worstcase.worst_case_interval(a, b, p * 0.999)
    high_in = worstcase.worst_case_interval(a, b, p * 1.001)[1]
    assert (just_in > 0) or (high_in < 0)  # excludes 0 at a slightly larger alpha
    assert just_out <= 0 <= worstcase.worst_case_interval(a, b, p * 0.999)[1]


def test_too_few_seeds_is_undefined_and_shapes_must_match():
    a = np.array([[0.5, 0.6], [0.7, np.nan]])
    assert np.isnan(worstcase.worst_case_pvalue(a, a))
    with pytest.raises(ValueError, match="equal"):
        worstcase.worst_case_pvalue(np.zeros((2, 3)), np.zeros((3, 3)))


def test_false_verdicts_stay_under_alpha_at_the_least_favourable_null():
    """Equal worst cases, all learning rates at the worst (the least favourable null for a
    Bonferroni minimum), skewed values, 5 seeds: the rate stays at or under 0.05."""
    rng = np.random.default_rng(2)
    studies, L, n = 4000, 3, 5
    a = rng.lognormal(0.0, 0.6, (studies, L, n))
    b = rng.lognormal(0.0, 0.6, (studies, L, n))
    rate = np.mean(worstcase.worst_case_pvalue(a, b) < 0.05)
    assert rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / studies)
