"""Robustness statistics over seeds: pure functions on numpy arrays, no I/O.

Every function takes arrays whose shapes its docstring states and returns plain numbers,
numpy arrays or small named tuples. scipy and statsmodels do the maths; anything random
takes a ``numpy.random.Generator`` so results are reproducible.

Conventions used throughout:

* Confidence intervals are two-sided, 95% by default, and come back as an
  ``Estimate(value, low, high)``.
* Bootstrap intervals are **percentile** intervals from ``scipy.stats.bootstrap`` with
  2,000 resamples by default (vectorised: the statistic sees all resamples at once).
  Percentile, not BCa, because BCa is undefined for the degenerate bootstrap distributions
  that seeds produce all the time (every seed at 100% accuracy). Samples of fewer than two
  values get a NaN interval (no spread can be estimated from one seed); a constant sample
  gets the collapsed interval ``[x, x]``.
* "A better than B" means larger values are better; callers negate lower-is-better
  metrics (epochs, divergence) before comparing.
* Epochs are 1-based. Epochs-to-threshold are right-censored data: a run that never reached
  the threshold, or stopped early, is censored at its last epoch, never dropped.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import stats as sps
from scipy.special import gammaln
from statsmodels.stats.power import TTestIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

N_RESAMPLES = 2_000
CONFIDENCE = 0.95
# P(A>B) thresholds of Bouthillier et al. (2021), "Accounting for variance in ML benchmarks".
SIGNIFICANT_ABOVE = 0.5
MEANINGFUL_AT = 0.75

# scipy renamed bootstrap's ``random_state`` to ``rng`` in 1.15; the project allows >= 1.11.
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"


class Estimate(NamedTuple):
    """A point estimate with its confidence interval (NaN bounds when undefined)."""

    value: float
    low: float
    high: float


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


class KaplanMeier(NamedTuple):
    """Fraction of runs that reached the threshold by each epoch 1..E, with its band."""

    epochs: np.ndarray
    reached: np.ndarray
    low: np.ndarray
    high: np.ndarray


class TimeComparison(NamedTuple):
    """A versus B on censored epochs-to-threshold.

    ``p_faster``: probability that an A run reaches the threshold strictly before a B run
    (Gehan scoring: pairs that censoring leaves undecided count 1/2, like ties).
    ``epochs_saved``: restricted mean epochs-to-threshold of B minus that of A (positive when A
    is faster), both restricted to the same horizon.
    """

    n_a: int
    n_b: int
    paired: bool
    p_faster: Estimate
    significant: bool
    meaningful: bool
    epochs_saved: Estimate


class LrRobustness(NamedTuple):
    """Mean metric per learning rate and its worst case and spread over learning rates."""

    lrs: np.ndarray
    means: np.ndarray
    worst_lr: float
    worst: Estimate
    spread: Estimate


class ExpectedMax(NamedTuple):
    """Expected best value among n trials, n = 1..N, and the std of that best value."""

    n_trials: np.ndarray
    mean: np.ndarray
    std: np.ndarray


# --------------------------------------------------------------------------------------------
# Bootstrap machinery


def _check_confidence(confidence_level: float) -> None:
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")


def _as_1d(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per seed), got shape {arr.shape}")
    return arr


def _bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    rng: np.random.Generator,
    paired: bool,
    n_resamples: int,
    confidence_level: float,
) -> list[Estimate]:
    """Point value and percentile bootstrap CI of a vectorised ``statistic(*data, axis)``.

    Returns one ``Estimate`` per element of the statistic's (scalar or 1-D) output; the bounds
    are NaN when a sample has fewer than two values.
    """
    _check_confidence(confidence_level)
    point = np.ravel(np.asarray(statistic(*data, axis=-1), dtype=float))
    if min(len(d) for d in data) < 2:
        return [Estimate(float(v), math.nan, math.nan) for v in point]
    res = sps.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        paired=paired,
        axis=-1,
        confidence_level=confidence_level,
        method="percentile",
        **{_RNG_KEYWORD: rng},
    )
    # Widen to contain the estimate: rounding noise (constant samples) or a skewed bootstrap
    # distribution must not leave a point estimate outside its own interval.
    low = np.minimum(np.ravel(res.confidence_interval.low), point)
    high = np.maximum(np.ravel(res.confidence_interval.high), point)
    return [Estimate(*map(float, t)) for t in zip(point, low, high, strict=True)]


def _quantile_ci(samples: np.ndarray, confidence_level: float) -> np.ndarray:
    """Two-sided percentile interval (low, high) of bootstrap ``samples``."""
    return np.quantile(samples, [(1 - confidence_level) / 2, (1 + confidence_level) / 2])


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the 25% trimmed mean (rliable's IQM) along ``axis``.

    Args:
        x: values, any shape, e.g. ``num_seeds`` or ``num_configs x num_seeds``.
    """
    return sps.trim_mean(np.asarray(x, dtype=float), 0.25, axis=axis)


