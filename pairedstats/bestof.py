"""Expected best of k seeds: what a paper that reports its best of k runs is comparable with.

The paper and its replication report the best of about 5 seeds; our mean is not that quantity.
From n runs, the expected maximum of k seeds is a weighted sum of the order statistics
x_(1) <= ... <= x_(n) (Dodge et al. 2019). ``order_weights`` gives the weights, one
computation for every view (the report's best-of-5 and the expected-max curve of
``dashboards/tuning.py``): for k <= n the unbiased U-statistic over k-subsets,
``w_i = C(i-1, k-1) / C(n, k)`` (x_(i) is the maximum of exactly C(i-1, k-1) of them; Dodge et
al.'s plug-in with replacement is biased downwards for k near n); for k > n, where no subset
exists, the plug-in ``w_i = (i/n)^k - ((i-1)/n)^k``. The interval resamples the n runs (an
order-statistic bootstrap, percentile; at n < 10 it is narrower than the truth, so a paper's
number just outside it is weak evidence and the report says "outside our interval", not
"contradicted").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import gammaln


class BestOf(NamedTuple):
    """Expected best of ``k`` seeds with its interval, from ``n`` runs."""

    k: int
    n: int
    value: float
    low: float
    high: float


def order_weights(n: int, k: int) -> np.ndarray:
    """Weights of the sorted values x_(1..n) in the expected best of ``k`` seeds (sum 1)."""
    if n < 1 or k < 1:
        raise ValueError(f"n and k must be at least 1, got n={n}, k={k}")
    i = np.arange(1, n + 1)
    if k > n:
        return (i / n) ** k - ((i - 1) / n) ** k
    with np.errstate(invalid="ignore", divide="ignore"):
        log_w = gammaln(i) - gammaln(k) - gammaln(np.maximum(i - k, 0) + 1)
        log_w -= gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)
    w = np.where(i >= k, np.exp(log_w), 0.0)
    return w / w.sum()  # exact up to rounding


def expected_max(values: np.ndarray, k: int) -> np.ndarray:
    """Expected best of ``k`` seeds from the runs on the last axis of ``values`` (shape
    ``(..., n)``, no NaNs); leading shape out."""
    x = np.sort(np.asarray(values, dtype=float), axis=-1)
    return x @ order_weights(x.shape[-1], k)


def best_of(
    values: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
) -> BestOf:
    """Expected best of ``k`` seeds from 1-D ``values`` (NaNs dropped) with an
    order-statistic bootstrap interval; NaN bounds below two runs."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        return BestOf(k, 0, math.nan, math.nan, math.nan)
    value = float(expected_max(x, k))
    if x.size < 2:
        return BestOf(k, 1, value, math.nan, math.nan)
    boot = expected_max(x[rng.integers(0, x.size, (n_resamples, x.size))], k)
    tail = (1 - confidence_level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return BestOf(k, int(x.size), value, float(min(low, value)), float(max(high, value)))
