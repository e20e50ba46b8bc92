"""The worst case over learning rates: a conservative interval and test of its difference.

The learning-rate robustness check compares two arms by their worst mean over the learning
rates both ran (the paper's Fig 6 question): ``W_A - W_B`` with ``W = min_l mu(l)`` (values
oriented so that higher is better). A bootstrap of the minimum of a few means is biased and
too narrow at the 3-10 seeds per learning rate a study has, and no library ships a test of
it, so it is written here, on Student-t bounds and Bonferroni:

* a lower bound of ``W_A`` is ``min_l`` of the lower t bounds of ``mu_A(l)``: it is below
  ``W_A`` whenever every one of the L bounds holds;
* an upper bound of ``W_B`` is ``min_l`` of the upper t bounds of ``mu_B(l)``: it is above
  ``W_B`` whenever every one holds (if ``W_B`` exceeded it, the learning rate of that bound
  would have its bound broken).

With each one-sided bound at level ``q = alpha / (4 L)``, each side of the two-sided
``1 - alpha`` interval of ``W_A - W_B`` fails with probability at most ``2 L q = alpha / 2``,
whatever the true means and however the learning rates' seeds correlate. The p-value is the
smallest alpha whose interval excludes 0 (found by bisection). Bonferroni over L makes the
rule conservative: the calibration (``benchmarks/calibration.py``) shows how much.

Arrays are ``(..., L, n)``: leading axes are independent studies, L learning rates, n seeds;
NaN marks a missing run (learning rates may have different numbers of seeds).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

#: bisection steps for the p-value (2^-40 of the unit interval)
_STEPS = 40


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per learning rate: mean, standard error and degrees of freedom (NaN below 2 seeds)."""
    n = np.sum(~np.isnan(x), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(x, axis=-1) if x.size else np.zeros(x.shape[:-1])
        sd = np.sqrt(np.nansum((x - mean[..., None]) ** 2, axis=-1) / (n - 1))
        se = np.where(n >= 2, sd / np.sqrt(n), np.nan)
    return mean, se, np.where(n >= 2, n - 1, np.nan)


def _bounds(ma, sa, fa, mb, sb, fb, q) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) bound of ``W_A - W_B`` from each arm's :func:`_moments`, with every
    one-sided t bound at level ``q`` (``q`` broadcasts against the leading axes)."""
    qq = np.asarray(q, dtype=float)[..., None]
    ta, tb = sps.t.isf(qq, fa), sps.t.isf(qq, fb)
    low = np.min(ma - ta * sa, axis=-1) - np.min(mb + tb * sb, axis=-1)
    high = np.min(ma + ta * sa, axis=-1) - np.min(mb - tb * sb, axis=-1)
    return low, high


def _stack(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim < 2 or a.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"arms need shapes (..., L, n) with equal (..., L): {a.shape}, {b.shape}")
    return a, b


def worst_case_interval(a, b, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The conservative two-sided ``1 - alpha`` interval of ``W_A - W_B``: ``(low, high)``
    with the leading shape; NaN where a learning rate has fewer than 2 seeds in an arm."""
    a, b = _stack(a, b)
    L = a.shape[-2]
    return _bounds(*_moments(a), *_moments(b), np.full(a.shape[:-2], alpha / (4 * L)))


def worst_case_pvalue(a, b) -> np.ndarray:
    """Two-sided p-value of ``W_A = W_B``: the smallest alpha whose interval
    (:func:`worst_case_interval`) excludes 0; 1 when none does, NaN where undefined."""
    a, b = _stack(a, b)
    L = a.shape[-2]
    shape = a.shape[:-2]
    lo, hi = np.zeros(shape), np.ones(shape)  # p in (lo, hi]: the interval at hi excludes 0
    moments = (*_moments(a), *_moments(b))  # the bisection moves only the t quantiles
    low1, high1 = _bounds(*moments, np.full(shape, 1 / (4 * L)))
    undefined = np.isnan(low1) | np.isnan(high1)
    never = ~undefined & ~((low1 > 0) | (high1 < 0))  # not even at alpha = 1
    for _ in range(_STEPS):
        mid = (lo + hi) / 2
        low, high = _bounds(*moments, mid / (4 * L))
        excludes = (low > 0) | (high < 0)
        hi = np.where(excludes, mid, hi)
        lo = np.where(excludes, lo, mid)
    return np.where(undefined, np.nan, np.where(never, 1.0, hi))
