"""The evaluators behind :func:`evaluate_claims`: one per statistic of a
check (mean, rate, time to threshold, worst learning rate, spread over seeds, benchmark).

Each selects the two arms' runs, computes the estimates with :mod:`dashboards.stats`,
:mod:`dashboards.survival` and :mod:`dashboards.tuning`, and hands them to
:func:`dashboards.verdicts.judged`, which applies the decision rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from dashboards import power, setups, stats, survival, tuning
from dashboards import runs as runs_mod
from dashboards.claims import Check, Claim
from dashboards.power import ALL_CENSORED
from dashboards.stats import Estimate
from dashboards.verdicts import (
    NOT_MEASURABLE,
    ArmResult,
    CheckVerdict,
    Verdict,
    aggregate,
    empty,
    headline,
    judged,
    margin_pvalues,
)
from pairedstats import bestof
from pairedstats import tests as ptests
from pairedstats.power import SeedsNeeded
from pairedstats.shape import Shape
from pairedstats.streams import keyed_rng


class Context:
    """What every check of one evaluation shares: the runs (with transfer ratios), their
    setups, the history index and the random stream."""

    def __init__(
        self,
        runs: pd.DataFrame,
        history: pd.DataFrame | None,
        rng: np.random.Generator,
        n_resamples: int | None,
    ):
        # One row per run, uniquely indexed: arms are told apart by index below.
        self.runs = setups.with_transfer_ratios(runs).reset_index(drop=True)
        self.history = history
        self.index = runs_mod.HistoryIndex(history)
        self.rng = rng
        self.n_resamples = n_resamples or stats.N_RESAMPLES
        self._setups: dict[tuple[str, ...], setups.SetupIndex] = {}
        self._shapes: dict[tuple[str, str, str], Shape] = {}

    def setups(self, exclude: tuple[str, ...]) -> setups.SetupIndex:
        if exclude not in self._setups:
            self._setups[exclude] = setups.SetupIndex(self.runs, exclude)
        return self._setups[exclude]

    def shape(self, task: str, metric: str, baseline: str) -> Shape:
        """The pooled shape of ``metric``'s paired differences in ``task``: every arm (and
        p_detach) against ``baseline`` on the same seeds, one group per (setup, arm), as
        treatment minus baseline (``pairedstats.shape``). Computed once per metric."""
        key = (task, metric, baseline)
        if key not in self._shapes:
            self._shapes[key] = Shape.of(self._differences(task, metric, baseline))
        return self._shapes[key]

    def _differences(self, task: str, metric: str, baseline: str) -> list[np.ndarray]:
        runs = self.runs
        if not {"arm", metric} <= set(runs.columns):
            return []
        if "task" in runs.columns:
            runs = runs[runs["task"] == task]
        arms = ["arm", "p_detach"] if "p_detach" in runs.columns else ["arm"]
        groups = []
        for _, frame in self.setups(()).split(runs):
            base = frame[frame["arm"] == baseline]
            if len(base) < 2:
                continue
            treat = frame[frame["arm"] != baseline]
            for _, arm in treat.groupby(arms, dropna=False, sort=True):
                a, b, paired = runs_mod.paired_values(arm, base, metric)
                if paired:
                    groups.append(a - b)
        return groups


def _scale(check: Check) -> float:
    return 100.0 if check.percent else 1.0


def _scaled(e: Estimate, scale: float) -> Estimate:
    return Estimate(e.value * scale, e.low * scale, e.high * scale)


def _finite(arm: pd.DataFrame, col: str) -> np.ndarray:
    v = arm[col].to_numpy(float)
    return v[~np.isnan(v)]


#: the paper and its replication report the best of about this many seeds (their READMEs)
PAPER_BEST_OF = 5


def _summary_arm(name: str, values: np.ndarray, check: Check, ctx: Context, pick: str):
    s = stats.summarize(values, ctx.rng, n_resamples=ctx.n_resamples)
    best = None
    if pick == "mean" and not check.lower_is_better:
        x = np.asarray(values, dtype=float) * _scale(check)
        # keyed by the values: the same arm gives the same interval in every check and view
        stream = keyed_rng(0, "best-of", PAPER_BEST_OF, x.tobytes())
        best = bestof.best_of(x, PAPER_BEST_OF, stream, n_resamples=ctx.n_resamples)
    return ArmResult(name, s.n, _scaled(getattr(s, pick), _scale(check)), summary=s, best_of=best)


def _eval_mean(check, claim, treat, base, ctx, shape: Shape | None = None) -> CheckVerdict:
    col = check.metric
    sign = -1.0 if check.lower_is_better else 1.0
    vt, vb = _finite(treat, col), _finite(base, col)
    if vt.size == 0 or vb.size == 0:
        return empty(check, "no runs yet", f"no finite '{col}' values in one arm")
    a, b, paired = runs_mod.paired_values(treat, base, col, across_lr=check.select_lr == "best")
    cmp = stats.compare(sign * a, sign * b, paired=paired)
    at = _summary_arm(check.treatment, vt, check, ctx, "mean")
    ab = _summary_arm(check.baseline, vb, check, ctx, "mean")
    # The arms' sizes are the runs compared: the pairs when paired.
    at, ab = replace(at, n=a.size), replace(ab, n=b.size)
    oa, ob = _claimed(check, sign * a, sign * b)
    details = {
        "n_pairs": int(a.size) if paired else 0,
        "welch_p": stats.welch_pvalue(vt, vb),
        "mann_whitney_p": stats.mann_whitney_pvalue(vt, vb),
    }
    what = "paired" if paired else "unpaired"
    describe = f"{what} mean difference in {col}{' (sign flipped)' if sign < 0 else ''}"
    pvalue, effect = cmp.pvalue, cmp.difference
    if check.decide_by == "prob_better":
        if not paired:
            return empty(check, "no runs yet", "P(A>B) is declared but the seeds do not pair")
        # the declared statistic decides, through its exact test; the effect is P(A>B) - 1/2
        pvalue = float(ptests.prob_better_pvalue(sign * a, sign * b))
        p = cmp.p_improve
        effect = Estimate(p.value - 0.5, p.low - 0.5, p.high - 0.5)
        describe = f"P(A>B) - 1/2 on {col} (exact sign test, ties dropped)"
        shape = None  # an exact test: no shape gate
    return judged(
        check, claim, effect, cmp.p_improve, (at, ab), describe,
        pvalue=pvalue, paired=paired, seeds=_seeds(check, oa, ob, paired),
        margin_p=margin_pvalues(check, oa, ob, paired), details=details, shape=shape,
    )  # fmt: skip


def _claimed(check: Check, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) oriented so that larger means the claim holds ("worse" swaps the arms)."""
    return (b, a) if check.comparison == "worse" else (a, b)


