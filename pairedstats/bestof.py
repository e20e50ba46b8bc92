"""Expected best of k seeds: what a paper that reports its best of k runs is comparable with.

The paper and its replication report the best of about 5 seeds; our mean is not that quantity.
From n runs, the expected maximum of k draws (with replacement) from their empirical
distribution is a weighted sum of the order statistics (Dodge et al. 2019):
``E[max_k] = sum_i x_(i) * ((i/n)^k - ((i-1)/n)^k)``. Its interval resamples the n runs
(an order-statistic bootstrap, percentile; at n < 10 it is narrower than the truth, so a
paper's number just outside it is weak evidence and the report says "outside our interval",
not "contradicted").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class BestOf(NamedTuple):
    """Expected best of ``k`` seeds with its interval, from ``n`` runs."""

    k: int
    n: int
    value: float
    low: float
    high: float


def expected_max(values: np.ndarray, k: int) -> np.ndarray:
    """Expected best of ``k`` draws from the runs on the last axis of ``values`` (shape
    ``(..., n)``, no NaNs); leading shape out."""
    x = np.sort(np.asarray(values, dtype=float), axis=-1)
    n = x.shape[-1]
    i = np.arange(1, n + 1)
    w = (i / n) ** k - ((i - 1) / n) ** k
    return x @ w


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
