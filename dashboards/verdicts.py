"""Verdicts on the paper's claims: typed results holding every estimate, and the decision rule.

:func:`dashboards.evaluate.evaluate_claims` judges each :class:`~dashboards.claims.Claim` on a
study's ``runs`` (and ``history``, for epochs-to-threshold at a claim's own threshold) with
the per-statistic evaluators of :mod:`dashboards.evaluate`, which use the types and rules
here (this module imports none of them). Results are dataclasses holding
:class:`~dashboards.stats.Estimate` values; :func:`verdict_json` turns one into plain JSON
(``summary.json``) and nothing else serialises them.

Scales
------
Each check is judged on every setup (:mod:`dashboards.setups`) in the data that holds both of
its arms: one verdict per (check, setup), labelled paper, reduced or other scale. A check's
*headline* verdict is the one at paper scale where that exists, else the one at the largest
setup (by T, then training budget); the claim's verdict aggregates its checks' headlines.

Decision rule
-------------
Every check turns into an *effect* oriented so that positive means "treatment better" (for
lower-is-better metrics such as epochs, divergence or grad norm the sign is flipped), with a
95% interval, and one test (:mod:`pairedstats.tests`) that decides; P(treatment better than
baseline) is shown as an effect size with its exact interval and decides nothing:

* mean: paired t-test on the per-seed differences (Welch when the seeds do not pair); the
  interval is the same t's.
* rate: exact McNemar on the discordant seed pairs (Fisher's exact test unpaired); the
  interval is Newcombe's.
* time_to_threshold: paired t-test on the epochs restricted to the budget (a run that did not
  reach the threshold counts the whole budget); *not measurable at this budget* when fewer
  than half the runs of both arms reach it.
* seed_std: randomisation test of std(B) - std(A), swapping the arms within seed pairs
  (Brown-Forsythe unpaired); the interval is a bootstrap, shown.
* lr_worst_case: the conservative t/Bonferroni test of the worst-case difference
  (``pairedstats.worstcase``); the interval is the same bounds'.

A check is

* **better** (``min_effect`` m >= 0): *supported* when its test rejects no effect at
  ALPHA = 0.05 (two-sided) and the effect is positive; *contradicted* when the test rejects and
  the effect is negative, or the effect's 95% interval lies below m.
* **worse**: the same with the effect negated.
* **not_worse** (margin d): *supported* when the 95% interval lies above -d (a one-sided test at
  0.025 for t intervals), *contradicted* when it lies below -d.
* **equivalent** (margin d): *supported* when the 95% interval lies inside (-d, d) (TOST at
  0.025 each side), *contradicted* when it lies wholly outside.
* **below / above** (benchmarks, C9): *supported* when the figure (its CI if given) lies below
  / above ``value``, *contradicted* when it lies on the other side.
* a paired t-test (mean, time to threshold, the margins) decides only behind the shape gate
  (``pairedstats.shape``): on fewer pairs than the pooled skewness of the metric's paired
  differences asks for (n >= 71.5 gamma^2), a verdict is held back as *inconclusive*, with
  that count as its seeds needed (docs/statistics.md, "The shape gate").
* otherwise, or when an arm has fewer than ``min_seeds`` runs, *inconclusive*; the check
  then reports the seeds per arm its own decision needs for power 0.8 at the observed effect
  (:func:`dashboards.power.seeds_needed`, paired), or why no such number exists.
* *no runs yet* when either arm has no selected runs (or the metric column is missing);
  *no data* for a benchmark claim whose figure was not given.

A claim controls its error across its checks: *contradicted* only when a contradicted check
survives Holm's correction over all of its checks with data (p-values of contradictions a
95% interval decided enter at their bound 0.05), *supported* when every check is (an
intersection-union test: no correction needed), *no runs yet* (or *no data*) when no check has
data, and *inconclusive* otherwise. Its seeds-needed is its headline check's own figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dashboards.claims import Check, Claim
from dashboards.setups import PAPER, Setup
from dashboards.stats import Estimate, GradNorms, Summary, significance
from dashboards.survival import KaplanMeier
from dashboards.tuning import LrRobustness
from pairedstats import multiplicity
from pairedstats import tests as ptests
from pairedstats.bestof import BestOf
from pairedstats.power import SeedsNeeded
from pairedstats.shape import Shape

EMPTY = frozenset({"no runs yet", "no data"})
#: a time-to-threshold check whose budget too few runs reach in both arms
NOT_MEASURABLE = "not measurable at this budget"


@dataclass(frozen=True)
class ArmResult:
    """One arm's numbers in one check. ``headline`` is the check's statistic for this arm in
    the check's unit (percent for accuracies, epochs for the median epochs to threshold)."""

    arm: str
    n: int
    headline: Estimate
    summary: Summary | None = None  # mean, std, median, IQM of the metric
    rate: Estimate | None = None  # fraction of runs with the rate's outcome (Wilson)
    km: KaplanMeier | None = None  # fraction that reached the threshold by each epoch
    reached: Estimate | None = None  # fraction that reached it within the budget (Wilson)
    lr: LrRobustness | None = None
    grad_norms: GradNorms | None = None
    best_of: BestOf | None = None  # expected best of k seeds (the paper's protocol), in unit