def _seeds(check: Check, a: np.ndarray, b: np.ndarray, paired: bool) -> SeedsNeeded:
    """Seeds per arm the check's own decision needs (``a``, ``b`` as from :func:`_claimed`)."""
    comparison = "better" if check.comparison in ("better", "worse") else check.comparison
    return power.seeds_needed(a, b, paired=paired, comparison=comparison, margin=check.margin)


def _flags(v: pd.Series, check: Check) -> np.ndarray:
    """The per-run 0/1 outcome a rate check counts (before orienting lower-is-better)."""
    if check.success_at is not None:
        return (v.to_numpy(float, na_value=np.nan) >= check.success_at).astype(bool)
    if check.exceeds is not None:
        # NaN/inf norms are overflows: count them as above the bound.
        return ~(v.to_numpy(float, na_value=np.nan) <= check.exceeds)
    return v.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _eval_rate(check, claim, treat, base, ctx) -> CheckVerdict:
    ft, fb = _flags(treat[check.metric], check), _flags(base[check.metric], check)
    good_t, good_b = ft ^ check.lower_is_better, fb ^ check.lower_is_better
    effect = stats.rate_difference(good_t, good_b)
    pairs = runs_mod.pair(treat, base)
    pt, pb = good_t, good_b
    if pairs is not None:
        pt = _flags(pairs[f"{check.metric}_t"], check) ^ check.lower_is_better
        pb = _flags(pairs[f"{check.metric}_b"], check) ^ check.lower_is_better
    paired = pairs is not None
    cmp = stats.compare(pt.astype(float), pb.astype(float), paired=paired)
    pvalue = (
        float(ptests.mcnemar_pvalue(pt, pb)) if paired else ptests.fisher_pvalue(good_t, good_b)
    )
    arms = []
    for name, flags, arm in ((check.treatment, ft, treat), (check.baseline, fb, base)):
        r = stats.rate(flags)
        grad = None
        if check.metric == "max_grad_norm" and check.exceeds is not None:
            grad = stats.grad_norm_summary(arm["max_grad_norm"].to_numpy(float), check.exceeds)
        arms.append(ArmResult(name, flags.size, _scaled(r, _scale(check)), rate=r, grad_norms=grad))
    if not (ft.any() or fb.any()) or (ft.all() and fb.all()):
        outcome = "had" if ft.any() else "had not"
        seeds = SeedsNeeded.not_applicable(
            f"every run in both arms {outcome} the outcome ({check.metric}): no difference "
            "to detect at this budget"
        )
    else:
        oa, ob = _claimed(check, pt.astype(float), pb.astype(float))
        seeds = _seeds(check, oa, ob, paired)
    if check.success_at is not None:
        label = f"{check.metric} >= {check.success_at:g}"
    elif check.exceeds is not None:
        label = f"{check.metric} > {check.exceeds:g}"
    else:
        label = check.metric
    flip = "1 - " if check.lower_is_better else ""
    describe = f"difference in rate of {flip}[{label}]"
    return judged(
        check, claim, effect, cmp.p_improve, tuple(arms), describe,
        pvalue=pvalue, paired=paired, seeds=seeds,
    )  # fmt: skip


