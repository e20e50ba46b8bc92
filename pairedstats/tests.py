"""One decision rule per check type: p-values of paired-seed tests, vectorised over studies.

Every function takes arrays whose last axis is the seed (``(..., n)``; the leading axes are
independent studies, so the calibration runs thousands at once) and returns p-values with the
leading shape. A verdict is reached by comparing a p-value with alpha, and the direction by
the sign of the estimate; nothing here ORs two tests.

=====================  ==============================================  ===================
check                  test (the one that decides)                     null it tests
=====================  ==============================================  ===================
mean difference        paired t on d = A - B (scipy ``ttest_1samp``)    E[d] = 0
P(A>B) if declared     exact sign test on wins; ties dropped            P(A>B) = P(B>A)
paired rate            exact McNemar (binomial on discordant pairs)    equal rates
time to threshold      paired t on restricted times min(T, budget)      equal restricted means
spread across seeds    swap-within-pairs randomisation of std(B)-std(A) exchangeable
equivalence            TOST: two one-sided paired t-tests at the margin |E[d]| >= margin
non-inferiority        one-sided paired t at -margin                    E[d] <= -margin
=====================  ==============================================  ===================

scipy's ``binomtest`` and statsmodels' ``mcnemar`` / ``ttost_paired`` answer one study at a
time; the sign test and TOST are written here on ``scipy.stats.binom`` and ``ttest_1samp`` so
they take a whole ``(studies, n)`` array, and the tests in ``tests/pairedstats`` hold each
against the library's scalar version.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as sps

ALTERNATIVES = ("two-sided", "greater", "less")


def _alt(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    return alternative


def mean_pvalue(d: np.ndarray, *, null: float = 0.0, alternative: str = "two-sided") -> np.ndarray:
    """p-value of the paired t-test of ``E[d] = null`` on differences ``d`` of shape
    ``(..., n)``.

    NaN below two pairs. Differences that are all equal have no spread: p = 1 when they equal
    ``null``, else 0 on the side they point to (the t statistic is infinite), 1 on the other.
    """
    d = np.asarray(d, dtype=float)
    if d.shape[-1] < 2:
        return np.full(d.shape[:-1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero spread: handled below
        p = np.asarray(sps.ttest_1samp(d, null, axis=-1, alternative=_alt(alternative)).pvalue)
    flat = np.ptp(d, axis=-1) == 0
    if np.any(flat):
        shift = d[..., 0] - null
        side = {"two-sided": shift != 0, "greater": shift > 0, "less": shift < 0}[alternative]
        p = np.where(flat, np.where(side, 0.0, 1.0), p)
    return p


#: Cochran's rule (Cochran 1977, *Sampling Techniques*, sec. 2.15): a mean of n values is near
#: enough to normal for a t verdict when n >= 25 g1^2 (g1 the skewness). Measured as a gate on
#: the t verdicts with the sample skewness (``benchmarks/skew_guard.py``): it keeps the level on
#: skewed and ceiling-piled outcomes but halves the power on normal ones at 10 pairs, so no
#: rule gates on it; docs/statistics.md ("Known limits") gives the figures.
COCHRAN = 25.0


def skewness(x: np.ndarray) -> np.ndarray:
    """Sample skewness G1 (the adjusted Fisher-Pearson coefficient, scipy's
    ``skew(bias=False)``) over the last axis; NaN below 3 values or without spread."""
    x = np.asarray(x, dtype=float)
    if x.shape[-1] < 3:
        return np.full(x.shape[:-1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no spread: NaN below
        g = np.asarray(sps.skew(x, axis=-1, bias=False))
    return np.where(np.ptp(x, axis=-1) > 0, g, np.nan)


def skew_needed(x: np.ndarray) -> np.ndarray:
    """Values Cochran's rule asks for at the sample skewness of ``x``: ceil(25 G1^2) (at least
    3); NaN where the skewness is not defined."""
    g = skewness(x)
    return np.where(np.isnan(g), np.nan, np.maximum(3.0, np.ceil(COCHRAN * g * g - 1e-9)))


def skew_ok(x: np.ndarray) -> np.ndarray:
    """Whether a t verdict on the values ``x`` (``(..., n)``) passes Cochran's rule: n >=
    25 G1^2. False where the skewness is not defined (under 3 values, or all equal: no spread
    is no evidence about a mean's sampling distribution)."""
    need = skew_needed(x)
    return ~np.isnan(need) & (np.asarray(x).shape[-1] >= need)


def sign_pvalue(
    wins: np.ndarray, losses: np.ndarray, *, alternative: str = "two-sided"
) -> np.ndarray:
    """Exact sign test (binomial, p = 1/2) of ``wins`` against ``losses``; ties are dropped
    before counting (the stated tie rule). Same as ``scipy.stats.binomtest(wins, wins +
    losses)``, for arrays; p = 1 when there is no untied pair."""
    k = np.asarray(wins, dtype=float)
    m = k + np.asarray(losses, dtype=float)
    upper = sps.binom.sf(k - 1, m, 0.5)  # P(X >= k)
    lower = sps.binom.cdf(k, m, 0.5)  # P(X <= k)
    alt = _alt(alternative)
    if alt == "greater":
        p = upper
    elif alt == "less":
        p = lower
    else:  # p = 1/2 is symmetric, so doubling the smaller tail is binomtest's two-sided p
        p = np.minimum(1.0, 2.0 * np.minimum(upper, lower))
    return np.where(m > 0, p, 1.0)


def wins_losses(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A wins, B wins) over the seed pairs of ``a``, ``b`` (shape ``(..., n)``); ties
    count for neither."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    return np.sum(a > b, axis=-1), np.sum(a < b, axis=-1)


def prob_better_pvalue(a: np.ndarray, b: np.ndarray, *, alternative: str = "two-sided"):
    """The sign test of P(A>B) = P(B>A) on paired seeds (where P(A>B) is a check's declared
    statistic)."""
    w, l_ = wins_losses(a, b)
    return sign_pvalue(w, l_, alternative=alternative)


def mcnemar_pvalue(a: np.ndarray, b: np.ndarray, *, alternative: str = "two-sided"):
    """Exact McNemar test of equal rates for paired 0/1 outcomes ``a``, ``b`` (shape
    ``(..., n)``): the sign test on the discordant pairs (A only, B only), as statsmodels'
    ``mcnemar(exact=True)``."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    return sign_pvalue(np.sum(a & ~b, axis=-1), np.sum(~a & b, axis=-1), alternative=alternative)


def restricted_times(time: np.ndarray, event: np.ndarray, budget: float) -> np.ndarray:
    """Epochs to a threshold restricted to the budget: the epoch reached when reached within
    it, else the budget (a run censored earlier, e.g. diverged, never reached it: it counts as
    taking the whole budget, the worst it can). Shape of ``time``."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=bool)
    return np.where(e & (t <= budget), np.minimum(t, budget), float(budget))


#: a time-to-threshold comparison needs this fraction of one arm's runs to reach the threshold
MIN_REACHED = 0.5


def measurable(event_a: np.ndarray, event_b: np.ndarray, *, min_fraction: float = MIN_REACHED):
    """Whether a time-to-threshold comparison is measurable at its budget: at least
    ``min_fraction`` of the runs reach the threshold in at least one arm. When fewer reach it
    in both arms, neither arm's median time lies within the budget and the restricted means
    mostly count the budget itself. Leading shape of the ``(..., n)`` inputs."""
    fa = np.mean(np.asarray(event_a, dtype=bool), axis=-1)
    fb = np.mean(np.asarray(event_b, dtype=bool), axis=-1)
    return (fa >= min_fraction) | (fb >= min_fraction)


def time_pvalue(
    time_a: np.ndarray,
    event_a: np.ndarray,
    time_b: np.ndarray,
    event_b: np.ndarray,
    budget: float,
    *,
    alternative: str = "two-sided",
) -> np.ndarray:
    """Paired t-test of equal restricted mean epochs to threshold (B minus A: > 0 when A is
    faster); NaN where :func:`measurable` is false."""
    saved = restricted_times(time_b, event_b, budget) - restricted_times(time_a, event_a, budget)
    p = mean_pvalue(saved, alternative=alternative)
    return np.where(measurable(event_a, event_b), p, np.nan)


def _spread_stat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.std(b, axis=-1, ddof=1) - np.std(a, axis=-1, ddof=1)


def swap_patterns(n: int, *, max_patterns: int = 1024, seed: int = 0) -> np.ndarray:
    """Which pairs to swap, ``(patterns, n)`` booleans: all ``2**n`` when that is at most
    ``max_patterns`` (an exact test), else the identity and ``max_patterns - 1`` random ones
    from a fixed seed (a Monte Carlo test, still valid: the identity is counted)."""
    if 2**n <= max_patterns:
        codes = np.arange(2**n)[:, None]
        return (codes >> np.arange(n)) & 1 == 1
    rng = np.random.default_rng(seed)
    drawn = rng.random((max_patterns - 1, n)) < 0.5
    return np.vstack([np.zeros((1, n), dtype=bool), drawn])


def spread_pvalue(a: np.ndarray, b: np.ndarray, *, max_patterns: int = 1024) -> np.ndarray:
    """Two-sided randomisation test of equal spread across seeds: the statistic is
    std(B) - std(A), and its null distribution swaps the arms within pairs. Exact when the
    pairs are exchangeable (the arms differ in nothing), whatever the shape and n, ties and
    ceilings included (a t-test on deviations from the median was not: 0.07 at n=8 on
    ceiling-piled accuracies; centring each arm before swapping was not either). A shift of
    the means between the arms is not part of that null: it can be read as spread. Shape
    ``(..., n)`` in, leading shape out; NaN below three pairs (two give no test of spread)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    n = a.shape[-1]
    if n < 3:
        return np.full(a.shape[:-1], np.nan)
    observed = np.abs(_spread_stat(a, b))
    swaps = swap_patterns(n, max_patterns=max_patterns)
    lead = a.shape[:-1]
    a2, b2 = a.reshape(-1, 1, n), b.reshape(-1, 1, n)
    obs = observed.reshape(-1, 1)
    count = np.zeros(a2.shape[0])
    step = max(1, 2_000_000 // (swaps.shape[0] * n))  # studies per chunk: bounded memory
    for i in range(0, a2.shape[0], step):
        x, y = a2[i : i + step], b2[i : i + step]
        pa, pb = np.where(swaps, y, x), np.where(swaps, x, y)
        stat = np.abs(_spread_stat(pa, pb))
        # a relative tolerance so that rounding does not split exact ties of the statistic
        count[i : i + step] = np.sum(stat >= obs[i : i + step] * (1 - 1e-9) - 1e-15, axis=-1)
    return (count / swaps.shape[0]).reshape(lead)


def tost_pvalue(d: np.ndarray, low: float, high: float) -> np.ndarray:
    """TOST p-value for equivalence ``low < E[d] < high`` (the larger of the two one-sided
    paired t p-values), as statsmodels' ``ttost_paired``; shape ``d.shape[:-1]``."""
    above = mean_pvalue(d, null=low, alternative="greater")
    below = mean_pvalue(d, null=high, alternative="less")
    return np.maximum(above, below)


def noninferiority_pvalue(d: np.ndarray, margin: float) -> np.ndarray:
    """One-sided paired t p-value for ``E[d] > -margin`` (A not worse than B by more than
    ``margin``)."""
    return mean_pvalue(d, null=-margin, alternative="greater")


def difference_pvalue(
    a: np.ndarray,
    b: np.ndarray,
    *,
    paired: bool,
    null: float = 0.0,
    alternative: str = "two-sided",
) -> np.ndarray:
    """p-value of ``E[A - B] = null``: the paired t-test on the differences when the seeds
    pair, else Welch's t-test (unequal variances). NaN below two values in an arm."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if paired:
        return mean_pvalue(a - b, null=null, alternative=alternative)
    if min(a.shape[-1], b.shape[-1]) < 2:
        return np.full(a.shape[:-1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.ttest_ind(a - null, b, axis=-1, equal_var=False, alternative=_alt(alternative))
    return np.asarray(res.pvalue)


def fisher_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Fisher exact test of equal rates for unpaired 0/1 outcomes (1-D)."""
    a = np.asarray(a, dtype=bool).ravel()
    b = np.asarray(b, dtype=bool).ravel()
    if a.size == 0 or b.size == 0:
        return float("nan")
    table = [[int(a.sum()), int((~a).sum())], [int(b.sum()), int((~b).sum())]]
    return float(sps.fisher_exact(table).pvalue)


def levene_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Brown-Forsythe test of equal spread for unpaired samples (1-D; NaN below 2 each)."""
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if min(a.size, b.size) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return float("nan")
    return float(sps.levene(a, b, center="median").pvalue)