@dataclass(frozen=True)
class CheckVerdict:
    """The verdict on one check. ``effect`` is oriented so that > 0 means the treatment is
    better, in the metric's own units (fractions for accuracies, epochs saved for time)."""

    check: Check
    verdict: str
    reason: str
    treatment: ArmResult | None = None
    baseline: ArmResult | None = None
    effect: Estimate | None = None
    p_improve: Estimate | None = None
    paired: bool = False
    seeds_needed: float | None = None
    figure: Estimate | None = None  # a benchmark check's figure
    details: dict[str, Any] = field(default_factory=dict)
    setup: Setup | None = None  # the setup it was judged on (None: no data, or a benchmark)
    scale: str | None = None  # paper / reduced / other scale
    seeds_reason: str | None = None  # why there is no seeds-needed figure (not applicable)
    pvalue: float = math.nan  # the check's own test of no effect (two-sided)
    p_against: float = math.nan  # p-value behind a "contradicted" (an upper bound if CI-based)
    p_adjusted: float = math.nan  # p_against after the claim's Holm step

    @property
    def at_paper_scale(self) -> bool:
        return self.scale == PAPER

    @property
    def name(self) -> str:
        return self.check.name

    @property
    def statistic(self) -> str:
        return self.check.statistic

    @property
    def paper(self) -> dict[str, Any]:
        """The paper's numbers for this check (per arm, in the check's unit) and its note."""
        return self.check.paper

    @property
    def significant(self) -> bool:
        """P(A>B)'s lower bound is above 1/2 (Bouthillier et al. 2021)."""
        return self.p_improve is not None and significance(self.p_improve)[0]

    @property
    def meaningful(self) -> bool:
        """P(A>B)'s upper bound reaches 3/4 (Bouthillier et al. 2021)."""
        return self.p_improve is not None and significance(self.p_improve)[1]

    @property
    def has_data(self) -> bool:
        return self.verdict not in EMPTY

    @property
    def arms(self) -> tuple[ArmResult, ...]:
        return tuple(a for a in (self.treatment, self.baseline) if a is not None)


@dataclass(frozen=True)
class Verdict:
    """The verdict on one claim: the summary and every check behind it."""

    claim: Claim
    verdict: str
    reason: str
    checks: tuple[CheckVerdict, ...]  # each check's headline verdict
    seeds_needed: float | None = None  # the headline check's own figure
    by_setup: tuple[CheckVerdict, ...] = ()  # every (check, setup) verdict
    seeds_reason: str | None = None  # why the headline check has no seeds figure
    correction: str = ""  # how the claim controls its error across its checks

    @property
    def scale(self) -> str | None:
        """The scale of the checks behind the verdict: one, or ``mixed`` when they differ."""
        scales = {c.scale for c in self.checks if c.has_data and c.scale}
        return scales.pop() if len(scales) == 1 else ("mixed scales" if scales else None)

    @property
    def claim_id(self) -> str:
        return self.claim.id

    @property
    def headline(self) -> CheckVerdict:
        """The check a one-line summary shows: the first with data, else the first."""
        return next((c for c in self.checks if c.has_data), self.checks[0])


def empty(check: Check, verdict: str, reason: str) -> CheckVerdict:
    return CheckVerdict(check, verdict, reason)


#: Beyond this many seeds per arm a report quotes no number: the power formula diverges as the
#: observed difference shrinks to zero (46 million at a difference of 0.003 points, infinity
#: at exactly zero), and no study runs that many.
MAX_QUOTED_SEEDS = 10_000


def fmt_seeds(n: float) -> str:
    """Seeds per arm in words: "about 60", or "more than 10,000" past MAX_QUOTED_SEEDS."""
    return f"more than {MAX_QUOTED_SEEDS:,}" if n > MAX_QUOTED_SEEDS else f"about {int(n)}"


