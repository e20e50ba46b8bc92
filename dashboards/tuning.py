"""Tuning: how a metric depends on the learning rate, and what a search budget buys.

Learning-rate robustness compares arms at their worst learning rate (the paper's Fig 6
question); the expected best value among n trials is Dodge et al.'s (2019) tuning-budget
curve. Pure functions on numpy arrays, bootstrap intervals as in :mod:`dashboards.stats`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from dashboards.stats import (
    CONFIDENCE,
    N_RESAMPLES,
    NAN,
    Estimate,
    as_1d,
    check_confidence,
    quantile_ci,
)
from pairedstats import worstcase
from pairedstats.bestof import order_weights
from pairedstats.streams import keyed_rng


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
# Learning-rate robustness


def _lr_groups(lr: np.ndarray, values: np.ndarray) -> dict[float, np.ndarray]:
    """The finite values of each learning rate, by increasing learning rate."""
    lr = as_1d(lr, "lr")
    values = as_1d(values, "values")
    if lr.shape != values.shape:
        raise ValueError(f"lr and values need equal lengths, got {lr.size} and {values.size}")
    keep = ~np.isnan(values) & ~np.isnan(lr)
    lr, values = lr[keep], values[keep]
    return {x: values[lr == x] for x in np.unique(lr)}


def _boot_means(groups: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """Bootstrap means per group (seeds resampled within each): ``n x len(groups)``.

    Each group's stream is keyed by its values (``rng`` is not used), so one learning rate's
    resamples are the same in every view and do not move when other runs are added."""
    del rng
    out = np.empty((n, len(groups)))
    for j, v in enumerate(groups):  # a handful of learning rates, not runs
        g = keyed_rng(0, "lr-group-mean", n, np.asarray(v, dtype=float).tobytes())
        out[:, j] = v[g.integers(0, v.size, size=(n, v.size))].mean(axis=-1)
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
    check_confidence(confidence_level)
    by_lr = _lr_groups(lr, values)
    lrs = np.array(list(by_lr), dtype=float)
    if lrs.size == 0:
        return LrRobustness(lrs, np.empty(0), math.nan, NAN, NAN)
    groups = list(by_lr.values())
    means = np.array([v.mean() for v in groups])
    pick = np.argmin if higher_is_better else np.argmax
    worst_idx = int(pick(means))
    boot = _boot_means(groups, rng, n_resamples)
    boot_worst = boot.min(axis=1) if higher_is_better else boot.max(axis=1)
    boot_spread = boot.max(axis=1) - boot.min(axis=1)
    few = min(v.size for v in groups) < 2
    wl, wh = (math.nan, math.nan) if few else quantile_ci(boot_worst, confidence_level)
    sl, sh = (math.nan, math.nan) if few else quantile_ci(boot_spread, confidence_level)
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
    *,
    higher_is_better: bool = True,
    confidence_level: float = CONFIDENCE,
) -> tuple[Estimate, float]:
    """Worst-case mean of A minus that of B over their common learning rates, with the
    conservative t/Bonferroni interval and two-sided p-value of
    :mod:`pairedstats.worstcase` (its docstring says why not a bootstrap): ``(estimate, p)``.

    Oriented so that a positive value means A's worst case is better.

    Args:
        lr_a, values_a: ``n_a`` runs of arm A; lr_b, values_b: ``n_b`` runs of arm B.
    """
    check_confidence(confidence_level)
    by_lr_a = _lr_groups(lr_a, values_a)
    by_lr_b = _lr_groups(lr_b, values_b)
    common = [x for x in by_lr_a if x in by_lr_b]
    if not common:
        return NAN, math.nan
    sign = 1.0 if higher_is_better else -1.0
    a = _padded([sign * by_lr_a[x] for x in common])
    b = _padded([sign * by_lr_b[x] for x in common])
    value = float(np.min(np.nanmean(a, axis=-1)) - np.min(np.nanmean(b, axis=-1)))
    low, high = worstcase.worst_case_interval(a, b, 1.0 - confidence_level)
    p = float(worstcase.worst_case_pvalue(a, b))
    return Estimate(value, float(low), float(high)), p


def _padded(groups: list[np.ndarray]) -> np.ndarray:
    """Groups of unequal size as one ``(len(groups), max size)`` array, NaN-padded."""
    out = np.full((len(groups), max(v.size for v in groups)), np.nan)
    for j, v in enumerate(groups):
        out[j, : v.size] = v
    return out


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
        formula samples with replacement and is biased for n close to N. The weights are
    ``pairedstats.bestof.order_weights``, the ones the report's best-of-5 uses.

        Args:
            values: ``num_trials`` best validation values; NaNs are dropped.

        Returns:
            arrays of length N (empty when no values).
    """
    v = np.sort(as_1d(values, "values"))
    v = v[~np.isnan(v)]
    w = np.zeros((v.size, v.size))
    for n in range(1, v.size + 1):
        w[n - 1] = order_weights(v.size, n)
    mean = w @ v
    second = w @ (v * v)
    std = np.sqrt(np.maximum(second - mean * mean, 0.0))
    n = np.arange(1, v.size + 1)
    return ExpectedMax(n_trials=n, mean=mean, std=std)