def _summary_statistic(x: np.ndarray, axis: int = -1) -> np.ndarray:
    std = np.std(x, axis=axis, ddof=1) if x.shape[axis] > 1 else np.full(x.shape[:-1], np.nan)
    return np.stack([np.mean(x, axis=axis), std, np.median(x, axis=axis), iqm(x, axis=axis)])


def summarize(
    values: np.ndarray,
    rng: np.random.Generator,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> Summary:
    """Mean, std (ddof=1), median and IQM of one configuration's metric, each with a CI.

    One joint percentile bootstrap (the four statistics share the resamples).

    Args:
        values: ``num_seeds`` metric values; NaNs (e.g. no test set) are dropped.
    """
    x = _as_1d(values, "values")
    x = x[~np.isnan(x)]
    if x.size == 0:
        nan = Estimate(math.nan, math.nan, math.nan)
        return Summary(0, nan, nan, nan, nan)
    est = _bootstrap((x,), _summary_statistic, rng, False, n_resamples, confidence_level)
    return Summary(int(x.size), *est)


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
    x = _as_1d(values, "values")
    return _bootstrap((x,), statistic, rng, False, n_resamples, confidence_level)[0]


# --------------------------------------------------------------------------------------------
# Comparisons with the baseline


def prob_improvement_paired(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(A > B) over seed pairs: mean of 1[a > b] + 1/2 1[a = b] along ``axis``.

    Args:
        a, b: same shape, ``... x num_seeds``; element i of both comes from seed i.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    return np.mean((a > b) + 0.5 * (a == b), axis=axis)


def prob_improvement_unpaired(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(A > B) for independent samples (ties 1/2): the Mann-Whitney U of A over n_a * n_b.

    Computed from mid-ranks of the pooled sample so it vectorises over resamples.

    Args:
        a: ``... x n_a``; b: ``... x n_b`` (same leading shape).
    """
    a = np.moveaxis(np.asarray(a, dtype=float), axis, -1)
    b = np.moveaxis(np.asarray(b, dtype=float), axis, -1)
    n_a, n_b = a.shape[-1], b.shape[-1]
    ranks = sps.rankdata(np.concatenate([a, b], axis=-1), axis=-1)
    u_a = ranks[..., :n_a].sum(axis=-1) - n_a * (n_a + 1) / 2.0
    return u_a / (n_a * n_b)


def _paired_statistic(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.stack([prob_improvement_paired(a, b, axis=axis), np.mean(a - b, axis=axis)])


def _unpaired_statistic(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    diff = np.mean(a, axis=axis) - np.mean(b, axis=axis)
    return np.stack([prob_improvement_unpaired(a, b, axis=axis), diff])


def significance(p: Estimate) -> tuple[bool, bool]:
    """(significant, meaningful) for a P(A>B) estimate, as in :class:`Comparison`."""
    return bool(p.low > SIGNIFICANT_ABOVE), bool(p.high >= MEANINGFUL_AT)


def _check_paired(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")


def _compare(
    a: np.ndarray,
    b: np.ndarray,
    rng: np.random.Generator,
    paired: bool,
    n_resamples: int,
    confidence_level: float,
) -> Comparison:
    statistic = _paired_statistic if paired else _unpaired_statistic
    p, diff = _bootstrap((a, b), statistic, rng, paired, n_resamples, confidence_level)
    return Comparison(a.size, b.size, paired, p, *significance(p), diff)


def paired_comparison(
    a: np.ndarray,
    b: np.ndarray,
    rng: np.random.Generator,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> Comparison:
    """A versus B on the same seeds: P(A>B) and mean paired difference, bootstrap CIs.

    Seed pairs are resampled jointly. Identical inputs give P(A>B) = 0.5 exactly.

    Args:
        a, b: ``num_seeds`` values each; a[i] and b[i] share seed i. No NaNs.
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    _check_paired(a, b)
    return _compare(a, b, rng, True, n_resamples, confidence_level)


def unpaired_comparison(
    a: np.ndarray,
    b: np.ndarray,
    rng: np.random.Generator,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> Comparison:
    """A versus B when seeds do not match: P(A>B) and mean(A) - mean(B), bootstrap CIs.

    The two samples are resampled independently.

    Args:
        a: ``n_a`` values; b: ``n_b`` values. No NaNs.
    """
    return _compare(_as_1d(a, "a"), _as_1d(b, "b"), rng, False, n_resamples, confidence_level)


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
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if min(a.size, b.size) < 2:
        return Estimate(math.nan, math.nan, math.nan)

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.std(y, axis=axis, ddof=1) - np.std(x, axis=axis, ddof=1)

    return _bootstrap((a, b), stat, rng, False, n_resamples, confidence_level)[0]


def welch_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); NaN below two values each.

    Args:
        a: ``n_a`` values; b: ``n_b`` values.
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if min(a.size, b.size) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant samples: p is NaN
        return float(sps.ttest_ind(a, b, equal_var=False).pvalue)


def mann_whitney_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the Mann-Whitney U test; NaN for an empty sample.

    Args:
        a: ``n_a`` values; b: ``n_b`` values.
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if min(a.size, b.size) < 1:
        return math.nan
    return float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)


# --------------------------------------------------------------------------------------------
# Rates


def wilson_interval(successes: int, n: int, *, confidence_level: float = CONFIDENCE) -> Estimate:
    """Proportion successes/n with its Wilson score interval (statsmodels); NaN when n = 0."""
    _check_confidence(confidence_level)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan)
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
    values: np.ndarray, threshold: float, *, confidence_level: float = CONFIDENCE
) -> Estimate:
    """Fraction of runs with ``value >= threshold`` (e.g. best val acc >= 0.99), Wilson CI.

    A NaN value counts as not reaching the threshold: dropping it would flatter the rate.

    Args:
        values: ``num_runs`` values.
    """
    v = _as_1d(values, "values")
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
    _check_confidence(confidence_level)
    fa = np.asarray(flags_a, dtype=bool).ravel()
    fb = np.asarray(flags_b, dtype=bool).ravel()
    if fa.size == 0 or fb.size == 0:
        return Estimate(math.nan, math.nan, math.nan)
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


