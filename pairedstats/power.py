"""Seeds needed: the one power function of the project.

Every comparison the project makes is paired by seed, so its power is that of the one-sample
t-test on the paired differences (statsmodels' ``TTestPower``), never the two-sample power of
the arms, which ignores the correlation the pairing creates (STATISTICS.md). The report's
"seeds needed", the planner (``hdetach-study plan``) and the sequential design all call
:func:`paired_seeds_needed`.

"Not applicable" is a result, not a number: :class:`SeedsNeeded` carries ``seeds`` (a whole
number, or None) and ``reason`` (why there is no number), so no view prints infinity for a
quantity that is not defined.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

from scipy import stats as sps
from statsmodels.stats.power import TTestPower

#: a cap past which a figure is reported as "more than" (no study runs 10,000 seeds per arm)
MAX_SEEDS = 10_000

#: reasons a seed count is not defined
NO_EFFECT = "no effect to detect (the observed difference is zero)"
AGAINST = "the observed effect points against the claim"
TOO_FEW = "fewer than 2 paired seeds"
NOT_FINITE = "the effect or its spread is not finite"


class SeedsNeeded(NamedTuple):
    """Paired seeds per arm, or why there is no such number.

    ``seeds``: whole seeds (>= 2) or None; ``capped``: True when the true figure is above
    ``MAX_SEEDS`` (``seeds`` is then ``MAX_SEEDS``); ``reason``: None when ``seeds`` is a
    number, else one of the module's reasons (or a caller's own sentence)."""

    seeds: int | None
    capped: bool = False
    reason: str | None = None

    @classmethod
    def not_applicable(cls, reason: str) -> SeedsNeeded:
        return cls(None, False, reason)


def paired_power(
    n: int, effect: float, sd: float, *, alpha: float = 0.05, alternative: str = "two-sided"
) -> float:
    """Power of the paired t-test with ``n`` pairs to detect a mean difference ``effect``
    whose differences have standard deviation ``sd``; NaN where undefined (n < 2, sd <= 0)."""
    if n < 2 or not sd > 0 or not math.isfinite(effect):
        return math.nan
    alt = {"two-sided": "two-sided", "larger": "larger", "smaller": "smaller"}[alternative]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            TTestPower().power(effect_size=effect / sd, nobs=n, alpha=alpha, alternative=alt)
        )


def paired_seeds_needed(
    effect: float,
    sd: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: str = "two-sided",
) -> SeedsNeeded:
    """Paired seeds a fixed design needs: the smallest n whose paired t-test at ``alpha``
    detects a mean difference ``effect`` (SD of the differences ``sd``) with ``power``.

    ``alternative="larger"`` is a one-sided test of ``effect > 0``: an ``effect <= 0`` then has
    no seed count (``AGAINST``). Two-sided, the sign does not matter.
    """
    if not (math.isfinite(effect) and math.isfinite(sd)):
        return SeedsNeeded.not_applicable(NOT_FINITE)
    if alternative == "larger" and effect < 0:
        return SeedsNeeded.not_applicable(AGAINST)
    if effect == 0:
        return SeedsNeeded.not_applicable(NO_EFFECT)
    if sd <= 0:
        return SeedsNeeded(2)
    effect = abs(effect) if alternative == "two-sided" else effect
    for n in (2, 3):  # the root finder's bracket starts above tiny n
        if paired_power(n, effect, sd, alpha=alpha, alternative=alternative) >= power:
            return SeedsNeeded(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            n = float(
                TTestPower().solve_power(
                    effect_size=effect / sd, alpha=alpha, power=power, alternative=alternative
                )
            )
        except Exception:  # statsmodels' root finder gives up on tiny effects
            n = math.nan
    if not math.isfinite(n):
        # Tiny effects: the normal approximation is accurate at such n.
        tails = 2 if alternative == "two-sided" else 1
        z = sps.norm.ppf(1 - alpha / tails) + sps.norm.ppf(power)
        n = (z * sd / effect) ** 2
    if n > 2 * MAX_SEEDS:  # far past the cap: an effect of 1e-19 SD would overflow the t df
        return SeedsNeeded(MAX_SEEDS, capped=True)
    n = math.ceil(n - 1e-9)
    # solve_power is a continuous root: step to the first whole n that reaches the power
    while n > 2 and paired_power(n - 1, effect, sd, alpha=alpha, alternative=alternative) >= power:
        n -= 1
    while (
        n <= MAX_SEEDS and paired_power(n, effect, sd, alpha=alpha, alternative=alternative) < power
    ):
        n += 1
    if n > MAX_SEEDS:
        return SeedsNeeded(MAX_SEEDS, capped=True)
    return SeedsNeeded(max(2, n))
