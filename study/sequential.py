"""Sequential seed allocation: how many paired seeds a comparison needs, decided as the seeds
come in, with the error of the final decision controlled across every interim look.

The design (``SequentialDesign``) is a group-sequential, paired sign-flip permutation test,
the paired counterpart of AdaStop (Mathieu et al., 2023, a sequential permutation test
for comparing agents over seeds):

* a comparison is a configuration against its vanilla baseline on the same seeds; its data
  are the paired differences ``d_i = metric(config, seed i) - metric(baseline, seed i)``
  (sign-corrected so that positive means "the configuration is better");
* looks happen at planned seed counts ``n_1 < n_2 < ... <= n_max`` (``min_seeds``, then one
  ``seed_block`` more per look, up to ``max_seeds``);
* the statistic at look k is the mean difference over the first ``n_k`` seeds; its null
  distribution comes from flipping the signs of the differences (under "no difference" the
  two arms of a seed are exchangeable, so every sign pattern is equally likely), with the
  SAME sign patterns at every look (a fixed, seeded set of ``B`` patterns of length
  ``n_max``, the identity first), which gives the joint distribution of the statistic across
  looks;
* alpha is spent over the looks with a Lan-DeMets spending function of the information
  fraction ``t = n_k / n_max`` (``pocock``: ``alpha ln(1 + (e - 1) t)``, spends early, the
  default since stopping early is the point; ``obrien-fleming``: ``2 - 2 Phi(z_{alpha/2} /
  sqrt t)``, spends late): the boundary ``c_k`` is the smallest value such that the share of
  sign patterns whose |statistic| exceeds ``c_k`` at look k, and exceeded no earlier
  boundary, is at most the alpha spent at look k. Summed over looks, at most ``alpha`` of
  the patterns ever cross, whatever the looks were, so P(a wrong "better"/"worse") <= alpha;
* "better" when the observed mean exceeds ``+c_k``, "worse" below ``-c_k``;
* optionally "equivalent" (``margin``): the effect is surely inside ``(-margin, +margin)``:
  two one-sided sign-flip tests of the differences shifted by the margin both reject at the
  alpha spent at that look (the looks' levels sum to alpha: a union bound, valid under
  differences symmetric about their mean). Stopping for equivalence never raises the error
  of a "better"/"worse" decision (it only removes chances to reject);
* otherwise "undecided" at ``n_max`` seeds ("capped") or when the compute budget is spent.

Why not a library: AdaStop (``adastop`` on PyPI) is unpaired (it permutes runs between
agents, which discards the pairing of seeds that this study is built on) and brings
matplotlib and pandas; ``confseq``'s betting confidence sequences are anytime-valid but,
for differences bounded only by [-1, 1], decide nothing in under ~20 seeds even for large
effects. The sign-flip construction is exact for any distribution of the differences and
small enough to test by simulation (``tests/study/test_sequential.py``).

Every function here is a pure function of the data and the design: the decision at every
look is recomputed from the differences seen so far, so a resumed study re-derives exactly
the decisions it had (no state but the data).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

BETTER, WORSE, EQUIVALENT = "better", "worse", "equivalent"
UNDECIDED = "undecided"
DECIDED = (BETTER, WORSE, EQUIVALENT)
#: why a comparison stopped: decided at a look, at max_seeds, or the study's budget was spent
STOP_DECIDED, STOP_CAPPED, STOP_BUDGET = "decided", "max_seeds", "budget"
SPENDING = ("pocock", "obrien-fleming")


def spent(t: float, alpha: float, kind: str) -> float:
    """Lan-DeMets alpha spent by information fraction ``t`` in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    if t == 0.0:
        return 0.0
    if kind == "pocock":
        return alpha * math.log(1.0 + (math.e - 1.0) * t)
    if kind == "obrien-fleming":
        return float(2.0 - 2.0 * stats.norm.cdf(stats.norm.ppf(1.0 - alpha / 2.0) / math.sqrt(t)))
    raise ValueError(f"alpha spending must be one of {', '.join(SPENDING)}, got {kind!r}")