def _signed(x: float) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:+.4g}"


def _ci(e: Estimate) -> str:
    return f"{_signed(e.value)} [{_signed(e.low)}, {_signed(e.high)}]"


def flip(e: Estimate) -> Estimate:
    return Estimate(-e.value, -e.high, -e.low)


#: every check's test is two-sided at this level (its 95% interval); a claim's family too
ALPHA = 0.05


def decide(
    check: Check,
    effect: Estimate,
    pvalue: float | None,
    n_min: int,
    min_seeds: int,
    *,
    margin_p: Mapping[str, float] | None = None,
) -> tuple[str, str, float]:
    """(verdict, why, p_against) by the module's decision rule.

    ``effect`` is oriented treatment-better; ``pvalue`` is the check's one test of no effect
    (two-sided; None for a statistic without one: its 95% interval decides, and a
    contradiction then enters the claim's Holm step at p = 0.05, the bound that interval
    gives). ``margin_p`` holds the exact p-values of the margin tests where the evaluator has
    them (``below_min_effect``, ``below_margin``, ``outside_margin``), else the same bound.
    ``p_against`` is the p-value behind a "contradicted" (NaN otherwise).
    """
    nan = math.nan
    if n_min < min_seeds:
        why = f"only {n_min} runs in the smaller arm, {min_seeds} needed to judge"
        return "inconclusive", why, nan
    margin_p = margin_p or {}
    kind = check.comparison
    if kind == "worse":
        effect = flip(effect)
    if kind in ("better", "worse"):
        word = "better" if kind == "better" else "worse"
        if pvalue is None:  # no test for this statistic: its interval decides
            support, wrong_sign, p = effect.low > 0, effect.high < 0, ALPHA
        else:
            if math.isnan(pvalue):
                return "inconclusive", "the test is not defined on these runs", nan
            significant = pvalue < ALPHA
            support = significant and effect.value > 0
            wrong_sign = significant and effect.value < 0
            p = pvalue
        if wrong_sign:
            return "contradicted", f"the data show the opposite: the treatment is not {word}", p
        if effect.high < check.min_effect:
            p = margin_p.get("below_min_effect", ALPHA)
            return "contradicted", f"the effect is surely smaller than {check.min_effect:g}", p
        if support:
            how = "its 95% interval excludes no effect" if pvalue is None else f"p = {p:.2g}"
            return "supported", f"the treatment is {word} ({how})", nan
        return "inconclusive", "no significant difference", nan
    if kind == "not_worse":
        if effect.low > -check.margin:
            return "supported", f"not worse by more than {check.margin:g}", nan
        if effect.high < -check.margin:
            p = margin_p.get("below_margin", ALPHA)
            return "contradicted", f"worse by more than {check.margin:g}", p
        return "inconclusive", f"the CI straddles the -{check.margin:g} margin", nan
    if kind == "equivalent":
        if -check.margin < effect.low and effect.high < check.margin:
            return "supported", f"within +-{check.margin:g}", nan
        if effect.low > check.margin or effect.high < -check.margin:
            p = margin_p.get("outside_margin", ALPHA)
            return "contradicted", f"differs by more than {check.margin:g}", p
        return "inconclusive", f"the CI straddles the +-{check.margin:g} margin", nan
    raise AssertionError(f"unhandled comparison {kind}")  # the schema rules this out


def margin_pvalues(check: Check, a: np.ndarray, b: np.ndarray, paired: bool) -> dict[str, float]:
    """Exact two-sided-scale p-values of the margin contradictions of a mean check (``a``,
    ``b`` oriented treatment-better): the effect below ``min_effect``, below ``-margin``,
    outside ``+-margin``; each is twice a one-sided t-test, so it compares with ALPHA as the
    95% interval does."""

    def one(null: float, alternative: str) -> float:
        p = float(ptests.difference_pvalue(a, b, paired=paired, null=null, alternative=alternative))
        return min(1.0, 2.0 * p)

    return {
        "below_min_effect": one(check.min_effect, "less"),
        "below_margin": one(-check.margin, "less"),
        "outside_margin": min(one(check.margin, "greater"), one(-check.margin, "less")),
    }


def null_difference(check: Check, effect_value: float) -> float:
    """The difference a power computation tests against (the margin for margin checks)."""
    if check.comparison == "not_worse":
        return -check.margin
    if check.comparison == "equivalent":
        return check.margin if effect_value >= 0 else -check.margin
    return 0.0


