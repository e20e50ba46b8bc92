"""The vectorised decision rules against the libraries' one-study versions, and the small
pieces around them (Holm's first step, best of k, keyed streams, P(A>B)'s interval)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.weightstats import ttost_paired

from dashboards import tuning
from pairedstats import bestof, effects, multiplicity, streams
from pairedstats import tests as pt


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_test_is_scipy_binomtest(alternative):
    for k, m in itertools.product(range(0, 13), range(1, 13)):
        if k > m:
            continue
        want = sps.binomtest(k, m, 0.5, alternative=alternative).pvalue
        got = pt.sign_pvalue(np.array(k), np.array(m - k), alternative=alternative)
        assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-15), (k, m)
    assert float(pt.sign_pvalue(np.array(0), np.array(0))) == 1.0  # every pair tied


def test_mcnemar_is_statsmodels_exact(rng):
    a = rng.random((200, 9)) < 0.5
    b = rng.random((200, 9)) < 0.4
    got = pt.mcnemar_pvalue(a, b)
    for i in range(0, 200, 17):
        table = [[np.sum(a[i] & b[i]), np.sum(a[i] & ~b[i])],
                 [np.sum(~a[i] & b[i]), np.sum(~a[i] & ~b[i])]]  # fmt: skip
        assert got[i] == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)


def test_mean_and_tost_are_scipy_and_statsmodels(rng):
    d = rng.normal(0.1, 1.0, (50, 7))
    np.testing.assert_allclose(pt.mean_pvalue(d), sps.ttest_1samp(d, 0, axis=-1).pvalue)
    a = rng.normal(0.5, 0.1, (30, 8))
    b = a - rng.normal(0.01, 0.05, (30, 8))
    got = pt.tost_pvalue(a - b, -0.05, 0.05)
    for i in range(30):
        assert got[i] == pytest.approx(ttost_paired(a[i], b[i], -0.05, 0.05)[0], rel=1e-9)
    x, y = rng.normal(size=(2, 6)), rng.normal(size=(2, 9))
    want = sps.ttest_ind(x, y, axis=-1, equal_var=False).pvalue
    np.testing.assert_allclose(pt.difference_pvalue(x, y, paired=False), want)


def test_mean_test_of_constant_differences():
    d = np.array([[0.1, 0.1, 0.1], [0.0, 0.0, 0.0], [-0.2, -0.2, -0.2]])
    np.testing.assert_array_equal(pt.mean_pvalue(d), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(pt.mean_pvalue(d, alternative="greater"), [0.0, 1.0, 1.0])
    assert np.isnan(pt.mean_pvalue(np.ones((1, 1)))).all()


def test_spread_randomisation_is_exact_and_finds_a_wider_arm(rng):
    a = rng.normal(size=(4000, 6))
    b = rng.normal(size=(4000, 6))
    p = pt.spread_pvalue(a, b)
    # exact under exchangeable arms: P(p <= 2/64 * j) <= 2/64 * j at the attainable levels
    for level in (4 / 64, 8 / 64, 16 / 64):
        assert np.mean(p <= level) <= level + 3 * math.sqrt(level / 4000)
    wide = pt.spread_pvalue(rng.normal(0, 0.1, (200, 10)), rng.normal(0, 3.0, (200, 10)))
    assert np.mean(wide < 0.05) > 0.9
    assert np.isnan(pt.spread_pvalue(a[:, :2], b[:, :2])).all()


def test_time_to_threshold_restricts_and_says_when_it_cannot_measure():
    t = np.array([3.0, 12.0, 5.0, 20.0])
    e = np.array([True, False, True, True])
    np.testing.assert_array_equal(pt.restricted_times(t, e, 10), [3, 10, 5, 10])
    assert pt.measurable(e[None], ~e[None])[0]
    none = np.zeros((1, 4), bool)
    few = np.array([[True, False, False, False]])
    assert not pt.measurable(few, none)[0]
    assert np.isnan(pt.time_pvalue(t[None], few, t[None], none, 10)).all()


def test_holm_rejects_anything_iff_the_smallest_p_is_below_alpha_over_m(rng):
    # statsmodels' multipletests takes about 0.5 s a call here: the cases that matter are
    # the smallest p just either side of alpha / m, plus a few random families
    cases = [rng.random(12) ** 3 for _ in range(4)]
    for smallest in (0.05 / 12 * 0.999, 0.05 / 12 * 1.001, 0.001, 0.2):
        p = rng.uniform(smallest, 1.0, 12)
        p[rng.integers(12)] = smallest
        cases.append(p)
    for p in cases:
        assert (multiplicity.adjust(p, "holm").min() < 0.05) == (p.min() < 0.05 / 12)


def test_expected_best_of_k_is_the_order_statistic_formula(rng):
    x = rng.normal(size=5)
    # k <= n: the mean best over every k-subset of the runs (the unbiased U-statistic)
    for k in (1, 3, 5):
        subsets = np.array(list(itertools.combinations(x, k)))
        assert bestof.expected_max(x, k) == pytest.approx(subsets.max(axis=1).mean(), rel=1e-12)
    # k > n: no subset exists; the plug-in over k draws with replacement
    draws = np.array(list(itertools.product(x, repeat=6)))
    assert bestof.expected_max(x, 6) == pytest.approx(draws.max(axis=1).mean(), rel=1e-12)
    # the report's best-of-k and the expected-max curve are one computation
    curve = [bestof.expected_max(x, k) for k in range(1, 6)]
    assert tuning.expected_max(x).mean == pytest.approx(curve, rel=1e-12)
    b = bestof.best_of(x, 5, np.random.default_rng(0))
    assert b.low <= b.value <= b.high <= x.max() and b.value > x.mean()
    assert math.isnan(bestof.best_of(x[:1], 5, rng).low)
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        bestof.best_of(x, 0, rng)


def test_streams_are_keyed_by_the_quantity():
    a = streams.keyed_rng(0, "C2", "h-detach", "best_val_acc").random(4)
    b = streams.keyed_rng(0, "C2", "h-detach", "best_val_acc").random(4)
    c = streams.keyed_rng(0, "C2", "vanilla", "best_val_acc").random(4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_prob_better_interval_is_clopper_pearson_with_ties_outward():
    assert effects.prob_better_interval(0, 6, 6) == (0.5, 0.0, 1.0)
    p, low, high = effects.prob_better_interval(7, 0, 8)
    assert p == 7 / 8 and low == pytest.approx(sps.beta.ppf(0.025, 7, 2))
    assert high == pytest.approx(sps.beta.ppf(0.975, 8, 1))
    assert low < 0.5  # 7 wins of 8: the exact sign test's p is 0.07, so 1/2 stays inside
    assert all(math.isnan(x) for x in effects.prob_better_interval(0, 0, 0))


def test_skewness_and_cochrans_rule():
    rng = np.random.default_rng(4)
    x = rng.lognormal(0, 1, (3, 12))
    np.testing.assert_allclose(pt.skewness(x), sps.skew(x, axis=-1, bias=False))
    assert np.isnan(pt.skewness(np.ones((1, 5)))).all()  # no spread
    assert np.isnan(pt.skewness(x[:, :2])).all()  # under 3 values
    g = pt.skewness(x)
    np.testing.assert_array_equal(pt.skew_needed(x), np.maximum(3, np.ceil(25 * g * g)))
    np.testing.assert_array_equal(pt.skew_ok(x), 12 >= np.ceil(25 * g * g))
    assert not pt.skew_ok(np.ones(6))