@dataclass(frozen=True)
class SequentialDesign:
    """The plan of one comparison: looks at ``min_seeds``, ``+ seed_block``, ... up to
    ``max_seeds`` paired seeds; two-sided level ``alpha``; optional equivalence ``margin``."""

    min_seeds: int = 8
    seed_block: int = 4
    max_seeds: int = 32
    alpha: float = 0.05
    spending: str = "pocock"
    margin: float | None = None
    patterns: int = 4096  # B sign patterns (all of them when 2^max_seeds is fewer)

    def __post_init__(self):
        if self.min_seeds < 2:
            raise ValueError(f"min_seeds must be an integer >= 2, got {self.min_seeds}")
        if self.seed_block < 1:
            raise ValueError(f"seed_block must be an integer >= 1, got {self.seed_block}")
        if self.max_seeds < self.min_seeds:
            raise ValueError(
                f"max_seeds ({self.max_seeds}) must be >= min_seeds ({self.min_seeds})"
            )
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.spending not in SPENDING:
            raise ValueError(f"alpha spending must be one of {', '.join(SPENDING)}")
        if self.margin is not None and not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")

    @property
    def looks(self) -> list[int]:
        """Seed counts at which the comparison is looked at."""
        out = [self.min_seeds]
        while out[-1] < self.max_seeds:
            out.append(min(out[-1] + self.seed_block, self.max_seeds))
        return out

    def can_decide_at(self, look: int) -> bool:
        """Whether any data could be decided at this look: the two most extreme sign
        patterns (all +, all -) must fit in the alpha spent there."""
        return 2.0 / 2 ** self.looks[look] <= self.alpha_at(look)

    def seeds_at_look(self, look: int) -> int:
        return self.looks[look]

    def alpha_at(self, look: int) -> float:
        """Alpha spent at this look (not cumulative)."""
        t = [n / self.max_seeds for n in self.looks]
        before = spent(t[look - 1], self.alpha, self.spending) if look else 0.0
        return spent(t[look], self.alpha, self.spending) - before

    def signs(self, key: str) -> np.ndarray:
        """The fixed sign patterns of one comparison, ``(B, max_seeds)`` of +-1, the identity
        first, seeded by ``key`` (the configuration id), so every look and every resumed
        driver uses the same ones."""
        n = self.max_seeds
        if 2**n <= self.patterns:
            grid = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * -2 + 1
            return grid.astype(np.float64)  # row 0 is all +1
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        flips = rng.integers(0, 2, size=(self.patterns, n)) * -2 + 1
        flips[0] = 1
        return flips.astype(np.float64)


@dataclass
class Look:
    look: int
    seeds: int
    mean: float
    boundary: float  # |mean| beyond this: decided better / worse
    alpha: float  # spent at this look
    decision: str  # better, worse, equivalent or undecided


@dataclass
class Analysis:
    """Every look so far of one comparison, and where it stands."""

    looks: list[Look] = field(default_factory=list)
    decision: str = UNDECIDED
    decided_at: int | None = None  # look index (0-based) of the decision

    @property
    def seeds(self) -> int:
        return self.looks[-1].seeds if self.looks else 0


