"""Sequential seed allocation: how many paired seeds a comparison needs, decided as the seeds
come in, with the error of the final decision controlled across every interim look.

The design (``SequentialDesign``) is a group-sequential, paired sign-flip test of a zero
mean difference:

* a comparison is a configuration against its vanilla baseline on the same seeds; its data
  are the paired differences ``d_i = metric(config, seed i) - metric(baseline, seed i)``
  (sign-corrected so that positive means "the configuration is better");
* looks happen at planned seed counts ``n_1 < n_2 < ... <= n_max`` (``min_seeds``, then one
  ``seed_block`` more per look, up to ``max_seeds``);
* the statistic at look k is the one-sample t statistic of the first ``n_k`` differences,
  ``sqrt(n) mean / sd``. Its reference distribution comes from flipping the signs of the
  differences with the SAME fixed, seeded set of ``B`` sign patterns at every look (the
  identity first), which gives the statistic's joint distribution across looks;
* alpha is spent over the looks with a Lan-DeMets spending function of the information
  fraction ``t = n_k / n_max`` (``pocock``: ``alpha ln(1 + (e - 1) t)``, spends early, the
  default since stopping early is the point; ``obrien-fleming``: ``2 - 2 Phi(z_{alpha/2} /
  sqrt t)``, spends late): the boundary ``c_k`` is the smallest value such that the share of
  sign patterns whose |t| exceeds ``c_k`` at look k, and exceeded no earlier boundary, is at
  most the alpha spent at look k;
* "better" when the observed t exceeds ``+c_k``, "worse" below ``-c_k``;
* optionally "equivalent" (``margin``): the mean is surely inside ``(-margin, +margin)``:
  both one-sided t-tests of the TOST (scipy's ``ttest_1samp`` against ``-margin`` and
  ``+margin``) reject at the alpha spent at that look (the looks' levels sum to alpha: a
  union bound). Stopping for equivalence never raises the error of a "better"/"worse"
  decision (it only removes chances to reject);
* the shape gate (``pairedstats/shape.py``): a decision ("better", "worse" or
  "equivalent") at a look of n seeds is taken only when ``n >= K gamma^2`` (K = 71.5), with
  ``gamma`` the skewness of the metric's paired differences pooled over the study's
  comparisons (passed in: ``gamma``; None: no gate). A look the gate holds back goes on to the
  next look, as an undecided one does; the boundaries and p-values are computed as without
  the gate (it only removes decisions);
* otherwise "undecided" at ``n_max`` seeds ("capped") or when the compute budget is spent.

What the test controls, measured (``benchmarks/calibration_study.py``, table in
``docs/study-statistics.md``). Flipping signs is exact when the differences are symmetric
about zero (normal, heavy-tailed, tied differences) and valid for a zero mean in large
samples whatever their shape (Romano 1990). Note that in this one-sample, paired setting
studentizing changes nothing: flipping signs keeps the sum of squares, so ``|t|`` is an
increasing function of ``|mean|`` under every pattern and both order the patterns alike (the
same boundaries, the same decisions; unlike the two-sample case of Chung & Romano 2013). The
statistic is reported as t because it is scale-free. At the study's small n, skewed
differences make the bare test (and TOST's one-sided t-tests) err in one direction: without
the gate, lognormal-shaped differences (skewness ~6) got "better"/"worse" in about 0.2 of
null studies at alpha 0.05, and "equivalent" at the margin on skewed, zero-inflated and
ceiling-piled differences in 0.13 to 0.2; no test of a mean keeps its level for every shape
at a fixed n (Bahadur & Savage 1956). With the gate every rule of the calibration stays at
alpha within its binomial error on every shape; what it costs is power on skewed metrics
(accuracies piled at a ceiling among them), whose comparisons then end "undecided" at
``max_seeds`` with the pairs the skewness asks for (more ``max_seeds``, or a less skewed
scale such as the log of a loss, let them decide).

Why not a library: AdaStop (``adastop`` on PyPI) is unpaired (it permutes runs between
agents, which discards the pairing of seeds that this study is built on); scipy's
``permutation_test`` flips signs but neither shares the patterns across looks nor spends
alpha; ``confseq``'s betting confidence sequences decide nothing in under ~20 seeds for
differences bounded only by [-1, 1].

Every function here is a pure function of the data, the design and the pooled skewness of
each look: the decision at every look is recomputed from the differences seen so far and the
skewness recorded for that look when it was first analysed (the searcher keeps those with
the configuration, in its saved state, and in the ledger of ``study/shape_ledger.py`` for a
look analysed after the last save), so a resumed study re-derives the decisions it had.
:func:`run_design` takes many studies at once (the calibration's simulations call the very
code the study runs). The study's side of it sits at the end: the plan of ``--seeds auto``
(``SequentialPlan``), the paired differences a look analyses, and what a stopped
configuration records (``Outcome``, ``Comparison``); the searcher (``study/searcher.py``)
keeps the configurations and calls these.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from pairedstats import shape as gate
from pairedstats.power import paired_seeds_needed
from trainables.contract import SCORE_METRIC

BETTER, WORSE, EQUIVALENT = "better", "worse", "equivalent"
UNDECIDED = "undecided"
DECIDED = (BETTER, WORSE, EQUIVALENT)
#: why a comparison stopped: decided at a look, at max_seeds, or the study's budget was spent
STOP_DECIDED, STOP_CAPPED, STOP_BUDGET = "decided", "max_seeds", "budget"
SPENDING = ("pocock", "obrien-fleming")
#: decision codes of :func:`run_design` (one small integer per study)
CODES = {0: UNDECIDED, 1: BETTER, -1: WORSE, 2: EQUIVALENT}


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
    t: float  # the studentized statistic sqrt(n) mean / sd
    boundary: float  # |t| beyond this: decided better / worse
    alpha: float  # spent at this look
    decision: str  # better, worse, equivalent or undecided
    gamma: float = math.nan  # the pooled skewness the gate used at this look (NaN: none)
    held: bool = False  # the gate held back the decision the test reached here


@dataclass
class Analysis:
    """Every look so far of one comparison, and where it stands. ``p_value``: the two-sided
    stage-wise p-value of "no mean difference" at the last look (the share of sign patterns
    that crossed an earlier boundary, plus those at the last look at least as extreme as the
    data), <= alpha exactly when the design decided better/worse: what a correction across
    the study's configurations adjusts."""

    looks: list[Look] = field(default_factory=list)
    decision: str = UNDECIDED
    decided_at: int | None = None  # look index (0-based) of the decision
    p_value: float = math.nan
    withheld: bool = False  # the gate held back a decision at some look (and none was taken)

    @property
    def seeds(self) -> int:
        return self.looks[-1].seeds if self.looks else 0