def judged(
    check: Check,
    claim: Claim,
    effect: Estimate,
    p: Estimate | None,
    arms: tuple[ArmResult, ArmResult],
    describe: str,
    *,
    pvalue: float | None,
    paired: bool = False,
    seeds: SeedsNeeded | None = None,
    margin_p: Mapping[str, float] | None = None,
    details: Mapping[str, Any] | None = None,
    shape: Shape | None = None,
) -> CheckVerdict:
    """A check with data: apply the decision rule and say why in one sentence. ``p`` is
    P(A>B) (an effect size, shown); ``pvalue`` the check's test (see :func:`decide`).
    ``shape``: the pooled shape of the metric's paired differences when a paired t-test
    decides (``pairedstats.shape``); a verdict on fewer pairs than its skewness asks for is
    held back as inconclusive, since the t-test's error can exceed its level there."""
    treatment, baseline = arms
    n_min = min(treatment.n, baseline.n)
    verdict, why, p_against = decide(
        check, effect, pvalue, n_min, claim.min_seeds, margin_p=margin_p
    )
    details = dict(details or {})
    held = False
    if shape is not None and paired:
        held = verdict in ("supported", "contradicted") and not shape.allows(n_min)
        details["shape"] = {
            "skewness": None if math.isnan(shape.gamma) else shape.gamma,
            "pooled_values": shape.values,
            "pooled_comparisons": shape.groups,
            "pairs_needed": shape.needed(),
            "held_back": held,
        }
    if held:
        why = (
            f"the t-test would say {verdict}, but the paired differences are too skewed for it "
            f"at {n_min} pairs ({shape.words()}: a t verdict needs {shape.needed()} pairs to keep "
            "its error rate; docs/statistics.md, the shape gate)"
        )
        verdict, p_against = "inconclusive", math.nan
    p_text = "" if p is None else f", P(A>B) {p.value:.2f} [{p.low:.2f}, {p.high:.2f}]"
    reason = (
        f"{check.treatment} vs {check.baseline}: {describe} {_ci(effect)}{p_text} "
        f"({treatment.n} vs {baseline.n} runs): {why}."
    )
    number, why_none = None, None
    if held:  # the gate's count, or the power's where that is larger
        number = float(max(shape.needed(), claim.min_seeds))
        if seeds is not None and seeds.seeds is not None:
            power = float(MAX_QUOTED_SEEDS + 1) if seeds.capped else float(seeds.seeds)
            number = max(number, power)
        reason = reason[:-1] + f"; {fmt_seeds(number)} seeds per arm would settle it."
    elif verdict == "inconclusive" and seeds is not None:
        if seeds.seeds is None:
            why_none = seeds.reason
            reason = reason[:-1] + f"; seeds needed: not applicable ({seeds.reason})."
        else:
            number = float(MAX_QUOTED_SEEDS + 1) if seeds.capped else float(seeds.seeds)
            number = max(number, float(claim.min_seeds))
            reason = reason[:-1] + f"; {fmt_seeds(number)} seeds per arm would settle it."
    return CheckVerdict(
        check,
        verdict,
        reason,
        treatment,
        baseline,
        effect,
        p,
        paired,
        number,
        details=details,
        seeds_reason=why_none,
        pvalue=math.nan if pvalue is None else float(pvalue),
        p_against=p_against,
    )


def headline(verdicts: list[CheckVerdict]) -> CheckVerdict:
    """A check's headline among its per-setup verdicts: paper scale, else the largest setup
    (the evaluators list setups largest first)."""
    with_data = [v for v in verdicts if v.has_data]
    return next(
        (v for v in with_data if v.at_paper_scale), with_data[0] if with_data else verdicts[0]
    )


def holm_step(checks: list[CheckVerdict]) -> tuple[list[CheckVerdict], str]:
    """The claim's family step: Holm over its checks' ``p_against`` (every check with data
    is in the family; one that contradicts nothing counts with p = 1). A "contradicted"
    whose adjusted p-value is not below ALPHA becomes inconclusive, so "contradicted if any
    check is" keeps the family-wise error at ALPHA. "Supported" needs every check supported,
    each at ALPHA: an intersection-union test, whose error is at most ALPHA without a
    correction."""
    family = [i for i, c in enumerate(checks) if c.has_data and c.statistic != "benchmark"]
    m = len(family)
    note = (
        f"Holm across its {m} checks (family-wise error <= {ALPHA:g}); supported only when "
        "every check is"
        if m > 1
        else "one check: its own test at " + f"{ALPHA:g}"
    )
    raw = [checks[i].p_against for i in family]
    adjusted = multiplicity.adjust([1.0 if math.isnan(x) else x for x in raw], "holm")
    out = list(checks)
    for i, p_adj in zip(family, adjusted, strict=True):
        c = replace(checks[i], p_adjusted=float(p_adj))
        if c.verdict == "contradicted" and not p_adj < ALPHA:
            c = replace(
                c,
                verdict="inconclusive",
                reason=c.reason[:-1] + f"; not after Holm across the claim's {m} checks "
                f"(adjusted p = {p_adj:.2g}).",
            )
        out[i] = c
    return out, note


