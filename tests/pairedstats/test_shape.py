"""The shape gate (pairedstats/shape.py): its factor, the pooled skewness, and that it keeps a
one-sided t statement's level on skewed differences where the bare t-test does not."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from pairedstats import shape
from pairedstats import tests as pt


def test_factor_is_the_one_sided_edgeworth_term_at_cochrans_tolerance():
    z = sps.norm.ppf(0.975)
    assert shape.K == pytest.approx(((2 * z * z + 1) * sps.norm.pdf(z) / 0.06) ** 2)
    assert 71 < shape.K < 72
    # Cochran's own two-sided rule (25 gamma^2) is the second-order term at the same tolerance;
    # a one-sided statement asks for more
    assert shape.factor(0.025) > 25


def test_pooled_skewness_of_one_group_is_the_sample_skewness():
    x = np.random.default_rng(1).lognormal(0, 1, 15)
    assert float(shape.pooled_skewness([x])) == pytest.approx(sps.skew(x, bias=False))
    assert float(shape.pooled_skewness(x[None, :])) == pytest.approx(sps.skew(x, bias=False))


def test_pooled_skewness_ignores_each_groups_location_and_agrees_in_both_forms():
    rng = np.random.default_rng(2)
    g = rng.gamma(2.0, 1.0, (6, 10))
    shifted = g + np.arange(6)[:, None] * 100.0  # each group on its own mean
    a = float(shape.pooled_skewness(g))
    assert float(shape.pooled_skewness(shifted)) == pytest.approx(a)
    assert float(shape.pooled_skewness(list(shifted))) == pytest.approx(a)
    # unequal group sizes: groups under 3 values are left out
    assert float(shape.pooled_skewness([*shifted, np.array([1e6, -1e6])])) == pytest.approx(a)


def test_pooled_skewness_estimates_the_true_skewness_from_a_pool_of_small_groups():
    # gamma(2): skewness 2/sqrt(2) = 1.41; 40 groups of 5 (one group's skewness cannot
    # exceed 1.34 at n = 5, so a mean of per-group skewnesses would fall short)
    rng = np.random.default_rng(3)
    est = shape.pooled_skewness(rng.gamma(2.0, 1.0, (400, 40, 5)))
    assert np.median(est) == pytest.approx(math.sqrt(2), abs=0.25)


def test_no_spread_or_no_group_of_three_leaves_the_skewness_undefined_and_the_gate_open():
    assert math.isnan(float(shape.pooled_skewness([np.zeros(5), np.ones(4)])))
    assert math.isnan(float(shape.pooled_skewness([np.arange(2.0)])))
    s = shape.Shape.of([np.zeros(5)])
    assert s.needed() is None and s.allows(3)


def test_pairs_needed_and_allows():
    assert shape.pairs_needed(np.array(0.0)) == 2
    assert shape.pairs_needed(np.array(1.0)) == math.ceil(shape.K)
    assert not shape.allows(10, np.array(0.5))  # needs 18
    assert shape.allows(18, np.array(0.5))
    s = shape.Shape.of([np.array([0.0, 0.0, 0.0, 0.0, 1.0])] * 3)
    assert s.needed() == math.ceil(shape.K * s.gamma**2) and not s.allows(15)
    assert "pooled over 15 paired differences in 3 comparisons" in s.words()


@pytest.mark.parametrize("groups", [1, 12])
def test_the_gate_keeps_the_one_sided_level_on_lognormal_differences(groups):
    """Lognormal differences with zero mean (skewness about 6): a one-sided t statement at
    0.025 errs 8-9% of the time at 10 pairs; behind the gate, at most its level (with the
    pool or without it)."""
    rng = np.random.default_rng(5)
    studies, n = 4000, 10
    d = rng.lognormal(0, 1, (studies, groups, n)) - math.exp(0.5)
    p = pt.mean_pvalue(-d[:, 0], alternative="greater")  # "better" from a lucky sample
    bare = p < 0.025
    gated = bare & shape.allows(n, shape.pooled_skewness(d))
    se = math.sqrt(0.025 * 0.975 / studies)
    assert bare.mean() > 0.025 + 3 * se  # the bare t-test is over: the gate has work to do
    assert gated.mean() <= 0.025 + 3 * se


def test_the_gate_leaves_normal_differences_mostly_alone_with_a_pool():
    rng = np.random.default_rng(6)
    gamma = shape.pooled_skewness(rng.normal(0, 1, (2000, 12, 10)))
    assert shape.allows(10, gamma).mean() > 0.8
