"""The shape gate: whether paired differences are symmetric enough for a t verdict at n pairs.

No test of a mean keeps its level for every skewed distribution at a fixed n (Bahadur &
Savage 1956), and a paired t-test on skewed differences errs *in one direction*: a sample
that missed the rare large differences looks too good on the other side. Every verdict is
directional ("better", "worse", "not worse"), so what matters is the error of a one-sided t
statement at level ``a`` (0.025 for a 95% interval). Its first Edgeworth term (Hall 1992,
*The Bootstrap and Edgeworth Expansion*, sec. 2.6) is

    P(T > z_{1-a}) - a  ~  gamma (2 z^2 + 1) phi(z) / (6 sqrt(n)),

with ``gamma`` the skewness of the differences. Asking that term to stay within
``TOLERANCE`` (0.01, Cochran's own: his rule n >= 25 gamma^2 keeps a 95% statement at 94% or
more) gives the pairs a t verdict needs:

    n >= K gamma^2,  K = ((2 z^2 + 1) phi(z) / (6 TOLERANCE))^2  (71.5 at a = 0.025).

The skewness of the n differences of one comparison is far too noisy for this (the sample
skewness of 10 normal values has an SD of about 0.7, and a sample that missed the rare large
values looks symmetric exactly when the t-test errs). So ``gamma`` is estimated from a *pool*:
every paired difference of the same metric that the data hold (every configuration or setup
compared with its baseline), each group centred on its own mean, by the ratio of the groups'
pooled k-statistics (unbiased third and second cumulants, Fisher 1930). Groups on different
scales only make the estimate larger (the ratio weights the wider groups), never smaller, so
the gate errs on the side of withholding.

A verdict the gate withholds is "inconclusive" with the pairs the pooled skewness asks for;
it never turns into the opposite verdict, so the gate only lowers every error rate. What it
costs in power is measured (``benchmarks/calibration.py``, docs/statistics.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: the first-order error a one-sided t statement may carry from skewness (Cochran's 0.01)
TOLERANCE = 0.01
#: the one-sided level of every t statement the verdicts make (a 95% interval's side)
LEVEL = 0.025


def factor(level: float = LEVEL, tolerance: float = TOLERANCE) -> float:
    """K of ``n >= K gamma^2``: ((2 z^2 + 1) phi(z) / (6 tolerance))^2, z = z_{1-level}."""
    z = sps.norm.ppf(1.0 - level)
    return float(((2.0 * z * z + 1.0) * sps.norm.pdf(z) / (6.0 * tolerance)) ** 2)


K = factor()


def pooled_skewness(groups: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Skewness of the pooled groups: sum of the groups' k3 over (mean of their k2)^1.5,
    each group weighted by its size and centred on its own mean; groups under 3 values are
    left out. ``groups``: an array ``(..., G, n)`` (vectorised over the leading axes) or an
    iterable of 1-D arrays of any sizes. NaN where no group has 3 values or none has spread.
    """
    if isinstance(groups, np.ndarray):
        x = np.asarray(groups, dtype=float)
        n = x.shape[-1]
        if n < 3:
            return np.full(x.shape[:-2], np.nan)
        c = x - x.mean(axis=-1, keepdims=True)
        k2 = np.sum(c * c, axis=-1) / (n - 1)
        k3 = n * np.sum(c**3, axis=-1) / ((n - 1) * (n - 2))
        big2, big3 = k2.mean(axis=-1), k3.mean(axis=-1)
    else:
        w2 = w3 = weight = 0.0
        for g in groups:
            g = np.asarray(g, dtype=float).ravel()
            n = g.size
            if n < 3:
                continue
            c = g - g.mean()
            w2 += n * float(np.sum(c * c)) / (n - 1)
            w3 += n * n * float(np.sum(c**3)) / ((n - 1) * (n - 2))
            weight += n
        if weight == 0:
            return np.asarray(np.nan)
        big2, big3 = np.asarray(w2 / weight), np.asarray(w3 / weight)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = big3 / big2**1.5
    return np.where(big2 > 1e-300, gamma, np.nan)


def pairs_needed(gamma: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """Pairs a one-sided t statement at ``level`` needs at skewness ``gamma``: ceil(K
    gamma^2), at least 2. NaN stays NaN (no skewness: see :func:`allows`)."""
    g = np.asarray(gamma, dtype=float)
    need = np.ceil(factor(level) * g * g - 1e-9)
    return np.where(np.isnan(g), np.nan, np.maximum(2.0, need))


def allows(n: np.ndarray | int, gamma: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """Whether a t verdict on ``n`` pairs passes the gate at pooled skewness ``gamma``.

    Where the skewness is not defined (no pooled group of 3 with any spread) the gate passes:
    differences that are all equal within every group have no shape to be wrong about, and
    the t-test's own rule for them (``pairedstats.tests.mean_pvalue``) decides."""
    need = pairs_needed(gamma, level)
    return np.isnan(need) | (np.asarray(n) >= np.nan_to_num(need, nan=0.0))


@dataclass(frozen=True)
class Shape:
    """The pooled shape of one metric's paired differences: the skewness, how many
    differences and groups it rests on, and what it allows."""

    gamma: float
    values: int
    groups: int

    @classmethod
    def of(cls, groups: Iterable[np.ndarray]) -> Shape:
        kept = [np.asarray(g, dtype=float).ravel() for g in groups]
        kept = [g[np.isfinite(g)] for g in kept]
        kept = [g for g in kept if g.size >= 3]
        gamma = float(pooled_skewness(kept)) if kept else math.nan
        return cls(gamma, int(sum(g.size for g in kept)), len(kept))

    def needed(self) -> int | None:
        """Pairs a t verdict needs (None: no skewness, nothing asked)."""
        need = float(pairs_needed(self.gamma))
        return None if math.isnan(need) else int(need)

    def allows(self, n: int) -> bool:
        return bool(allows(n, self.gamma))

    def words(self) -> str:
        return (
            f"skewness {self.gamma:.2f} pooled over {self.values} paired differences in "
            f"{self.groups} comparison{'s' if self.groups != 1 else ''}"
        )