def grad_norm_summary(
    max_grad_norm: np.ndarray, bound: float, *, confidence_level: float = CONFIDENCE
) -> dict[str, float | Estimate]:
    """Median and max of per-run max gradient norms, and the fraction of runs above ``bound``.

    Args:
        max_grad_norm: ``num_runs`` per-run maxima of the (unclipped) gradient norm. NaN or
            inf (an overflowed norm) counts as above the bound.
    """
    g = _as_1d(max_grad_norm, "max_grad_norm")
    finite = g[np.isfinite(g)]
    above = ~(g <= bound)
    return {
        "median": float(np.median(finite)) if finite.size else math.nan,
        "max": float(np.max(g[~np.isnan(g)])) if np.any(~np.isnan(g)) else math.nan,
        "fraction_above": rate(above, confidence_level=confidence_level),
    }


# --------------------------------------------------------------------------------------------
# Epochs to threshold: right-censored, Kaplan-Meier


def censored_epochs(
    epochs_to_threshold: np.ndarray, last_epoch: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Turn per-run epochs-to-threshold into (time, event) survival data.

    Args:
        epochs_to_threshold: ``num_runs`` epochs (1-based), NaN where never reached.
        last_epoch: ``num_runs`` last epoch each run trained (planned end, early stop or
            divergence): the censoring time of runs that never reached the threshold.

    Returns:
        ``time`` (float, ``num_runs``) and ``event`` (bool, ``num_runs``: reached).
    """
    ett = np.asarray(epochs_to_threshold, dtype=float)
    last = np.asarray(last_epoch, dtype=float)
    event = np.isfinite(ett)
    return np.where(event, ett, last), event


def _km_counts(
    time: np.ndarray, event: np.ndarray, n_epochs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events and numbers at risk at epochs 1..E for every leading index, via one bincount.

    A run censored at epoch e is still at risk at e (it was observed not to reach by e).
    Returns ``reached`` (..., E), ``at_risk`` (..., E) and ``n`` (...,).
    """
    t = np.asarray(time, dtype=float)
    ev = np.broadcast_to(np.asarray(event, dtype=bool), t.shape)
    lead = t.shape[:-1]
    m = int(np.prod(lead)) if lead else 1
    t2 = t.reshape(m, -1)
    ev2 = ev.reshape(m, -1)
    valid = ~np.isnan(t2)
    # Bins 0..E+1: 0 = gone before epoch 1, E+1 = still running after the horizon.
    bins = np.clip(np.nan_to_num(t2, nan=0.0), 0, n_epochs + 1).astype(np.int64)
    width = n_epochs + 2
    flat = (np.arange(m)[:, None] * width + bins)[valid]
    removed = np.bincount(flat, minlength=m * width).reshape(m, width)
    hits = (ev2 & valid & (bins >= 1) & (bins <= n_epochs))[valid]
    reached = np.bincount(flat, weights=hits, minlength=m * width).reshape(m, width)
    n = valid.sum(axis=-1)
    gone_before = np.cumsum(removed, axis=-1) - removed  # removed at bins < e
    at_risk = n[:, None] - gone_before
    sl = slice(1, n_epochs + 1)
    return (
        reached[:, sl].reshape(*lead, n_epochs),
        at_risk[:, sl].reshape(*lead, n_epochs),
        n.reshape(lead),
    )


def _km_survival(reached: np.ndarray, at_risk: np.ndarray) -> np.ndarray:
    """S(e) at epochs 1..E from the counts of :func:`_km_counts`."""
    with np.errstate(divide="ignore", invalid="ignore"):
        hazard = np.where(at_risk > 0, reached / at_risk, 0.0)
    return np.cumprod(1.0 - hazard, axis=-1)


def kaplan_meier(
    time: np.ndarray,
    event: np.ndarray,
    n_epochs: int,
    *,
    confidence_level: float = CONFIDENCE,
) -> KaplanMeier:
    """Kaplan-Meier estimate of the fraction of runs that reached the threshold by epoch e.

    The band is pointwise: Greenwood's variance on the log(-log S) scale (the "log-log"
    interval, which stays inside [0, 1]; it matches ``scipy.stats.ecdf(...).sf
    .confidence_interval(method="log-log")``). Where it is undefined (S = 1 before any run
    reached, S = 0 once all at risk did) the band collapses onto the estimate.

    Args:
        time: ``... x num_runs`` epoch reached (event) or censoring epoch; NaN = no run.
        event: same shape, True where the run reached the threshold.
        n_epochs: E, the horizon; epochs 1..E are reported.

    Returns:
        ``KaplanMeier`` whose arrays have shape ``... x E``.
    """
    _check_confidence(confidence_level)
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
    reached, at_risk, n = _km_counts(time, event, n_epochs)
    surv = _km_survival(reached, at_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(
            (at_risk > reached) & (at_risk > 0), reached / (at_risk * (at_risk - reached)), 0.0
        )
        greenwood = np.cumsum(term, axis=-1)
        log_s = np.log(surv)
        z = sps.norm.ppf(0.5 + confidence_level / 2.0)
        half = z * np.sqrt(greenwood) / np.abs(log_s)
        s_low = surv ** np.exp(half)
        s_high = surv ** np.exp(-half)
    defined = (surv > 0) & (surv < 1)
    s_low = np.where(defined, s_low, surv)
    s_high = np.where(defined, s_high, surv)
    empty = (n == 0)[..., None]
    nan = np.full_like(surv, np.nan)
    return KaplanMeier(
        epochs=np.arange(1, n_epochs + 1),
        reached=np.where(empty, nan, 1.0 - surv),
        low=np.where(empty, nan, 1.0 - s_high),
        high=np.where(empty, nan, 1.0 - s_low),
    )


def _first_epoch_at_least_half(fraction: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    hit = fraction >= 0.5
    first = epochs[np.argmax(hit, axis=-1)].astype(float)
    out = np.where(hit.any(axis=-1), first, np.inf)
    return np.where(np.isnan(fraction).all(axis=-1), np.nan, out)


def median_epochs(km: KaplanMeier) -> Estimate:
    """Median epochs-to-threshold from a Kaplan-Meier fit, with a CI.

    The median is the first epoch by which at least half the runs reached the threshold
    (inf when fewer than half do within the horizon). Its CI is read off the pointwise band:
    the epochs where the band's upper and lower edges first reach 1/2 (Brookmeyer-Crowley
    style; inf when an edge never does). For a batched fit the fields are arrays.
    """
    value = _first_epoch_at_least_half(km.reached, km.epochs)
    low = _first_epoch_at_least_half(km.high, km.epochs)
    high = _first_epoch_at_least_half(km.low, km.epochs)
    if np.ndim(value) == 0:
        return Estimate(float(value), float(low), float(high))
    return Estimate(value, low, high)


def restricted_mean_epochs(time: np.ndarray, event: np.ndarray, horizon: int) -> np.ndarray:
    """Restricted mean epochs-to-threshold E[min(T, horizon)] from the Kaplan-Meier fit.

    With whole epochs, E[min(T, H)] = sum_{e=0}^{H-1} S(e) with S(0) = 1. Runs that never
    reach the threshold contribute the full horizon at most, so arms compare fairly.

    Args:
        time, event: ``... x num_runs`` as for :func:`kaplan_meier`.
        horizon: H in epochs.

    Returns:
        shape ``...``.
    """
    surv = _km_survival(*_km_counts(time, event, horizon)[:2])
    return 1.0 + surv[..., :-1].sum(axis=-1)


def _decode(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # One signed number per run (+time if reached, -time if censored) lets scipy's bootstrap
    # resample time and event together as a single sample.
    return np.abs(code), code > 0


def _encode(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    t = np.asarray(time, dtype=float)
    return np.where(np.asarray(event, dtype=bool), t, -t)


def _faster_score(code_a: np.ndarray, code_b: np.ndarray) -> np.ndarray:
    ta, ea = _decode(code_a)
    tb, eb = _decode(code_b)
    # A censored run did not reach by its time c, so its true time is > c.
    a_wins = ea & np.where(eb, ta < tb, ta <= tb)
    b_wins = eb & np.where(ea, tb < ta, tb <= ta)
    return a_wins + 0.5 * (1.0 - a_wins - b_wins)


def _p_faster(code_a: np.ndarray, code_b: np.ndarray, paired: bool) -> np.ndarray:
    """Mean Gehan score over the last axis: seed i against seed i, or every pair of runs."""
    if paired:
        return _faster_score(code_a, code_b).mean(axis=-1)
    return _faster_score(code_a[..., :, None], code_b[..., None, :]).mean(axis=(-2, -1))


def prob_faster(
    time_a: np.ndarray,
    event_a: np.ndarray,
    time_b: np.ndarray,
    event_b: np.ndarray,
    *,
    paired: bool,
) -> float:
    """P(an A run reaches the threshold strictly before a B run), censoring-aware.

    Gehan's scoring: a pair counts 1 when A certainly reached first, 0 when B certainly did
    and 1/2 when tied or when censoring leaves it undecided. Paired: seed i against seed i;
    unpaired: every A run against every B run. Identical inputs give exactly 0.5.

    Args:
        time_a, event_a: ``n_a`` runs; time_b, event_b: ``n_b`` runs (n_a = n_b if paired).
    """
    ca = _encode(time_a, event_a)
    cb = _encode(time_b, event_b)
    if paired:
        _check_paired(ca, cb)
    return float(_p_faster(ca, cb, paired))


def time_to_threshold_comparison(
    time_a: np.ndarray,
    event_a: np.ndarray,
    time_b: np.ndarray,
    event_b: np.ndarray,
    rng: np.random.Generator,
    *,
    horizon: int,
    paired: bool,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> TimeComparison:
    """A versus B on censored epochs-to-threshold: P(A faster) and epochs saved, with CIs.

    Percentile bootstrap over runs (seed pairs jointly when ``paired``); each resample refits
    the Kaplan-Meier curves, vectorised across resamples.

    Args:
        time_a, event_a: ``n_a`` runs; time_b, event_b: ``n_b`` runs (see
            :func:`censored_epochs`); equal lengths, matched by seed, when ``paired``.
        horizon: epochs over which the restricted means are taken (the planned epochs).
    """
    ca = _encode(_as_1d(time_a, "time_a"), event_a)
    cb = _encode(_as_1d(time_b, "time_b"), event_b)
    if paired:
        _check_paired(ca, cb)

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        x = np.moveaxis(x, axis, -1)
        y = np.moveaxis(y, axis, -1)
        tx, ex = _decode(x)
        ty, ey = _decode(y)
        saved = restricted_mean_epochs(ty, ey, horizon) - restricted_mean_epochs(tx, ex, horizon)
        return np.stack([_p_faster(x, y, paired), saved])

    p, saved = _bootstrap((ca, cb), stat, rng, paired, n_resamples, confidence_level)
    return TimeComparison(ca.size, cb.size, paired, p, *significance(p), saved)


# --------------------------------------------------------------------------------------------
# Learning-rate robustness


def _lr_groups(lr: np.ndarray, values: np.ndarray) -> dict[float, np.ndarray]:
    """The finite values of each learning rate, by increasing learning rate."""
    lr = _as_1d(lr, "lr")
    values = _as_1d(values, "values")
    if lr.shape != values.shape:
        raise ValueError(f"lr and values need equal lengths, got {lr.size} and {values.size}")
    keep = ~np.isnan(values) & ~np.isnan(lr)
    lr, values = lr[keep], values[keep]
    return {x: values[lr == x] for x in np.unique(lr)}


def _boot_means(groups: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """Bootstrap means per group (seeds resampled within each): ``n x len(groups)``."""
    out = np.empty((n, len(groups)))
    for j, v in enumerate(groups):  # a handful of learning rates, not runs
        out[:, j] = v[rng.integers(0, v.size, size=(n, v.size))].mean(axis=-1)
    return out


def lr_robustness(
    lr: np.ndarray,
    values: np.ndarray,
    rng: np.random.Generator,
    *,
    higher_is_better: bool = True,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> LrRobustness:
    """Worst mean over learning rates and the spread (max mean - min mean), bootstrap CIs.

    Seeds are resampled within each learning rate.

    Args:
        lr: ``num_runs`` learning rate of each run; values: ``num_runs`` metric values.
    """
    _check_confidence(confidence_level)
    by_lr = _lr_groups(lr, values)
    lrs = np.array(list(by_lr), dtype=float)
    if lrs.size == 0:
        nan = Estimate(math.nan, math.nan, math.nan)
        return LrRobustness(lrs, np.empty(0), math.nan, nan, nan)
    groups = list(by_lr.values())
    means = np.array([v.mean() for v in groups])
    pick = np.argmin if higher_is_better else np.argmax
    worst_idx = int(pick(means))
    boot = _boot_means(groups, rng, n_resamples)
    boot_worst = boot.min(axis=1) if higher_is_better else boot.max(axis=1)
    boot_spread = boot.max(axis=1) - boot.min(axis=1)
    few = min(v.size for v in groups) < 2
    wl, wh = (math.nan, math.nan) if few else _quantile_ci(boot_worst, confidence_level)
    sl, sh = (math.nan, math.nan) if few else _quantile_ci(boot_spread, confidence_level)
    return LrRobustness(
        lrs=lrs,
        means=means,
        worst_lr=float(lrs[worst_idx]),
        worst=Estimate(float(means[worst_idx]), float(wl), float(wh)),
        spread=Estimate(float(means.max() - means.min()), float(sl), float(sh)),
    )


def lr_worst_case_difference(
    lr_a: np.ndarray,
    values_a: np.ndarray,
    lr_b: np.ndarray,
    values_b: np.ndarray,
    rng: np.random.Generator,
    *,
    higher_is_better: bool = True,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> Estimate:
    """Worst-case mean of A minus that of B over their common learning rates, bootstrap CI.

    Oriented so that a positive value means A's worst case is better.

    Args:
        lr_a, values_a: ``n_a`` runs of arm A; lr_b, values_b: ``n_b`` runs of arm B.
    """
    _check_confidence(confidence_level)
    by_lr_a = _lr_groups(lr_a, values_a)
    by_lr_b = _lr_groups(lr_b, values_b)
    common = [x for x in by_lr_a if x in by_lr_b]
    if not common:
        return Estimate(math.nan, math.nan, math.nan)
    groups_a = [by_lr_a[x] for x in common]
    groups_b = [by_lr_b[x] for x in common]
    sign = 1.0 if higher_is_better else -1.0

    def worst(groups: list[np.ndarray]) -> float:
        return float(min(sign * v.mean() for v in groups))

    value = worst(groups_a) - worst(groups_b)
    if min(v.size for v in groups_a + groups_b) < 2:
        return Estimate(value, math.nan, math.nan)
    boot_a = (sign * _boot_means(groups_a, rng, n_resamples)).min(axis=1)
    boot_b = (sign * _boot_means(groups_b, rng, n_resamples)).min(axis=1)
    low, high = _quantile_ci(boot_a - boot_b, confidence_level)
    return Estimate(value, float(min(low, value)), float(max(high, value)))


# --------------------------------------------------------------------------------------------
# Expected best validation accuracy over n trials (Dodge et al. 2019)


def expected_max(values: np.ndarray) -> ExpectedMax:
    """Expected best value among n trials, n = 1..N, from N observed trial values.

    Unbiased order-statistic estimator (n trials drawn *without* replacement from the N
    observed, so it is the U-statistic of max over n-subsets): with v_(1) <= ... <= v_(N)
    sorted,

        E[max_n] = sum_{i=n}^{N} v_(i) * C(i-1, n-1) / C(N, n),

    since v_(i) is the maximum of exactly C(i-1, n-1) of the C(N, n) subsets. At n = 1 it is
    the mean, at n = N the maximum. ``std`` is sqrt(E[max_n^2] - E[max_n]^2) under the same
    weights (the spread of the best-of-n value; 0 at n = N). Dodge et al.'s original plug-in
    formula samples with replacement and is biased upwards for n close to N.

    Args:
        values: ``num_trials`` best validation values; NaNs are dropped.

    Returns:
        arrays of length N (empty when no values).
    """
    v = np.sort(_as_1d(values, "values"))
    v = v[~np.isnan(v)]
    big_n = v.size
    n = np.arange(1, big_n + 1)[:, None]
    i = np.arange(1, big_n + 1)[None, :]
    with np.errstate(invalid="ignore"):
        log_w = (
            gammaln(i)
            - gammaln(n)
            - gammaln(np.maximum(i - n, 0) + 1)
            - (gammaln(big_n + 1) - gammaln(n + 1) - gammaln(big_n - n + 1))
        )
    w = np.where(i >= n, np.exp(log_w), 0.0)
    w /= w.sum(axis=1, keepdims=True) if big_n else 1.0  # exact up to rounding; renormalise
    mean = w @ v
    second = w @ (v * v)
    std = np.sqrt(np.maximum(second - mean * mean, 0.0))
    return ExpectedMax(n_trials=n.ravel(), mean=mean, std=std)


# --------------------------------------------------------------------------------------------
# How many seeds (Colas et al. 2018)


def seeds_needed(
    a: np.ndarray,
    b: np.ndarray,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    null_difference: float = 0.0,
) -> float:
    """Seeds per arm for a two-sided t-test to detect the observed difference.

    Effect size is Cohen's d = (mean(a) - mean(b) - null_difference) / s with s the square
    root of the average of the two sample variances (ddof=1); statsmodels' ``TTestIndPower``
    solves for equal arm sizes at the given alpha and power. This is the Student power
    curve standing in for Welch's (equal n makes them close). ``null_difference`` shifts the
    null, e.g. ``-margin`` for a non-inferiority question.

    Args:
        a: ``n_a`` values; b: ``n_b`` values (>= 2 each).

    Returns:
        whole seeds per arm (>= 2); inf when the effect is 0; NaN with < 2 values in an arm.
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    a = a[~np.isnan(a)]
    b = b[~np.isnan(b)]
    if min(a.size, b.size) < 2:
        return math.nan
    diff = abs(a.mean() - b.mean() - null_difference)
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2.0)
    if diff == 0.0 or not np.isfinite(diff):
        return math.inf
    if sd == 0.0:
        return 2.0
    d = diff / sd
    analysis = TTestIndPower()
    if analysis.power(effect_size=d, nobs1=2, alpha=alpha, ratio=1.0) >= power:
        return 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = analysis.solve_power(effect_size=d, alpha=alpha, power=power, ratio=1.0)
    n = float(np.squeeze(n))
    if not np.isfinite(n):
        # The root finder gives up on tiny effects; the normal approximation is then accurate.
        z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
        n = 2.0 * (z / d) ** 2
    return float(max(2, math.ceil(n)))