def _time_event(arm: pd.DataFrame, check: Check, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) per run at the check's threshold; NaN time for runs we cannot judge.

    With a threshold, the history (where it covers the run) gives the first epoch reaching it;
    otherwise the runs' own column counts only if it was computed at that same threshold.
    """
    n = len(arm)
    nan = np.full(n, np.nan)
    last = arm["last_epoch"].to_numpy(float) if "last_epoch" in arm.columns else nan
    ett = arm["epochs_to_threshold"].to_numpy(float) if "epochs_to_threshold" in arm else nan
    if check.threshold is None:
        if "epochs_to_threshold" not in arm.columns:  # nothing says when anything was reached
            return nan, np.zeros(n, dtype=bool)
        return survival.censored_epochs(ett, last)
    known = np.zeros(n, dtype=bool)
    if "threshold" in arm.columns and "epochs_to_threshold" in arm.columns:
        known = np.isclose(arm["threshold"].to_numpy(float), check.threshold)
    ett = np.where(known, ett, np.nan)
    if "run_id" in arm.columns:
        first, last_h = ctx.index.reach(arm["run_id"].tolist(), check.threshold)
        from_history = ~np.isnan(last_h)
        ett = np.where(from_history, first, ett)
        last = np.where(from_history & np.isnan(last), last_h, last)
        known |= from_history
    time, event = survival.censored_epochs(ett, last)
    return np.where(known, time, np.nan), event & known


def _time_arm(name: str, time: np.ndarray, event: np.ndarray, horizon: int) -> ArmResult:
    """An arm's epochs to threshold: its headline is the mean epochs restricted to the budget
    (the quantity the check tests) with Student's t interval, always finite; the
    Kaplan-Meier curve is kept for the figure."""
    km = survival.kaplan_meier(time, event, horizon)
    n = int(np.sum(~np.isnan(time)))
    reached = stats.wilson_interval(int(np.sum(event & (time <= horizon))), n)
    restricted = ptests.restricted_times(time, event, horizon)
    mean = stats.summarize(restricted, None).mean
    return ArmResult(name, n, mean, km=km, reached=reached)


def _time_data(check, treat, base, ctx):
    """(data, paired, horizon) of a time check on one setup: ``data`` is (time, event) of
    the treatment then the baseline, seed-paired when at least two pairs exist; or the
    "no runs yet" verdict when there is nothing to compare."""
    if "epochs_to_threshold" not in treat.columns and ctx.history is None:
        return empty(check, "no runs yet", "no epochs_to_threshold column and no history")
    tt, et = _time_event(treat, check, ctx)
    tb, eb = _time_event(base, check, ctx)
    okt, okb = ~np.isnan(tt), ~np.isnan(tb)
    if not okt.any() or not okb.any():
        thr = "" if check.threshold is None else f" at threshold {check.threshold:g}"
        return empty(check, "no runs yet", f"no runs with epochs-to-threshold{thr} in one arm")
    # The planned epochs set the horizon, so a run censored early is not mistaken for the end.
    observed = np.r_[tt[okt], tb[okb]]
    if "epochs" in treat.columns and "epochs" in base.columns:
        observed = np.r_[observed, treat["epochs"].to_numpy(float), base["epochs"].to_numpy(float)]
    horizon = max(int(np.nanmax(observed)), 1)
    pairs = runs_mod.pair(treat.assign(_t=tt, _e=et), base.assign(_t=tb, _e=eb))
    paired = False
    if pairs is not None:
        pairs = pairs[pairs["_t_t"].notna() & pairs["_t_b"].notna()]
        paired = len(pairs) >= 2
    if paired:
        data = [pairs[c].to_numpy() for c in ("_t_t", "_e_t", "_t_b", "_e_b")]
    else:
        data = [tt[okt], et[okt], tb[okb], eb[okb]]
    data = [np.asarray(data[0], float), np.asarray(data[1], bool),
            np.asarray(data[2], float), np.asarray(data[3], bool)]  # fmt: skip
    return data, paired, horizon


def _time_saved(got) -> np.ndarray | None:
    """Epochs saved per seed pair (baseline minus treatment, restricted to the budget) from
    :func:`_time_data`'s result: the differences the time check's t-test takes; None when the
    runs do not pair."""
    if isinstance(got, CheckVerdict) or not got[1]:
        return None
    data, _, horizon = got
    rt = ptests.restricted_times(data[0], data[1], horizon)
    return ptests.restricted_times(data[2], data[3], horizon) - rt


def _eval_time(
    check, claim, treat, base, ctx, shape: Shape | None = None, timed=None
) -> CheckVerdict:
    """``timed``: :func:`_time_data` of these arms when the caller has it already."""
    got = _time_data(check, treat, base, ctx) if timed is None else timed
    if isinstance(got, CheckVerdict):
        return got
    data, paired, horizon = got
    arms = (
        _time_arm(check.treatment, data[0], data[1], horizon),
        _time_arm(check.baseline, data[2], data[3], horizon),
    )
    cmp = survival.time_to_threshold_comparison(*data, horizon=horizon, paired=paired)
    thr = "its threshold" if check.threshold is None else f"{check.threshold:g}"
    if not cmp.measurable:
        fa, fb = cmp.reached
        reason = (
            f"{check.treatment} vs {check.baseline}: {fa:.0%} and {fb:.0%} of runs reached "
            f"{thr} within the budget of {horizon} epochs; fewer than "
            f"{ptests.MIN_REACHED:.0%} in both arms, so this budget cannot measure the time to "
            "it (a longer budget or a lower threshold can)."
        )
        return CheckVerdict(
            check, NOT_MEASURABLE, reason, arms[0], arms[1], paired=paired,
            details={"horizon": horizon, "reached": [fa, fb]},
            seeds_reason="not measurable at this budget",
        )  # fmt: skip
    # Larger is better for the power: minus the restricted time, treatment first.
    ra = -ptests.restricted_times(data[0], data[1], horizon)
    rb = -ptests.restricted_times(data[2], data[3], horizon)
    if cmp.reached[0] == 0 and cmp.reached[1] == 0:
        seeds = SeedsNeeded.not_applicable(ALL_CENSORED)
    else:
        seeds = _seeds(check, *_claimed(check, ra, rb), paired)
    describe = f"epochs saved (mean epochs restricted to the {horizon}-epoch budget)"
    return judged(
        check, claim, cmp.epochs_saved, cmp.p_faster, arms, describe,
        pvalue=cmp.pvalue, paired=paired, seeds=seeds,
        details={"horizon": horizon, "reached": list(cmp.reached)},
        shape=shape,
    )  # fmt: skip


def _eval_lr(check, claim, treat, base, ctx) -> CheckVerdict:
    col = check.metric
    higher = not check.lower_is_better
    lt, vt = treat["lr"].to_numpy(float), treat[col].to_numpy(float)
    lb, vb = base["lr"].to_numpy(float), base[col].to_numpy(float)
    common = np.intersect1d(lt[~np.isnan(vt)], lb[~np.isnan(vb)])
    if common.size < 2:
        return empty(check, "no runs yet", f"needs >= 2 common learning rates, has {common.size}")
    kw = {"higher_is_better": higher, "n_resamples": ctx.n_resamples}
    rt = tuning.lr_robustness(lt, vt, ctx.rng, **kw)
    rb = tuning.lr_robustness(lb, vb, ctx.rng, **kw)
    effect, pvalue = tuning.lr_worst_case_difference(lt, vt, lb, vb, higher_is_better=higher)
    sign = 1.0 if higher else -1.0
    seeds = _seeds(
        check,
        *_claimed(check, sign * vt[np.isclose(lt, rt.worst_lr)],
                  sign * vb[np.isclose(lb, rb.worst_lr)]),
        False,
    )  # fmt: skip
    arms = tuple(
        ArmResult(name, int(min(np.sum(np.isclose(lr, x)) for x in common)),
                  _scaled(r.worst, _scale(check)), lr=r)
        for name, r, lr in ((check.treatment, rt, lt), (check.baseline, rb, lb))
    )  # fmt: skip
    describe = f"worst-case mean {col} over {common.size} learning rates, difference"
    # Decided by the conservative t/Bonferroni test of pairedstats.worstcase (its p-value
    # enters the claim's Holm step like any other check's).
    return judged(
        check, claim, effect, None, arms, describe,
        pvalue=pvalue, seeds=seeds, details={"common_lrs": common.tolist()},
    )  # fmt: skip


def _eval_std(check, claim, treat, base, ctx) -> CheckVerdict:
    vt, vb = _finite(treat, check.metric), _finite(base, check.metric)
    if vt.size == 0 or vb.size == 0:
        return empty(check, "no runs yet", f"no finite '{check.metric}' values in one arm")
    effect = stats.std_difference(vt, vb, ctx.rng, n_resamples=ctx.n_resamples)
    arms = (
        _summary_arm(check.treatment, vt, check, ctx, "std"),
        _summary_arm(check.baseline, vb, check, ctx, "std"),
    )
    pairs = runs_mod.pair(treat, base)
    if pairs is not None:
        keep = pairs[f"{check.metric}_t"].notna() & pairs[f"{check.metric}_b"].notna()
        pt = pairs.loc[keep, f"{check.metric}_t"].to_numpy(float)
        pb = pairs.loc[keep, f"{check.metric}_b"].to_numpy(float)
        pvalue, test = float(ptests.spread_pvalue(pt, pb)), "swap randomisation over seed pairs"
    else:
        pvalue, test = ptests.levene_pvalue(vt, vb), "Brown-Forsythe"
    describe = f"std of {check.metric} over seeds, baseline minus treatment ({test})"
    return judged(
        check, claim, effect, None, arms, describe, pvalue=pvalue, paired=pairs is not None
    )


_EVALUATORS = {
    "mean": _eval_mean,
    "rate": _eval_rate,
    "time_to_threshold": _eval_time,
    "lr_worst_case": _eval_lr,
    "seed_std": _eval_std,
}


def _benchmark_figure(raw: Any) -> Estimate | None:
    if isinstance(raw, Estimate):
        return raw
    if isinstance(raw, Mapping) and "value" in raw:
        v = float(raw["value"])
        return Estimate(v, float(raw.get("low", v)), float(raw.get("high", v)))
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return Estimate(float(raw), float(raw), float(raw))
    return None


def _eval_benchmark(check: Check, benchmarks: Mapping[str, Any] | None) -> CheckVerdict:
    fig = _benchmark_figure((benchmarks or {}).get(check.metric))
    if fig is None:
        return empty(check, "no data", f"no benchmark figure '{check.metric}' given")
    below = check.comparison == "below"
    if (fig.high < check.value) if below else (fig.low > check.value):
        verdict = "supported"
    elif (fig.low >= check.value) if below else (fig.high <= check.value):
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    side = "below" if below else "above"
    ci = f"{fig.value:+.4g} [{fig.low:+.4g}, {fig.high:+.4g}]"
    reason = f"{check.metric} = {ci}, claimed {side} {check.value:g}: {verdict}."
    return CheckVerdict(check, verdict, reason, figure=fig)


def select_arm(
    runs: pd.DataFrame, check: Check, arm: str, extra: Mapping[str, Any]
) -> tuple[pd.DataFrame, str | None]:
    """The runs of one arm of a check at any scale (task, filters, the arm's own filters),
    and why there are none."""
    if "task" not in runs.columns or "arm" not in runs.columns:
        return runs.iloc[:0], "the runs table has no task/arm columns"
    chosen = runs[(runs["task"] == check.task) & (runs["arm"] == arm)]
    chosen, missing = runs_mod.select(chosen, {**check.filters, **extra})
    if missing is None and chosen.empty:
        missing = f"no {arm} runs of '{check.task}' match {check.filters | dict(extra)}"
    return chosen, missing


def by_setup(
    check: Check, ctx: Context
) -> tuple[list[tuple[setups.Setup, pd.DataFrame, pd.DataFrame]], str | None]:
    """(setup, treatment runs, baseline runs) for every setup holding both arms of the check
    (largest first; each arm at its best learning rate there for ``select_lr: best``), and
    why there is none."""
    treat, why_t = select_arm(ctx.runs, check, check.treatment, check.treatment_filters)
    base, why_b = select_arm(ctx.runs, check, check.baseline, check.baseline_filters)
    if why_t or why_b:
        return [], why_t or why_b
    out, why = [], None
    for setup, frame in ctx.setups(check.compared).split(pd.concat([treat, base])):
        is_treat = frame.index.isin(treat.index)
        t, b = frame[is_treat], frame[~is_treat]
        if t.empty or b.empty:
            continue
        if check.select_lr == "best":
            (t, why_t), (b, why_b) = runs_mod.best_lr(t), runs_mod.best_lr(b)
            if why_t or why_b:
                why = why_t or why_b
                continue
        out.append((setup, t, b))
    if not out and why is None:
        why = (
            f"the {check.treatment} and {check.baseline} runs share no setup (they differ in "
            "task, delay, width, budget, learning rate or clipping)"
        )
    return out, why


#: statistics a paired t-test decides, behind the shape gate (``pairedstats.shape``)
_T_TESTED = ("mean", "time_to_threshold")


def _shape(check: Check, ctx: Context, timed: list) -> Shape:
    """The pool the shape gate reads for ``check``: a mean's metric against the baseline
    across the whole data (every arm and setup: :meth:`Context.shape`); a time check's own
    epochs saved across its setups (``timed``: :func:`_time_data` per setup; the time depends
    on the check's threshold)."""
    if check.statistic == "mean":
        return ctx.shape(check.task, check.metric, check.baseline)
    saved = (_time_saved(got) for got in timed)
    return Shape.of(d for d in saved if d is not None)


def evaluate_check(
    check: Check, claim: Claim, ctx: Context, benchmarks: Mapping[str, Any] | None
) -> list[CheckVerdict]:
    """The verdicts on one check of ``claim``: one per setup holding both arms, largest
    first (one "no runs yet" verdict when there is none)."""
    if check.statistic == "benchmark":
        return [_eval_benchmark(check, benchmarks)]
    runs = ctx.runs
    if "task" in runs.columns and not (runs["task"] == check.task).any():
        return [empty(check, "no runs yet", f"no runs of task '{check.task}'")]
    if check.metric not in runs.columns and not (
        check.statistic == "time_to_threshold" and ctx.history is not None
    ):
        return [empty(check, "no runs yet", f"no '{check.metric}' column in the runs")]
    if check.compared and "lr" not in runs.columns:
        return [empty(check, "no runs yet", "no 'lr' column in the runs")]
    groups, why = by_setup(check, ctx)
    timed = [None] * len(groups)  # a time check's data per setup, computed once
    if check.statistic == "time_to_threshold":
        timed = [_time_data(check, t, b, ctx) for _, t, b in groups]
    kw = {"shape": _shape(check, ctx, timed)} if check.statistic in _T_TESTED else {}
    out = []
    for (setup, treat, base), got in zip(groups, timed, strict=True):
        extra = {"timed": got} if got is not None else {}
        verdict = _EVALUATORS[check.statistic](check, claim, treat, base, ctx, **kw, **extra)
        scale = setup.scale(check.paper_setup, check.compared)
        reason = f"{scale.capitalize()} ({setup.words()}): {verdict.reason}"
        out.append(replace(verdict, setup=setup, scale=scale, reason=reason))
    return out or [empty(check, "no runs yet", why or "no runs")]


def evaluate_claims(
    claims: list[Claim],
    runs: pd.DataFrame,
    history: pd.DataFrame | None,
    rng: np.random.Generator | int,
    benchmarks: Mapping[str, Any] | None = None,
    *,
    n_resamples: int | None = None,
    context: Any = None,
) -> list[Verdict]:
    """Judge every claim on the study's runs (decision rule: module docstring).

    Args:
        claims: from :func:`dashboards.claims.load_claims`.
        runs: one row per run; history: one row per (run, epoch), or None.
        rng: generator (or seed) driving every bootstrap, for reproducible verdicts.
        benchmarks: figures for benchmark claims (C9), e.g. ``{"backward_time_ratio": 0.8}``
            or ``{"backward_time_ratio": {"value": 0.8, "low": 0.75, "high": 0.86}}``.
        n_resamples: bootstrap resamples per interval (default: ``stats.N_RESAMPLES``).
        context: a :class:`Context` of these runs to reuse (the report
            draws its figures from the same one); built here when None.

    Returns:
        one :class:`Verdict` per claim, in order.
    """
    ctx = context or Context(runs, history, np.random.default_rng(rng), n_resamples)
    out = []
    for claim in claims:
        per_check = [evaluate_check(c, claim, ctx, benchmarks) for c in claim.checks]
        every = tuple(v for verdicts in per_check for v in verdicts)
        out.append(aggregate(claim, [headline(v) for v in per_check], every))
    return out
