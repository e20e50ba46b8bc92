"""Statistics against hand-computed values and against scipy/statsmodels."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint

from dashboards import power, stats, survival, tuning
from pairedstats.power import AGAINST, NO_EFFECT, TOO_FEW


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------- location, spread


def test_iqm_hand_computed():
    # 8 values: the 25% trimmed mean drops 2 from each end -> mean(2, 3, 4, 5).
    x = np.array([100.0, 0.0, 3.0, 1.0, 4.0, 2.0, 6.0, 5.0])
    assert stats.iqm(x) == pytest.approx(3.5)
    assert stats.iqm(np.stack([x, x + 1.0])) == pytest.approx([3.5, 4.5])


def test_summarize_point_values_and_ci_contains_them(rng):
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.55, 0.6, 0.2, 0.9])
    s = stats.summarize(x, rng, n_resamples=500)
    assert s.n == 8
    assert s.mean.value == pytest.approx(x.mean())
    assert s.std.value == pytest.approx(x.std(ddof=1))
    assert s.median.value == pytest.approx(np.median(x))
    assert s.iqm.value == pytest.approx(sps.trim_mean(x, 0.25))
    for e in (s.mean, s.std, s.median, s.iqm):
        assert e.low <= e.value <= e.high
        assert e.low < e.high


def test_bootstrap_ci_shrinks_with_more_seeds(rng):
    small = stats.summarize(rng.normal(size=10), rng, n_resamples=1000).mean
    large = stats.summarize(rng.normal(size=1000), rng, n_resamples=1000).mean
    assert (large.high - large.low) < 0.5 * (small.high - small.low)
    assert large.low <= 0.0 <= large.high


def test_single_seed_gives_nan_interval_and_constant_collapses(rng):
    one = stats.summarize(np.array([0.7]), rng)
    assert one.n == 1 and one.mean.value == 0.7
    assert math.isnan(one.mean.low) and math.isnan(one.mean.high)
    assert math.isnan(one.std.value)
    const = stats.summarize(np.full(6, 0.99), rng)
    assert const.mean == pytest.approx((0.99, 0.99, 0.99))
    assert const.std == pytest.approx((0.0, 0.0, 0.0))
    empty = stats.summarize(np.array([np.nan]), rng)
    assert empty.n == 0 and math.isnan(empty.mean.value)


def test_bootstrap_stream_is_keyed_by_the_quantity():
    """Issue 20: one quantity, one interval, whichever generator or order a view uses; other
    data draw another stream."""
    x = np.linspace(0, 1, 12) ** 2
    a = stats.bootstrap_ci(x, np.mean, np.random.default_rng(7))
    b = stats.bootstrap_ci(x, np.mean, np.random.default_rng(7))
    c = stats.bootstrap_ci(x, np.mean, np.random.default_rng(8))
    assert a == b == c
    d = stats.bootstrap_ci(x[::-1].copy() + 1.0, np.mean, np.random.default_rng(7))
    assert (d.low - 1.0, d.high - 1.0) != pytest.approx((a.low, a.high), abs=1e-12)


# ---------------------------------------------------------------------------- comparisons


def test_probability_of_improvement_identical_is_exactly_half(rng):
    a = rng.normal(size=15)
    assert stats.prob_improvement_paired(a, a) == 0.5
    assert stats.prob_improvement_unpaired(a, a) == 0.5
    cmp = stats.compare(a, a.copy(), rng, paired=True)
    # every pair tied: the exact interval gives the ties to either side (issue 20)
    assert cmp.p_improve.value == 0.5 and cmp.p_improve.low == 0.0 and cmp.p_improve.high == 1.0
    assert not cmp.significant and cmp.pvalue == 1.0
    assert cmp.difference == (0.0, 0.0, 0.0)


def test_probability_of_improvement_dominating_is_one(rng):
    b = rng.normal(size=12)
    a = b + 0.01
    cmp = stats.compare(a, b, rng, paired=True)
    assert cmp.p_improve.value == 1.0
    assert cmp.significant and cmp.meaningful
    assert cmp.difference.value == pytest.approx(0.01)
    un = stats.compare(b + 100.0, b[:5], rng, paired=False)
    assert un.p_improve.value == 1.0 and not un.paired


def test_probability_of_improvement_ties_count_half():
    assert stats.prob_improvement_paired([1.0, 2.0], [1.0, 1.0]) == pytest.approx(0.75)
    # 2x2 pairs: (1>1? tie) (1>3 no) (3>1 yes) (3>3 tie) -> (0.5 + 0 + 1 + 0.5) / 4
    assert stats.prob_improvement_unpaired([1.0, 3.0], [1.0, 3.0]) == pytest.approx(0.5)
    assert stats.prob_improvement_unpaired([2.0, 3.0], [1.0, 3.0]) == pytest.approx(0.625)


def test_unpaired_probability_equals_mann_whitney_u(rng):
    a, b = rng.normal(size=9).round(1), rng.normal(0.3, size=13).round(1)
    u = sps.mannwhitneyu(a, b).statistic
    assert stats.prob_improvement_unpaired(a, b) == pytest.approx(u / (a.size * b.size))


def test_paired_comparison_rejects_mismatched_lengths(rng):
    with pytest.raises(ValueError, match="equal lengths"):
        stats.compare(np.ones(3), np.ones(4), rng, paired=True)


def test_paired_comparison_flags(rng):
    b = rng.normal(size=30)
    clear = stats.compare(b + rng.normal(1.0, 0.3, size=30), b, rng, paired=True)
    assert clear.significant and clear.meaningful and clear.difference.low > 0
    noise = stats.compare(b + rng.normal(0.0, 1.0, size=30), b, rng, paired=True)
    assert noise.p_improve.low < 0.5 < noise.p_improve.high
    assert not noise.significant


def test_welch_and_mann_whitney_helpers(rng):
    a, b = rng.normal(size=20), rng.normal(2.0, 3.0, size=25)
    assert stats.welch_pvalue(a, b) == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert stats.mann_whitney_pvalue(a, b) == pytest.approx(sps.mannwhitneyu(a, b).pvalue)
    assert stats.welch_pvalue(a, b + 100) < 1e-6
    assert math.isnan(stats.welch_pvalue(a[:1], b))


def test_std_difference_positive_when_treatment_varies_less(rng):
    est = stats.std_difference(rng.normal(0, 0.1, 40), rng.normal(0, 1.0, 40), rng)
    assert est.low > 0
    assert math.isnan(stats.std_difference(np.ones(1), np.ones(5), rng).value)


# ---------------------------------------------------------------------------- rates


@pytest.mark.parametrize("k,n", [(0, 5), (3, 10), (7, 7), (19, 20), (1, 1)])
def test_wilson_interval_equals_statsmodels(k, n):
    est = stats.wilson_interval(k, n)
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert est.value == pytest.approx(k / n)
    assert (est.low, est.high) == pytest.approx((low, high), abs=1e-12)


def test_wilson_interval_edge_cases():
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(4, 3)


def test_success_rate_counts_nan_as_failure():
    est = stats.success_rate(np.array([0.995, 1.0, 0.5, np.nan]), 0.99)
    assert est.value == 0.5
    low, high = proportion_confint(2, 4, method="wilson")
    assert (est.low, est.high) == pytest.approx((low, high))


def test_rate_difference_sign_and_interval():
    est = stats.rate_difference([1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0])
    assert est.value == 1.0 and est.low > 0.5
    same = stats.rate_difference([1, 0, 1, 0], [0, 1, 0, 1])
    assert same.value == 0.0 and same.low < 0 < same.high


def test_grad_norm_summary():
    g = stats.grad_norm_summary(np.array([0.5, 2.0, 300.0, np.inf]), bound=100.0)
    assert g.median == pytest.approx(2.0)
    assert g.max == math.inf
    assert g.fraction_above.value == 0.5


# ---------------------------------------------------------------------------- censored epochs

# Six runs: three reach the threshold (epochs 2, 3, 3), three never do (censored at 2, 4, 5).
TIME = np.array([2.0, 3.0, 3.0, 2.0, 4.0, 5.0])
EVENT = np.array([True, True, True, False, False, False])


def test_kaplan_meier_hand_example():
    km = survival.kaplan_meier(TIME, EVENT, n_epochs=5)
    # S(1) = 1; S(2) = 1 - 1/6; S(3) = 5/6 * (1 - 2/4) (the run censored at 2 left the risk set)
    expected_s = np.array([1.0, 5 / 6, 5 / 12, 5 / 12, 5 / 12])
    np.testing.assert_allclose(km.reached, 1.0 - expected_s)
    np.testing.assert_array_equal(km.epochs, [1, 2, 3, 4, 5])
    assert np.all(km.low <= km.reached) and np.all(km.reached <= km.high)
    med = survival.median_epochs(km)
    assert med.value == 3.0
    assert med.low <= 3.0 and med.high == math.inf  # the band never gets past 1/2 surely


def test_kaplan_meier_matches_scipy_ecdf_and_its_log_log_band():
    rng = np.random.default_rng(3)
    time = rng.integers(1, 30, size=40).astype(float)
    event = rng.random(40) < 0.6
    km = survival.kaplan_meier(time, event, n_epochs=30)
    res = sps.ecdf(sps.CensoredData(uncensored=time[event], right=time[~event]))
    grid = np.arange(1, 31)
    np.testing.assert_allclose(km.reached, 1.0 - res.sf.evaluate(grid), atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        band = res.sf.confidence_interval(0.95, method="log-log")
    lo, hi = 1.0 - band.high.evaluate(grid), 1.0 - band.low.evaluate(grid)
    defined = np.isfinite(lo) & np.isfinite(hi)
    assert defined.sum() > 10
    np.testing.assert_allclose(km.low[defined], lo[defined], atol=1e-9)
    np.testing.assert_allclose(km.high[defined], hi[defined], atol=1e-9)


def test_kaplan_meier_is_vectorised_over_configurations():
    rng = np.random.default_rng(5)
    time = rng.integers(1, 50, size=(7, 20)).astype(float)
    event = rng.random((7, 20)) < 0.5
    batch = survival.kaplan_meier(time, event, n_epochs=50)
    assert batch.reached.shape == (7, 50)
    for i in range(7):
        one = survival.kaplan_meier(time[i], event[i], n_epochs=50)
        np.testing.assert_allclose(batch.reached[i], one.reached)
        np.testing.assert_allclose(batch.low[i], one.low)
    med = survival.median_epochs(batch)
    assert med.value.shape == (7,)


def test_censored_runs_are_kept_not_dropped():
    time, event = survival.censored_epochs(np.array([10.0, np.nan, np.nan]), np.array([50, 50, 20]))
    np.testing.assert_array_equal(time, [10, 50, 20])
    np.testing.assert_array_equal(event, [True, False, False])
    km = survival.kaplan_meier(time, event, n_epochs=50)
    assert km.reached[-1] == pytest.approx(1 / 3)  # dropping them would say 100%
    assert survival.median_epochs(km).value == math.inf


def test_restricted_mean_epochs_hand_value():
    # sum_{e=0}^{4} S(e) = 1 + 1 + 5/6 + 5/12 + 5/12
    assert survival.restricted_mean_epochs(TIME, EVENT, horizon=5) == pytest.approx(11 / 3)
    all_at_1 = survival.restricted_mean_epochs(np.ones(4), np.ones(4, bool), horizon=10)
    assert all_at_1 == pytest.approx(1.0)
    never = survival.restricted_mean_epochs(np.full(4, 10.0), np.zeros(4, bool), horizon=10)
    assert never == pytest.approx(10.0)


def test_prob_faster_respects_censoring():
    # A reached at 5; B censored at 10 never reached by 10 -> A certainly faster.
    assert survival.prob_faster([5], [True], [10], [False], paired=True) == 1.0
    # B censored at 3 could still reach at 4 or 20: undecided.
    assert survival.prob_faster([5], [True], [3], [False], paired=True) == 0.5
    assert survival.prob_faster([5], [True], [5], [True], paired=True) == 0.5
    assert survival.prob_faster([9], [True], [4], [True], paired=True) == 0.0
    assert survival.prob_faster(TIME, EVENT, TIME, EVENT, paired=True) == 0.5
    assert survival.prob_faster(TIME, EVENT, TIME, EVENT, paired=False) == 0.5


def test_time_to_threshold_comparison_finds_the_faster_arm(rng):
    tb = rng.integers(120, 180, size=12).astype(float)
    eb = np.ones(12, bool)
    eb[:3] = False  # three vanilla runs never reach it and are censored at 200
    tb[:3] = 200
    ta = tb - 60
    ta[:3] = rng.integers(60, 100, size=3)
    ea = np.ones(12, bool)
    cmp = survival.time_to_threshold_comparison(ta, ea, tb, eb, rng, horizon=200, paired=True)
    assert cmp.p_faster.value == 1.0 and cmp.significant
    assert cmp.epochs_saved.low > 30
    same = survival.time_to_threshold_comparison(tb, eb, tb, eb, rng, horizon=200, paired=True)
    assert same.p_faster.value == 0.5 and same.epochs_saved.value == 0.0
    assert same.pvalue == 1.0 and cmp.pvalue < 1e-6 and cmp.measurable


# ---------------------------------------------------------------------------- learning rate


def test_lr_robustness_worst_mean_and_spread(rng):
    lr = np.repeat([1e-3, 5e-4, 1e-4], 4)
    values = np.array([0.9, 0.92, 0.94, 0.96, 0.8, 0.8, 0.8, 0.8, 0.5, 0.6, 0.7, 0.6])
    r = tuning.lr_robustness(lr, values, rng)
    assert r.worst_lr == 1e-4
    assert r.worst.value == pytest.approx(0.6)
    assert r.spread.value == pytest.approx(0.93 - 0.6)
    assert r.worst.low <= 0.6 <= r.worst.high
    low_better = tuning.lr_robustness(lr, values, rng, higher_is_better=False)
    assert low_better.worst_lr == 1e-3 and low_better.worst.value == pytest.approx(0.93)


def test_lr_worst_case_difference(rng):
    lr = np.repeat([1e-3, 1e-4], 6)
    robust = np.r_[np.full(6, 0.95), np.full(6, 0.9)] + rng.normal(0, 0.005, 12)
    fragile = np.r_[np.full(6, 0.97), np.full(6, 0.5)] + rng.normal(0, 0.005, 12)
    d, p = tuning.lr_worst_case_difference(lr, robust, lr, fragile)
    assert d.value == pytest.approx(0.4, abs=0.02)
    assert 0.3 < d.low <= d.value <= d.high < 0.5
    assert p < 1e-6


# ---------------------------------------------------------------------------- expected max


def test_expected_max_endpoints_and_hand_case():
    v = np.array([3.0, 1.0, 2.0])
    em = tuning.expected_max(v)
    np.testing.assert_array_equal(em.n_trials, [1, 2, 3])
    # n=2 subsets: {1,2}->2, {1,3}->3, {2,3}->3
    np.testing.assert_allclose(em.mean, [2.0, 8 / 3, 3.0])
    assert em.std[-1] == pytest.approx(0.0)
    assert em.std[0] == pytest.approx(np.std(v))


def test_expected_max_equals_brute_force_over_subsets():
    v = np.random.default_rng(11).random(7)
    em = tuning.expected_max(v)
    for n in range(1, 8):
        maxima = [max(c) for c in itertools.combinations(v, n)]
        assert em.mean[n - 1] == pytest.approx(np.mean(maxima))
        assert em.std[n - 1] == pytest.approx(np.std(maxima), abs=1e-9)
    assert em.mean[0] == pytest.approx(v.mean()) and em.mean[-1] == pytest.approx(v.max())
    assert np.all(np.diff(em.mean) >= 0)


# ---------------------------------------------------------------------------- power


def test_seeds_needed_grows_as_the_effect_shrinks(rng):
    base = rng.normal(0.0, 1.0, size=30)
    noise = rng.normal(0.0, 1.0, size=30)
    needs = [
        power.seeds_needed(noise + shift, base, paired=True).seeds for shift in (2.0, 1.0, 0.5, 0.2)
    ]
    assert needs == sorted(needs) and needs[0] < needs[-1]
    assert all(n >= 2 for n in needs)


def test_seeds_needed_is_paired_power_with_reasons_where_undefined():
    """Issue 20: paired power (TTestPower on the differences), the check's own one-sided
    alpha/2; not applicable with the reason, never infinity."""
    a = np.array([1.0, 2.2, 2.9, 4.3, 5.1])
    b = a - np.array([0.5, 0.9, 0.6, 1.1, 0.4])
    d = a - b
    es = d.mean() / d.std(ddof=1)
    want = TTestPower().solve_power(effect_size=es, alpha=0.025, power=0.8, alternative="larger")
    got = power.seeds_needed(a, b, paired=True)
    assert got.seeds == max(2, math.ceil(want)) and got.reason is None
    assert power.seeds_needed(b, a, paired=True).reason == AGAINST
    assert power.seeds_needed(a, a, paired=True).reason == NO_EFFECT
    assert power.seeds_needed(a[:1], b[:1], paired=True).reason == TOO_FEW
    tiny = power.seeds_needed(a + 1e-2 * np.array([1, -1, 1, -1, 0.001]), a, paired=True)
    assert tiny.capped and tiny.seeds == 10_000
    # unpaired: the SD of a difference of independent runs
    un = power.seeds_needed(a, b, paired=False)
    sd = math.sqrt(a.var(ddof=1) + b.var(ddof=1))
    want_un = TTestPower().solve_power(
        effect_size=(a.mean() - b.mean()) / sd, alpha=0.025, power=0.8, alternative="larger"
    )
    assert un.seeds == math.ceil(want_un)