def studentized(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """One-sample t statistics ``sqrt(n) mean / sd`` of ``x`` (``(S, n)``: S studies of n
    differences) under each sign pattern of ``signs`` (``(B, n)``): ``(S, B)``.

    Flipping signs keeps the sum of squares, so only the mean changes per pattern. A pattern
    whose differences are all equal has no spread: +-inf, and 0 when they are all zero."""
    n = x.shape[-1]
    mean = (x @ signs.T) / n
    ss = np.sum(x * x, axis=-1, keepdims=True)
    var = np.maximum(ss - n * mean * mean, 0.0) / (n - 1)
    # rounding leaves ~1e-16 relative noise where the true spread is zero
    flat = var <= 1e-12 * np.maximum(ss, 1e-300) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean * math.sqrt(n) / np.sqrt(var)
    return np.where(flat, np.where(mean == 0, 0.0, np.copysign(np.inf, mean)), t)


@dataclass
class Run:
    """:func:`run_design` over S studies: per study the decision code (``CODES``), the
    0-based look it stopped at (the last look available when undecided), the stage-wise
    p-value, and per look the boundary, the observed t (NaN after the stop) and whether the
    shape gate held back a decision the test reached there."""

    code: np.ndarray  # (S,) int
    look: np.ndarray  # (S,) int
    p_value: np.ndarray  # (S,)
    boundary: np.ndarray  # (S, K)
    t: np.ndarray  # (S, K)
    seeds: np.ndarray  # (S,) seeds used
    held_at: np.ndarray  # (S, K) bool

    @property
    def held(self) -> np.ndarray:
        """(S,): the study ended undecided though the gate held back a decision at a look."""
        return self.held_at.any(axis=1) & (self.code == 0)


def per_look(gamma, studies: int, looks: int) -> np.ndarray:
    """The gate's skewness as ``(studies, looks)``: a scalar for all, ``(S,)`` one per study,
    or ``(S, k)`` one per study and look (the last column repeats past ``k``)."""
    g = np.asarray(gamma, dtype=np.float64)
    if g.ndim == 0:
        return np.full((studies, looks), float(g))
    if g.ndim == 1:
        if g.size != studies:
            raise ValueError(f"gamma has {g.size} values for {studies} studies")
        return np.repeat(g[:, None], looks, axis=1)
    if g.shape[0] != studies or g.shape[1] == 0:
        raise ValueError(f"gamma of shape {g.shape} for {studies} studies")
    if g.shape[1] < looks:
        g = np.concatenate([g, np.repeat(g[:, -1:], looks - g.shape[1], axis=1)], axis=1)
    return g[:, :looks]


def run_design(d: np.ndarray, design: SequentialDesign, signs: np.ndarray, gamma=None) -> Run:
    """The design on S studies at once: ``d`` is ``(S, n)`` paired differences in seed order
    (n may be short of ``max_seeds``: looks past n are not taken), ``signs`` the patterns.

    ``gamma``: the pooled skewness of the shape gate (see :func:`per_look` for its forms):
    a decision at a look of n seeds is taken only where ``pairedstats.shape.allows(n, gamma)``;
    None: no gate."""
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    S, n_have = d.shape
    B = signs.shape[0]
    looks = [n for n in design.looks if n <= n_have]
    K = len(looks)
    gates = None if gamma is None else per_look(gamma, S, K)
    held = np.zeros((S, K), dtype=bool)
    code = np.zeros(S, dtype=np.int64)
    stop = np.full(S, max(K - 1, 0), dtype=np.int64)
    p_value = np.full(S, math.nan)
    bound = np.full((S, K), math.nan)
    tobs = np.full((S, K), math.nan)
    live = np.ones(S, dtype=bool)  # studies not stopped yet
    crossed = np.zeros((S, B), dtype=bool)  # patterns past an earlier boundary
    for k, n in enumerate(looks):
        if not live.any():
            break
        idx = np.flatnonzero(live)
        x = d[idx, :n]
        t = np.abs(studentized(x, signs[:, :n]))
        t_obs = t[:, 0] * np.sign(x.sum(axis=1))
        t_obs = np.where(np.isnan(t_obs), 0.0, t_obs)
        a_k = design.alpha_at(k)
        c = _boundaries(t, crossed[idx], a_k, B)
        # stage-wise p: patterns that crossed before, plus those here at least as extreme
        before = crossed[idx].sum(axis=1)
        extreme = ((t >= np.abs(t_obs)[:, None] * (1 - 1e-12)) & ~crossed[idx]).sum(axis=1)
        p_value[idx] = (before + extreme) / B
        crossed[idx] |= t > c[:, None]
        bound[idx, k], tobs[idx, k] = c, t_obs
        decided = np.where(t_obs > c, 1, np.where(t_obs < -c, -1, 0))
        if design.margin is not None and a_k > 0:
            eq = _equivalent(x, design.margin, a_k) & (decided == 0)
            decided = np.where(eq, 2, decided)
        if gates is not None:
            ok = gate.allows(n, gates[idx, k])
            held[idx, k] = (decided != 0) & ~ok
            decided = np.where(ok, decided, 0)
        stopping = decided != 0
        code[idx[stopping]] = decided[stopping]
        stop[idx[stopping]] = k
        live[idx[stopping]] = False
    seeds = np.array(looks, dtype=np.int64)[stop] if K else np.zeros(S, dtype=np.int64)
    return Run(code, stop, p_value, bound, tobs, seeds, held)


def analyse(diffs, design: SequentialDesign, key: str, gamma=None) -> Analysis:
    """The decisions at every look that the differences so far allow (seed order as run).

    Looks are taken at ``design.looks`` while enough differences exist; the analysis stops at
    the first decided look (later data, if any, do not reopen it). ``gamma``: the shape gate's
    pooled skewness, one number for every look or a sequence of one per look (the last
    repeats); None: no gate."""
    d = np.asarray(diffs, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError("paired differences must be finite (map failed runs to a value first)")
    out = Analysis()
    if d.size < design.looks[0]:
        return out
    looks = [n for n in design.looks if n <= d.size]
    gates = None if gamma is None else per_look(np.atleast_1d(gamma)[None, :], 1, len(looks))
    run = run_design(d[None, :], design, design.signs(key), gates)
    last = int(run.look[0])
    for k in range(last + 1):
        n = looks[k]
        decision = CODES[int(run.code[0])] if k == last else UNDECIDED
        g = math.nan if gates is None else float(gates[0, k])
        out.looks.append(
            Look(k, n, float(d[:n].mean()), float(run.t[0, k]), float(run.boundary[0, k]),
                 design.alpha_at(k), decision, g, bool(run.held_at[0, k]))
        )  # fmt: skip
    out.decision = CODES[int(run.code[0])]
    out.decided_at = last if out.decision != UNDECIDED else None
    out.p_value = float(run.p_value[0])
    out.withheld = bool(run.held[0])
    return out


def _boundaries(t: np.ndarray, crossed: np.ndarray, level: float, B: int) -> np.ndarray:
    """Per study (rows of ``t``, ``(S, B)`` of |statistic|): the smallest c with
    #{patterns not crossed before, |t| > c} <= level * B; ties at the cut stay below it."""
    allowed = int(math.floor(level * B + 1e-9))
    live = np.where(crossed, -np.inf, t)
    if allowed >= B:
        return np.full(t.shape[0], -np.inf)
    # the (allowed+1)-th largest live value: at most `allowed` values lie strictly above it
    part = -np.partition(-live, allowed, axis=1)[:, allowed]
    return part


def _equivalent(x: np.ndarray, margin: float, level: float) -> np.ndarray:
    """TOST on the mean, per row of ``x`` (``(S, n)``): mean > -margin and mean < +margin,
    each one-sided t-test at ``level``. Rows without spread (every difference equal, e.g.
    both arms at 100% on every seed so far) are never called equivalent: no spread is no
    evidence about the mean, and zero-inflated differences give such rows often."""
    with np.errstate(divide="ignore", invalid="ignore"):
        low = stats.ttest_1samp(x, -margin, axis=1, alternative="greater").pvalue
        high = stats.ttest_1samp(x, margin, axis=1, alternative="less").pvalue
    flat = np.ptp(x, axis=1) == 0
    return (np.maximum(low, high) <= level) & ~flat


# -- planning: fixed designs and expected sequential cost ----------------------------------


def fixed_seeds(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Paired seeds a fixed design needs (``pairedstats.power.paired_seeds_needed``, the one
    power function of the project): None when there is no such number."""
    return paired_seeds_needed(effect, sd, alpha=alpha, power=power).seeds


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
    gamma: float | None = None,
) -> Simulation:
    """Run the design on ``studies`` simulated comparisons whose paired differences are drawn
    i.i.d. (normal ``effect``, ``sd`` unless ``sampler(rng, n)`` is given), all at once;
    ``gamma``: a pooled skewness the shape gate reads at every look (None: no gate)."""
    rng = np.random.default_rng(seed)
    if sampler is None:
        d = rng.normal(effect, sd, (studies, design.max_seeds))
    else:
        d = np.stack([sampler(rng, design.max_seeds) for _ in range(studies)])
    return summarise(run_design(d, design, design.signs(f"simulation-{seed}"), gamma=gamma))


def summarise(run: Run) -> Simulation:
    """Rates and mean seeds of a :func:`run_design` over many studies."""
    studies = run.code.size
    return Simulation(
        studies=studies,
        decided_rate=float(np.mean(run.code != 0)),
        better_rate=float(np.mean(run.code == 1)),
        worse_rate=float(np.mean(run.code == -1)),
        equivalent_rate=float(np.mean(run.code == 2)),
        mean_seeds=float(run.seeds.mean()),
    )


# -- a study's sequential comparisons (the searcher's bookkeeping, study/searcher.py) ------

#: power of the fixed design a sequential outcome is compared with
FIXED_POWER = 0.8


@dataclass(frozen=True)
class SequentialPlan:
    """``--seeds auto``: the design, the seeds in the order they are used (``max_seeds`` of
    them), how a stage is split into trials, the decision metric and the compute budget."""

    design: SequentialDesign
    seeds: tuple[int, ...]
    seeds_per_trial: int = 1
    metric: str = SCORE_METRIC
    budget_seconds: float | None = None  # sum of trial seconds; None: no budget
    gpus_per_trial: float = 0.0

    def stage_seeds(self, stage: int) -> list[int]:
        looks = self.design.looks
        lo = 0 if stage == 0 else looks[stage - 1]
        return list(self.seeds[lo : looks[stage]])

    @property
    def stages(self) -> int:
        return len(self.design.looks)


@dataclass(frozen=True)
class Comparison:
    """A stopped configuration against its baseline: the decision, its stage-wise p-value
    (what the study's correction across its configurations adjusts), and the seeds a fixed
    design with ``FIXED_POWER`` at the observed effect would have needed (the one paired
    power function; no simulation runs here, inside Tune's driver loop).

    The shape gate at the last look analysed: ``skewness`` pooled over ``skewness_pairs``
    paired differences in ``skewness_groups`` comparisons, the ``pairs_needed`` for a verdict
    at that skewness (None: undefined, nothing asked), and ``withheld`` when the comparison
    ended undecided although the test reached a decision that the gate held back. All None
    for a comparison recorded before the gate existed."""

    decision: str
    decided_at_look: int | None  # 1-based
    looks: int
    pairs: int
    mean_difference: float
    sd_difference: float
    p_value: float
    pair_seconds_per_seed: float
    fixed_design_seeds: int | None = None
    fixed_design_seconds: float | None = None
    skewness: float | None = None
    skewness_pairs: int | None = None
    skewness_groups: int | None = None
    pairs_needed: int | None = None
    withheld: bool | None = None

    @classmethod
    def of(
        cls,
        analysis: Analysis,
        diffs,
        alpha: float,
        pair_seconds_per_seed: float,
        pool: gate.Shape | None = None,
    ):
        d = np.asarray(diffs[: analysis.seeds], dtype=float)
        effect, sd = float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else math.nan
        n_fixed = fixed_seeds(effect, sd, alpha, FIXED_POWER)
        shaped = {}
        if pool is not None:
            shaped = {
                "skewness": None if math.isnan(pool.gamma) else pool.gamma,
                "skewness_pairs": pool.values,
                "skewness_groups": pool.groups,
                "pairs_needed": pool.needed(),
                "withheld": analysis.withheld,
            }
        return cls(
            decision=analysis.decision,
            decided_at_look=None if analysis.decided_at is None else analysis.decided_at + 1,
            looks=len(analysis.looks),
            pairs=int(analysis.seeds),
            mean_difference=effect,
            sd_difference=sd,
            p_value=analysis.p_value,
            pair_seconds_per_seed=pair_seconds_per_seed,
            fixed_design_seeds=n_fixed,
            fixed_design_seconds=None if n_fixed is None else n_fixed * pair_seconds_per_seed,
            **shaped,
        )


#: the shape gate's fields of a :class:`Comparison` (absent from its record when None)
GATE_FIELDS = ("skewness", "skewness_pairs", "skewness_groups", "pairs_needed", "withheld")


@dataclass(frozen=True)
class Outcome:
    """Why and where a configuration stopped (``comparison``: None for a baseline)."""

    reason: str
    seeds: list[int]
    trial_seconds: float
    gpu_seconds: float
    metric: str
    comparison: Comparison | None = None

    def as_dict(self) -> dict:
        """The MLflow-facing record the driver's callback logs (no fixed-design entries when
        no fixed design exists)."""
        out = {k: getattr(self, k) for k in ("reason", "seeds", "trial_seconds", "gpu_seconds")}
        out["metric"] = self.metric
        if self.comparison is not None:
            c = dataclasses.asdict(self.comparison)
            if c["fixed_design_seeds"] is None:
                del c["fixed_design_seeds"], c["fixed_design_seconds"]
            for key in GATE_FIELDS:  # not recorded (before the gate), or nothing asked
                if c[key] is None:
                    del c[key]
            out.update(c)
        return out


def paired_differences(config, baseline, *, higher_is_better: bool = True) -> np.ndarray:
    """``config - baseline`` per seed, signed so that positive is better. A failed or diverged
    run (NaN) counts as the worst value seen (0 for accuracies, which are in [0, 1])."""
    a, b = np.asarray(config, dtype=float), np.asarray(baseline, dtype=float)
    both = np.concatenate([a, b])
    finite = both[np.isfinite(both)]
    if higher_is_better:
        worst = min(0.0, float(finite.min())) if finite.size else 0.0
    else:
        worst = float(finite.max()) if finite.size else 0.0
    a, b = np.where(np.isfinite(a), a, worst), np.where(np.isfinite(b), b, worst)
    return a - b if higher_is_better else b - a