def analyse(diffs, design: SequentialDesign, key: str) -> Analysis:
    """The decisions at every look that the differences so far allow (seed order as run).

    Looks are taken at ``design.looks`` while enough differences exist; the analysis stops at
    the first decided look (later data, if any, do not reopen it)."""
    d = np.asarray(diffs, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError("paired differences must be finite (map failed runs to a value first)")
    out = Analysis()
    signs = design.signs(key)
    crossed = np.zeros(signs.shape[0], dtype=bool)  # patterns past an earlier boundary
    B = signs.shape[0]
    for k, n in enumerate(design.looks):
        if n > d.size:
            break
        x = d[:n]
        flipped = np.abs(signs[:, :n] @ x) / n
        a_k = design.alpha_at(k)
        boundary = _boundary(flipped, crossed, a_k, B)
        crossed |= flipped > boundary
        mean = float(x.mean())
        decision = UNDECIDED
        if abs(mean) > boundary:
            decision = BETTER if mean > 0 else WORSE
        elif design.margin is not None and _equivalent(x, signs[:, :n], design.margin, a_k):
            decision = EQUIVALENT
        out.looks.append(Look(k, n, mean, boundary, a_k, decision))
        if decision != UNDECIDED:
            out.decision, out.decided_at = decision, k
            break
    return out


def _boundary(flipped: np.ndarray, crossed: np.ndarray, level: float, B: int) -> float:
    """Smallest c with #{patterns not crossed before, |stat| > c} <= level * B."""
    allowed = int(math.floor(level * B + 1e-9))
    live = np.sort(flipped[~crossed])[::-1]
    if allowed >= live.size:
        return -math.inf if live.size == 0 else float(live[-1]) - 1.0
    if allowed == 0:
        return float(live[0])
    # the allowed largest values may exceed c; ties at the cut must not
    c = float(live[allowed])
    return c


def _equivalent(x: np.ndarray, signs: np.ndarray, margin: float, level: float) -> bool:
    """Two one-sided sign-flip tests: mean < +margin and mean > -margin, each at ``level``."""
    if level <= 0:
        return False
    n = x.size
    for shift, sense in ((margin, -1.0), (-margin, 1.0)):
        y = x - shift  # under the boundary hypothesis, symmetric about 0
        observed = sense * y.mean()
        flipped = sense * (signs @ y) / n
        p = float(np.mean(flipped >= observed - 1e-12))
        if p > level:
            return False
    return True


# -- planning: fixed designs and expected sequential cost ----------------------------------


def fixed_seeds(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Paired seeds a fixed design needs: the smallest n whose two-sided paired t-test at
    ``alpha`` detects a mean difference ``effect`` (SD of differences ``sd``) with ``power``.
    None when there is no effect to detect."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0:
        return None
    if sd <= 0:
        return 2
    delta = abs(effect) / sd
    for n in range(2, 100_000):
        df = n - 1
        crit = stats.t.ppf(1 - alpha / 2, df)
        nc = delta * math.sqrt(n)
        achieved = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
        if achieved >= power:
            return n
    return None


def fixed_power(n: int, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the fixed two-sided paired t-test with n seeds."""
    if n < 2 or sd <= 0:
        return float("nan")
    df, nc = n - 1, abs(effect) / sd * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


@dataclass
class Simulation:
    studies: int
    decided_rate: float  # any decision
    better_rate: float
    worse_rate: float
    equivalent_rate: float
    mean_seeds: float


def simulate(
    design: SequentialDesign,
    effect: float,
    sd: float,
    studies: int = 500,
    seed: int = 0,
    sampler=None,
) -> Simulation:
    """Run the design on ``studies`` simulated comparisons whose paired differences are drawn
    i.i.d. (normal ``effect``, ``sd`` unless ``sampler(rng, n)`` is given)."""
    rng = np.random.default_rng(seed)
    counts = {BETTER: 0, WORSE: 0, EQUIVALENT: 0}
    seeds = 0
    for i in range(studies):
        d = sampler(rng, design.max_seeds) if sampler else rng.normal(effect, sd, design.max_seeds)
        result = analyse(d, design, key=f"simulation-{seed}-{i}")
        if result.decision in counts:
            counts[result.decision] += 1
        seeds += result.seeds
    decided = sum(counts.values())
    return Simulation(
        studies=studies,
        decided_rate=decided / studies,
        better_rate=counts[BETTER] / studies,
        worse_rate=counts[WORSE] / studies,
        equivalent_rate=counts[EQUIVALENT] / studies,
        mean_seeds=seeds / studies,
    )
