"""Robustness statistics over seeds: pure functions on numpy arrays, no I/O.

Every function takes arrays whose shapes its docstring states and returns plain numbers,
numpy arrays or small named tuples. scipy and statsmodels do the maths; anything random
takes a ``numpy.random.Generator`` so results are reproducible. Censored epochs-to-threshold
live in :mod:`dashboards.survival`, learning-rate robustness and tuning budgets in
:mod:`dashboards.tuning`, how many seeds a question needs in :mod:`dashboards.power`.

Conventions used throughout:

* Confidence intervals are two-sided, 95% by default, and come back as an
  ``Estimate(value, low, high)``.
* Intervals keep their coverage at the small n of a seed study (issue 20): Student's t for
  means and mean differences (Welch unpaired), chi-square for a std, order statistics for a
  median, Clopper-Pearson for P(A>B)'s win count, Wilson for rates. The percentile bootstrap
  (``scipy.stats.bootstrap``, 2,000 resamples) remains only for figures with no such
  interval (IQM, a difference of stds), shown descriptively; BCa is undefined for the
  degenerate samples seeds produce (every seed at 100%). Samples of fewer than two values get
  a NaN interval; a constant sample gets the collapsed interval ``[x, x]``.
* Decisions are made by the tests of :mod:`pairedstats.tests` (one per check type), never by
  whether one of these intervals clears a line while another does not.
* "A better than B" means larger values are better; callers negate lower-is-better
  metrics (epochs, divergence) before comparing.

One file (over 400 lines) because every interval, test and effect size the verdicts use
shares one resampling core and one Estimate type; split, the twins would drift apart.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import stats as sps
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from pairedstats import effects
from pairedstats import tests as ptests
from pairedstats.streams import keyed_rng
from trainables.contract import prob_better as prob_improvement_paired

N_RESAMPLES = 2_000
CONFIDENCE = 0.95
#: Kept for callers: comparisons no longer switch to a bootstrap at any n.
MIN_BOOTSTRAP = 10
# P(A>B) thresholds of Bouthillier et al. (2021), "Accounting for variance in ML benchmarks".
SIGNIFICANT_ABOVE = 0.5
MEANINGFUL_AT = 0.75

# scipy renamed bootstrap's ``random_state`` to ``rng`` in 1.15; the project allows >= 1.11.
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"

__all__ = ["prob_improvement_paired"]  # re-exported: the contract's definition of P(A>B)


class Estimate(NamedTuple):
    """A point estimate with its confidence interval (NaN bounds when undefined)."""

    value: float
    low: float
    high: float


NAN = Estimate(math.nan, math.nan, math.nan)


class Summary(NamedTuple):
    """Location and spread of one configuration's metric over its seeds."""

    n: int
    mean: Estimate
    std: Estimate
    median: Estimate
    iqm: Estimate


class Comparison(NamedTuple):
    """A (treatment A) versus a baseline (B): probability of improvement and mean difference.

    ``significant``: the lower bound of P(A>B) is above 0.5. ``meaningful``: its upper bound
    reaches 0.75 (Bouthillier et al. 2021). ``difference`` is mean(A) - mean(B) (for paired
    data, the mean of the per-seed differences).
    """

    n_a: int
    n_b: int
    paired: bool
    p_improve: Estimate
    significant: bool
    meaningful: bool
    difference: Estimate
    pvalue: float = math.nan  # two-sided t-test (paired) or Welch (unpaired) of no difference


# --------------------------------------------------------------------------------------------
# Bootstrap machinery


def check_confidence(confidence_level: float) -> None:
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")


def as_1d(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per seed), got shape {arr.shape}")
    return arr


def bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    rng: np.random.Generator | None,
    paired: bool,
    n_resamples: int,
    confidence_level: float,
) -> list[Estimate]:
    """Point value and percentile bootstrap CI of a vectorised ``statistic(*data, axis)``;
    its random stream is keyed by the statistic and the data (``rng`` is not used).

    Returns one ``Estimate`` per element of the statistic's (scalar or 1-D) output; the bounds
    are NaN when a sample has fewer than two values.
    """
    check_confidence(confidence_level)
    point = np.ravel(np.asarray(statistic(*data, axis=-1), dtype=float))
    if min(len(d) for d in data) < 2:
        return [Estimate(float(v), math.nan, math.nan) for v in point]
    # The stream is keyed by the quantity (statistic and the values it resamples), not drawn
    # from the caller's generator: two views of one number draw the same resamples, and a
    # number does not move when unrelated runs are added or evaluated first (issue 20).
    del rng
    name = getattr(statistic, "__qualname__", repr(statistic))
    key = (name, paired, n_resamples, confidence_level, *(np.asarray(d).tobytes() for d in data))
    res = sps.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        paired=paired,
        axis=-1,
        confidence_level=confidence_level,
        method="percentile",
        **{_RNG_KEYWORD: keyed_rng(0, *key)},
    )
    # Widen to contain the estimate: rounding noise (constant samples) or a skewed bootstrap
    # distribution must not leave a point estimate outside its own interval.
    low = np.minimum(np.ravel(res.confidence_interval.low), point)
    high = np.maximum(np.ravel(res.confidence_interval.high), point)
    return [Estimate(*map(float, t)) for t in zip(point, low, high, strict=True)]


def quantile_ci(samples: np.ndarray, confidence_level: float) -> np.ndarray:
    """Two-sided percentile interval (low, high) of bootstrap ``samples``."""
    return np.quantile(samples, [(1 - confidence_level) / 2, (1 + confidence_level) / 2])