def aggregate(
    claim: Claim, checks: list[CheckVerdict], by_setup: tuple[CheckVerdict, ...] = ()
) -> Verdict:
    """A claim's verdict from its checks' headlines (see the module's decision rule)."""
    before = list(checks)
    checks, note = holm_step(before)
    swapped = {id(old): new for old, new in zip(before, checks, strict=True)}
    by_setup = tuple(swapped.get(id(c), c) for c in by_setup)
    verdicts = [c.verdict for c in checks]
    judged_checks = [c for c in checks if c.has_data]
    if not judged_checks:
        verdict = "no data" if all(v == "no data" for v in verdicts) else "no runs yet"
        reason = checks[0].reason if len(checks) == 1 else f"none of {len(checks)} checks has data"
    elif "contradicted" in verdicts:
        bad = [c.name for c in checks if c.verdict == "contradicted"]
        verdict, reason = "contradicted", f"contradicted by: {'; '.join(bad)}"
    elif all(v == "supported" for v in verdicts):
        verdict = "supported"
        reason = checks[0].reason if len(checks) == 1 else f"all {len(checks)} checks supported"
    else:
        verdict = "inconclusive"
        n_empty = sum(not c.has_data for c in checks)
        reason = f"{verdicts.count('supported')} of {len(checks)} checks supported"
        if n_empty:
            reason += f", {n_empty} without data yet"
    # The claim row shows its own headline check's figure, not another check's.
    head = next((c for c in checks if c.has_data), checks[0])
    needed = head.seeds_needed if verdict == "inconclusive" else None
    why = head.seeds_reason if verdict == "inconclusive" else None
    return Verdict(claim, verdict, reason, tuple(checks), needed, by_setup, why, note)


# --------------------------------------------------------------------------------------------
# JSON, at the edge


def _est(e: Estimate | None) -> dict[str, float] | None:
    return None if e is None else {"value": e.value, "low": e.low, "high": e.high}


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _seeds_json(n: float | None) -> int | None:
    """Seeds per arm as a whole number; None when capped or not applicable (the reason says)."""
    return None if n is None or n > MAX_QUOTED_SEEDS else int(n)


def _seeds_reason(n: float | None, reason: str | None) -> str | None:
    if n is not None and n > MAX_QUOTED_SEEDS:
        return f"more than {MAX_QUOTED_SEEDS:,} seeds per arm"
    return reason


def check_json(cv: CheckVerdict) -> dict[str, Any]:
    """One check's verdict as plain JSON values (what summary.json keeps of it)."""
    arms = {a.arm: {"n": a.n, "estimate": _est(a.headline)} for a in cv.arms}
    return {
        "verdict": cv.verdict,
        "scale": cv.scale,
        "setup": cv.setup.words() if cv.setup is not None else None,
        "unit": cv.check.unit,
        "effect": _est(cv.figure if cv.figure is not None else cv.effect),
        "p_improve": _est(cv.p_improve),
        "arms": arms,
        "seeds_needed": _seeds_json(cv.seeds_needed),
        "seeds_needed_reason": _seeds_reason(cv.seeds_needed, cv.seeds_reason),
        "p_value": _num(cv.pvalue),
        "p_against": _num(cv.p_against),
        "p_adjusted": _num(cv.p_adjusted),
        "shape": cv.details.get("shape"),
    }


def verdict_json(v: Verdict) -> dict[str, Any]:
    """One claim's verdict as plain JSON values."""
    return {
        "title": v.claim.title,
        "verdict": v.verdict,
        "seeds_needed": _seeds_json(v.seeds_needed),
        "seeds_needed_reason": _seeds_reason(v.seeds_needed, v.seeds_reason),
        "correction": v.correction,
        "scale": v.scale,
        "checks": {cv.name: check_json(cv) for cv in v.checks},
        "by_setup": [
            {"check": cv.name, **check_json(cv)} for cv in v.by_setup if cv.setup is not None
        ],
    }
