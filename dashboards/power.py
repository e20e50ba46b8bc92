"""How many seeds a question needs: the power of the comparison a check makes.

For an inconclusive check the report says how many seeds per arm would settle it (Colas et
al. 2018, "How many random seeds?"): the seeds a two-sided t-test needs to detect the
observed effect at alpha 0.05 with power 0.8. statsmodels solves the power equation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as sps
from statsmodels.stats.power import TTestIndPower

from dashboards.stats import as_1d


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
    a = as_1d(a, "a")
    b = as_1d(b, "b")
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
