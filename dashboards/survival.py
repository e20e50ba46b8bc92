"""Epochs to a threshold as right-censored data: Kaplan-Meier curves and arm comparisons.

A run that never reached the threshold, stopped early or diverged is censored at its last
epoch, never dropped (dropping it would flatter the arm). The Kaplan-Meier fits are
``scipy.stats.ecdf`` on ``scipy.stats.CensoredData``; what scipy does not have (the restricted
mean, Gehan's pairwise scoring) is built on them here. Epochs are 1-based.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from dashboards.stats import (
    CONFIDENCE,
    N_RESAMPLES,
    Estimate,
    as_1d,
    check_confidence,
    mean_difference_t,
    significance,
)
from pairedstats import effects
from pairedstats import tests as ptests


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
    pvalue: float = math.nan  # t-test of equal restricted mean times (paired, else Welch)
    measurable: bool = True  # at least half the runs of one arm reached within the budget
    reached: tuple[float, float] = (math.nan, math.nan)  # fraction reached, A and B


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


def _fit(time: np.ndarray, event: np.ndarray):
    """scipy's Kaplan-Meier fit of the runs with a known time, or None when there are none."""
    known = ~np.isnan(time)
    t, e = time[known], event[known]
    if t.size == 0:
        return None
    return sps.ecdf(sps.CensoredData(uncensored=t[e], right=t[~e]))


def _survival(time: np.ndarray, event: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """S(e) (the fraction not yet at the threshold) at ``epochs``; NaN without runs."""
    fit = _fit(time, event)
    if fit is None:
        return np.full(epochs.shape, np.nan)
    return fit.sf.evaluate(epochs)


def kaplan_meier(
    time: np.ndarray,
    event: np.ndarray,
    n_epochs: int,
    *,
    confidence_level: float = CONFIDENCE,
) -> KaplanMeier:
    """Kaplan-Meier estimate of the fraction of runs that reached the threshold by epoch e.

    The band is pointwise: Greenwood's variance on the log(-log S) scale (scipy's "log-log"
    interval, which stays inside [0, 1]). Where it is undefined (S = 1 before any run
    reached, S = 0 once all at risk did) the band collapses onto the estimate.

    Args:
        time: ``... x num_runs`` epoch reached (event) or censoring epoch; NaN = no run.
        event: same shape, True where the run reached the threshold.
        n_epochs: E, the horizon; epochs 1..E are reported.

    Returns:
        ``KaplanMeier`` whose arrays have shape ``... x E``.
    """
    check_confidence(confidence_level)
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
    t = np.asarray(time, dtype=float)
    ev = np.broadcast_to(np.asarray(event, dtype=bool), t.shape)
    epochs = np.arange(1, n_epochs + 1)
    lead = t.shape[:-1]
    rows = [np.full((3, n_epochs), np.nan) for _ in range(int(np.prod(lead)) if lead else 1)]
    flat_t, flat_e = t.reshape(-1, t.shape[-1]), ev.reshape(-1, t.shape[-1])
    for row, ti, ei in zip(rows, flat_t, flat_e, strict=True):
        fit = _fit(ti, ei)
        if fit is None:
            continue
        surv = fit.sf.evaluate(epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "undefined at some observations": handled below
            band = fit.sf.confidence_interval(confidence_level, method="log-log")
        s_low, s_high = band.low.evaluate(epochs), band.high.evaluate(epochs)
        row[0] = 1.0 - surv
        row[1] = 1.0 - np.where(np.isfinite(s_high), s_high, surv)
        row[2] = 1.0 - np.where(np.isfinite(s_low), s_low, surv)
    stacked = np.stack(rows).reshape(*lead, 3, n_epochs)
    return KaplanMeier(epochs, stacked[..., 0, :], stacked[..., 1, :], stacked[..., 2, :])


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
    t = np.asarray(time, dtype=float)
    ev = np.broadcast_to(np.asarray(event, dtype=bool), t.shape)
    grid = np.arange(1, horizon)  # S(0) = 1 is the leading 1
    flat = [
        1.0 + _survival(ti, ei, grid).sum()
        for ti, ei in zip(t.reshape(-1, t.shape[-1]), ev.reshape(-1, t.shape[-1]), strict=True)
    ]
    out = np.array(flat).reshape(t.shape[:-1])
    return float(out) if out.ndim == 0 else out


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


def _check_paired(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")


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
    rng: np.random.Generator | None = None,
    *,
    horizon: int,
    paired: bool,
    n_resamples: int = N_RESAMPLES,
    confidence_level: float = CONFIDENCE,
) -> TimeComparison:
    """A versus B on censored epochs-to-threshold: P(A faster) and epochs saved, with CIs,
    and the test that decides.

    Each run's time is restricted to the budget (``horizon``): its epoch when it reached the
    threshold within it, else the budget (:func:`pairedstats.tests.restricted_times`).
    Epochs saved is the mean of B's minus A's restricted times with Student's t interval
    (paired by seed, else Welch), and its p-value is that t-test's; the budget can measure
    it only when at least half the runs of one arm reach the threshold
    (:func:`pairedstats.tests.measurable`), else ``measurable`` is False and the verdict says
    so. P(A faster) (Gehan scoring) is an effect size with a Clopper-Pearson interval.
    Nothing is resampled; ``rng`` and ``n_resamples`` are accepted for callers.

    Args:
        time_a, event_a: ``n_a`` runs; time_b, event_b: ``n_b`` runs (see
            :func:`censored_epochs`); equal lengths, matched by seed, when ``paired``.
        horizon: the budget in epochs (the planned epochs).
    """
    del rng, n_resamples
    check_confidence(confidence_level)
    ta, tb = as_1d(time_a, "time_a"), as_1d(time_b, "time_b")
    ea, eb = np.asarray(event_a, dtype=bool), np.asarray(event_b, dtype=bool)
    ca, cb = _encode(ta, ea), _encode(tb, eb)
    if paired:
        _check_paired(ca, cb)
    ra = ptests.restricted_times(ta, ea, horizon)
    rb = ptests.restricted_times(tb, eb, horizon)
    saved = mean_difference_t(rb, ra, paired=paired, confidence_level=confidence_level)
    pvalue = float(ptests.difference_pvalue(rb, ra, paired=paired))
    reached_a = float(np.mean(ea & (ta <= horizon))) if ta.size else 0.0
    reached_b = float(np.mean(eb & (tb <= horizon))) if tb.size else 0.0
    measurable = max(reached_a, reached_b) >= ptests.MIN_REACHED
    if paired:
        score = _faster_score(ca, cb)
        wins, ties, n = int(np.sum(score == 1.0)), int(np.sum(score == 0.5)), ca.size
    else:
        score = _faster_score(ca[:, None], cb[None, :])
        n = min(ca.size, cb.size)
        wins = math.floor(float(np.mean(score == 1.0)) * n + 1e-9)
        ties = min(n - wins, math.ceil(float(np.mean(score >= 0.5)) * n - 1e-9) - wins)
    _, low, high = effects.prob_better_interval(wins, ties, n, confidence_level=confidence_level)
    point = float(_p_faster(ca, cb, paired)) if n else math.nan
    p = Estimate(point, min(low, point), max(high, point))
    return TimeComparison(
        ca.size, cb.size, paired, p, *significance(p), saved, pvalue, measurable,
        (reached_a, reached_b),
    )  # fmt: skip