# --------------------------------------------------------------------------------------------
# Location and spread


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the 25% trimmed mean (rliable's IQM) along ``axis``.

    Args:
        x: values, any shape, e.g. ``num_seeds`` or ``num_configs x num_seeds``.
    """
    return sps.trim_mean(np.asarray(x, dtype=float), 0.25, axis=axis)


def _t_mean(x: np.ndarray, confidence_level: float) -> Estimate:
    m = float(x.mean())
    if x.size < 2:
        return Estimate(m, math.nan, math.nan)
    half = sps.t.ppf((1 + confidence_level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Estimate(m, m - half, m + half)


def _chi2_std(x: np.ndarray, confidence_level: float) -> Estimate:
    if x.size < 2:
        return Estimate(math.nan, math.nan, math.nan)
    s, df = float(x.std(ddof=1)), x.size - 1
    tail = (1 - confidence_level) / 2
    low = s * math.sqrt(df / sps.chi2.ppf(1 - tail, df))
    high = s * math.sqrt(df / sps.chi2.ppf(tail, df))
    return Estimate(s, low, high)


def _order_median(x: np.ndarray, confidence_level: float) -> Estimate:
    """The median with its distribution-free interval between two order statistics (at least
    the stated coverage; NaN when n is too small for any pair to reach it)."""
    xs = np.sort(x)
    n, med = xs.size, float(np.median(xs))
    k = int(sps.binom.ppf((1 - confidence_level) / 2, n, 0.5))  # P(B <= k-1) <= tail
    while k > 0 and 1 - 2 * sps.binom.cdf(k - 1, n, 0.5) < confidence_level:
        k -= 1
    if k < 1:
        return Estimate(med, math.nan, math.nan)
    return Estimate(med, float(min(xs[k - 1], med)), float(max(xs[n - k], med)))


def summarize(
    values: np.ndarray,
    rng: np.random.Generator | None,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> Summary:
    """Mean, std (ddof=1), median and IQM of one configuration's metric, each with a CI.

    Intervals that keep their coverage at the n in use (issue 20: a percentile bootstrap at
    n=6 is about 0.7x the t width): Student's t for the mean, chi-square for the std,
    order statistics for the median (NaN when too few seeds); only the IQM, which has no
    such interval, is a percentile bootstrap (``rng``), shown as a descriptive figure.

    Args:
        values: ``num_seeds`` metric values; NaNs (e.g. no test set) are dropped.
    """
    x = as_1d(values, "values")
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Summary(0, NAN, NAN, NAN, NAN)
    check_confidence(confidence_level)
    iqm_ci = bootstrap((x,), iqm, rng, False, n_resamples, confidence_level)[0]
    return Summary(
        int(x.size),
        _t_mean(x, confidence_level),
        _chi2_std(x, confidence_level),
        _order_median(x, confidence_level),
        iqm_ci,
    )


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[..., np.ndarray],
    rng: np.random.Generator,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> Estimate:
    """Percentile bootstrap CI of any vectorised scalar ``statistic(x, axis)`` over seeds.

    Args:
        values: ``num_seeds`` values (no NaNs).
        statistic: e.g. ``np.mean`` or :func:`iqm`; must accept ``axis``.
    """
    x = as_1d(values, "values")
    return bootstrap((x,), statistic, rng, False, n_resamples, confidence_level)[0]


# --------------------------------------------------------------------------------------------
# Comparisons with the baseline


def prob_improvement_unpaired(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(A > B) for independent samples (ties 1/2): Mann-Whitney's U of A over n_a * n_b.

    Args:
        a: ``... x n_a``; b: ``... x n_b`` (same leading shape).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    u = sps.mannwhitneyu(a, b, axis=axis, method="asymptotic", use_continuity=False).statistic
    return u / (a.shape[axis] * b.shape[axis])


def significance(p: Estimate) -> tuple[bool, bool]:
    """(significant, meaningful) for a P(A>B) estimate, as in :class:`Comparison`."""
    return bool(p.low > SIGNIFICANT_ABOVE), bool(p.high >= MEANINGFUL_AT)


def compare(
    a: np.ndarray,
    b: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    paired: bool,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> Comparison:
    """A versus B: P(A>B) (ties 1/2) as an effect size and the mean difference with its test.

    The difference's interval and p-value are Student's t on the per-seed differences when
    paired, Welch's when not, at every n (the percentile bootstrap used from 10 seeds on was
    too narrow: issue 20). P(A>B)'s interval is Clopper-Pearson on the win count
    (:func:`pairedstats.effects.prob_better_interval`; unpaired, over the smaller arm's n: a
    conservative count). Nothing here is random; ``rng`` and ``n_resamples`` are accepted
    for callers that pass them.

    Args:
        a: ``n_a`` values; b: ``n_b`` values (n_a = n_b when paired). No NaNs.
    """
    del rng, n_resamples  # analytic intervals
    a = as_1d(a, "a")
    b = as_1d(b, "b")
    if paired and a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    p = wins_interval(a, b, paired, confidence_level)
    diff = mean_difference_t(a, b, paired=paired, confidence_level=confidence_level)
    pvalue = float(ptests.difference_pvalue(a, b, paired=paired)) if a.size and b.size else math.nan
    return Comparison(a.size, b.size, paired, p, *significance(p), diff, pvalue)


def prob_improvement(a: np.ndarray, b: np.ndarray, paired: bool) -> float:
    """P(A>B) (ties 1/2): over seed pairs, or over every pair of runs when unpaired."""
    f = prob_improvement_paired if paired else prob_improvement_unpaired
    return float(f(a, b))


def wins_interval(a: np.ndarray, b: np.ndarray, paired: bool, confidence_level: float) -> Estimate:
    """P(A>B) (ties 1/2) with Clopper-Pearson's interval on its win count, ties counted
    outward: over the n seed pairs when paired, over the smaller sample when not (the
    fractions of the n_a n_b comparisons scaled to that n, rounded outward)."""
    a, b = as_1d(a, "a"), as_1d(b, "b")
    if min(a.size, b.size) == 0:
        return NAN
    if paired:
        wins, ties, n = effects.wins_ties(a, b)
    else:
        n = min(a.size, b.size)
        fw = float(np.mean(a[:, None] > b[None, :]))
        ft = float(np.mean(a[:, None] == b[None, :]))
        wins = math.floor(fw * n + 1e-9)
        ties = min(n - wins, math.ceil((fw + ft) * n - 1e-9) - wins)
    value, low, high = effects.prob_better_interval(
        wins, ties, n, confidence_level=confidence_level
    )
    exact = prob_improvement(a, b, paired)  # the point is the exact fraction, not the rounding
    return Estimate(exact, min(low, exact), max(high, exact))


def mean_difference_t(
    a: np.ndarray, b: np.ndarray, *, paired: bool, confidence_level: float = CONFIDENCE
) -> Estimate:
    """mean(A) - mean(B) with Student's t interval: on the per-seed differences when paired,
    Welch's when not. NaN bounds below two values; a zero spread collapses the interval."""
    a, b = as_1d(a, "a"), as_1d(b, "b")
    diff = float(np.mean(a - b)) if paired else float(a.mean() - b.mean())
    if min(a.size, b.size) < 2:
        return Estimate(diff, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero spread
        if paired:
            ci = sps.ttest_1samp(a - b, 0.0).confidence_interval(confidence_level)
        else:
            ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level)
    low, high = float(ci.low), float(ci.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # every difference equal
        spread = np.std(a - b) if paired else max(np.std(a), np.std(b))
        low = high = diff if spread == 0 else math.nan
    return Estimate(diff, low, high)


def std_difference(
    a: np.ndarray,
    b: np.ndarray,
    rng: np.random.Generator,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> Estimate:
    """std(B) - std(A) over seeds (ddof=1) with a bootstrap CI: > 0 when A varies less.

    Args:
        a: ``n_a`` values; b: ``n_b`` values (both >= 2 for a CI). No NaNs.
    """
    a = as_1d(a, "a")
    b = as_1d(b, "b")
    if min(a.size, b.size) < 2:
        return NAN

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.std(y, axis=axis, ddof=1) - np.std(x, axis=axis, ddof=1)

    return bootstrap((a, b), stat, rng, False, n_resamples, confidence_level)[0]


def welch_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); NaN below two values each.

    Args:
        a: ``n_a`` values; b: ``n_b`` values.
    """
    return float(ptests.difference_pvalue(as_1d(a, "a"), as_1d(b, "b"), paired=False))


def mann_whitney_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the Mann-Whitney U test; NaN for an empty sample.

    Args:
        a: ``n_a`` values; b: ``n_b`` values.
    """
    a = as_1d(a, "a")
    b = as_1d(b, "b")
    if min(a.size, b.size) < 1:
        return math.nan
    return float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)


