"""Seeds needed for an inconclusive check: a thin use of :mod:`pairedstats.power`, the one
power function the report, the planner and the sequential design share.

Paired checks take the power of the paired t-test on the per-seed differences; unpaired ones
the same function with the SD of a difference of two independent runs (sqrt(var A + var B)),
which is the two-sample power with equal arms. The power is that of the check's own decision:
the treatment better at one-sided alpha/2 (the two-sided 95% test), or inside / above a
margin. Where no number is defined the result carries the reason instead.
"""

from __future__ import annotations

import math

import numpy as np

from dashboards.stats import as_1d
from pairedstats.power import AGAINST, TOO_FEW, SeedsNeeded, paired_seeds_needed

#: reasons only the report knows
NONE_SUCCEEDED = "no run in either arm succeeded"
ALL_CENSORED = "every run in both arms was censored (none reached the threshold)"


def seeds_needed(
    a: np.ndarray,
    b: np.ndarray,
    *,
    paired: bool,
    comparison: str = "better",
    margin: float = 0.0,
    alpha: float = 0.05,
    power: float = 0.8,
) -> SeedsNeeded:
    """Seeds per arm that the check's decision needs to reach ``power`` at the observed effect.

    Args:
        a: treatment values, b: baseline values, oriented so that larger is better
            (``n`` each and matched by seed when ``paired``).
        comparison: ``better`` (one-sided at alpha/2 on the mean difference), ``not_worse``
            (the difference above ``-margin``) or ``equivalent`` (inside ``+-margin``).
    """
    a = as_1d(a, "a")
    b = as_1d(b, "b")
    if paired:
        keep = ~(np.isnan(a) | np.isnan(b))
        a, b = a[keep], b[keep]
    else:
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if min(a.size, b.size) < 2:
        return SeedsNeeded.not_applicable(TOO_FEW)
    if paired:
        effect, sd = float(np.mean(a - b)), float(np.std(a - b, ddof=1))
    else:
        effect = float(a.mean() - b.mean())
        sd = math.sqrt(a.var(ddof=1) + b.var(ddof=1))
    if comparison == "not_worse":
        effect += margin
    elif comparison == "equivalent":
        effect = margin - abs(effect)
    if effect < 0:
        return SeedsNeeded.not_applicable(AGAINST)
    return paired_seeds_needed(effect, sd, alpha=alpha / 2, power=power, alternative="larger")