# --------------------------------------------------------------------------------------------
# Rates


def wilson_interval(successes: int, n: int, *, confidence_level: float = CONFIDENCE) -> Estimate:
    """Proportion successes/n with its Wilson score interval (statsmodels); NaN when n = 0."""
    check_confidence(confidence_level)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return NAN
    low, high = proportion_confint(successes, n, alpha=1.0 - confidence_level, method="wilson")
    return Estimate(successes / n, float(low), float(high))


def rate(flags: np.ndarray, *, confidence_level: float = CONFIDENCE) -> Estimate:
    """Fraction of runs whose flag is set (e.g. ``diverged``), with a Wilson interval.

    Args:
        flags: ``num_runs`` booleans.
    """
    f = np.asarray(flags, dtype=bool).ravel()
    return wilson_interval(int(f.sum()), int(f.size), confidence_level=confidence_level)


def success_rate(
    values: np.ndarray, threshold: float | np.ndarray, *, confidence_level: float = CONFIDENCE
) -> Estimate:
    """Fraction of runs with ``value >= threshold`` (e.g. best val acc >= 0.99), Wilson CI.

    A NaN value counts as not reaching the threshold: dropping it would flatter the rate.

    Args:
        values: ``num_runs`` values; threshold: one, or one per run.
    """
    v = as_1d(values, "values")
    with np.errstate(invalid="ignore"):
        hit = v >= threshold
    return rate(hit, confidence_level=confidence_level)


def rate_difference(
    flags_a: np.ndarray, flags_b: np.ndarray, *, confidence_level: float = CONFIDENCE
) -> Estimate:
    """rate(A) - rate(B) with Newcombe's hybrid-score interval (statsmodels).

    Args:
        flags_a: ``n_a`` booleans; flags_b: ``n_b`` booleans.
    """
    check_confidence(confidence_level)
    fa = np.asarray(flags_a, dtype=bool).ravel()
    fb = np.asarray(flags_b, dtype=bool).ravel()
    if fa.size == 0 or fb.size == 0:
        return NAN
    low, high = confint_proportions_2indep(
        int(fa.sum()),
        fa.size,
        int(fb.sum()),
        fb.size,
        method="newcomb",
        compare="diff",
        alpha=1.0 - confidence_level,
    )
    return Estimate(float(fa.mean() - fb.mean()), float(low), float(high))


class GradNorms(NamedTuple):
    """Median and max of per-run max gradient norms, and the fraction of runs above a bound."""

    median: float
    max: float
    fraction_above: Estimate


def grad_norm_summary(
    max_grad_norm: np.ndarray, bound: float, *, confidence_level: float = CONFIDENCE
) -> GradNorms:
    """Median and max of per-run max gradient norms, and the fraction of runs above ``bound``.

    Args:
        max_grad_norm: ``num_runs`` per-run maxima of the (unclipped) gradient norm. NaN or
            inf (an overflowed norm) counts as above the bound.
    """
    g = as_1d(max_grad_norm, "max_grad_norm")
    finite = g[np.isfinite(g)]
    above = ~(g <= bound)
    return GradNorms(
        median=float(np.median(finite)) if finite.size else math.nan,
        max=float(np.max(g[~np.isnan(g)])) if np.any(~np.isnan(g)) else math.nan,
        fraction_above=rate(above, confidence_level=confidence_level),
    )
