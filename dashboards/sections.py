"""What the report shows beyond the verdict table, as data: the figures of each claim, the
paper's Tables 1 and 2 beside ours, and the tuning-budget figure.

Everything here selects runs and numbers (through :mod:`dashboards.evaluate`'s own selection,
so a figure shows exactly the runs its check judged) and draws them with
:mod:`dashboards.figures`; the template only lays them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dashboards import claims as claims_mod
from dashboards import figures, survival, tuning
from dashboards.claims import Check
from dashboards.configs import ConfigRow
from dashboards.evaluate import Context, by_setup
from dashboards.stats import Estimate
from dashboards.verdicts import CheckVerdict, Verdict
from pairedstats.bestof import BestOf
from trainables.contract import transfer_ratio

MAX_CURVES = 50
MAX_PANELS = 6


@dataclass(frozen=True)
class Figure:
    title: str
    uri: str  # a PNG data URI; empty when there is nothing to draw (the caption says so)
    caption: str


_SHORT = {"p_detach": "p", "c_detach": "c", "seq_len": "T", "clip": "clip", "lr": "lr"}


def describe_filters(filters: Mapping[str, Any]) -> str:
    """``p=0.25, T=100``: filters in a few characters."""

    def shown(value: Any) -> str:
        if isinstance(value, list | tuple):
            return "/".join(shown(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{_SHORT.get(k, k)}={shown(v)}" for k, v in filters.items())


def _short(text: str, width: int = 64) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _arm_label(check: Check, treatment: bool) -> str:
    arm = check.treatment if treatment else check.baseline
    extra = check.treatment_filters if treatment else check.baseline_filters
    return " ".join(w for w in (arm, describe_filters(extra)) if w)


def headline_runs(cv: CheckVerdict, ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The treatment and baseline runs a check's headline verdict judged (its setup)."""
    if cv.setup is None:
        return None
    groups, _ = by_setup(cv.check, ctx)
    return next(((t, b) for setup, t, b in groups if setup == cv.setup), None)


def claim_figures(verdict: Verdict, ctx: Context, *, seed: int) -> list[Figure]:
    """Final-metric distributions, P(A>B) per check and Kaplan-Meier success curves for the
    runs behind each check's headline verdict, and the scale ladder for claims the paper ties
    to the delay. (The curves of every setup lead the report, in :mod:`dashboards.overview`.)"""
    rng = np.random.default_rng(seed)
    judged = [cv for cv in verdict.checks if cv.has_data and cv.setup is not None]
    runs = {id(cv): headline_runs(cv, ctx) for cv in judged}
    figs = [
        _distributions_figure(judged, runs, rng),
        _intervals_figure(verdict.checks),
        _success_figure(judged, runs, ctx),
        ladder_figure(verdict) if verdict.claim.ladder else None,
    ]
    return [f for f in figs if f is not None]


def _panel_title(cv: CheckVerdict) -> str:
    return f"{_short(cv.name, 44)}\n{cv.scale}, {cv.setup.short()}"


def _distributions_figure(judged, runs, rng) -> Figure | None:
    panels, percent, log, seen = [], [], [], set()
    for cv in judged:
        check, pair = cv.check, runs[id(cv)]
        if pair is None or check.metric in claims_mod.BOOLEAN_METRICS:
            continue
        if check.statistic == "time_to_threshold" or len(panels) >= MAX_PANELS:
            continue
        # One panel per metric and pair of arms: a rate or a spread of the same values draws
        # the same dots.
        key = (check.metric, cv.setup, tuple(pair[0]["run_id"]), tuple(pair[1]["run_id"]))
        if key in seen:
            continue
        seen.add(key)
        entries = []
        for frame, treatment in ((pair[1], False), (pair[0], True)):
            if check.metric not in frame.columns:
                continue
            arm = check.treatment if treatment else check.baseline
            if check.statistic == "lr_worst_case" and "lr" in frame.columns:
                for lr, sub in frame.groupby("lr"):
                    entries.append((f"{arm} lr={lr:g}", arm, sub[check.metric].to_numpy(float)))
            else:
                entries.append((_arm_label(check, treatment), arm,
                                frame[check.metric].to_numpy(float)))  # fmt: skip
        if not any(np.isfinite(e[2]).any() for e in entries):
            continue
        panels.append((_panel_title(cv), entries))
        percent.append(check.percent and check.metric != "max_grad_norm")
        log.append(check.metric == "max_grad_norm")
    if not panels:
        return None
    fig = figures.distributions(panels, percent=percent, log=log, rng=rng)
    return Figure(
        "Final metrics per seed",
        figures.png_data_uri(fig),
        "The runs behind each check's headline verdict (its setup in the panel title): one dot "
        "per run, boxes span the quartiles (whiskers 1.5 IQR). Accuracies in percent; "
        "gradient norms on a log scale.",
    )


def _intervals_figure(checks: Sequence[CheckVerdict]) -> Figure | None:
    rows = [
        (_short(f"{cv.name} ({cv.scale})"), cv.p_improve)
        for cv in checks
        if cv.p_improve is not None
    ]
    if not rows:
        return None
    return Figure(
        "Probability of improvement",
        figures.png_data_uri(figures.intervals(rows)),
        "P(treatment better than baseline) per check at its headline setup, with its 95% CI "
        "(Clopper-Pearson on the win count over seed pairs, ties counted half and given to "
        "either side for the bounds; for epochs-to-threshold: P(faster)). Solid line: 0.5 "
        "(no difference); dotted: 0.75 (a meaningful improvement, Bouthillier et al. 2021). "
        "P(A>B) is an effect size: the verdicts rest on each check's own test.",
    )


def _success_figure(judged, runs, ctx: Context) -> Figure | None:
    panels, blank = [], []
    for cv in judged:
        check, pair = cv.check, runs[id(cv)]
        if check.statistic != "time_to_threshold" or check.threshold is None or pair is None:
            continue
        fits = []
        for frame, treatment in ((pair[1], False), (pair[0], True)):
            first, last = ctx.index.reach(frame["run_id"].tolist(), check.threshold)
            ok = ~np.isnan(last)
            if not ok.any():
                continue
            time, event = survival.censored_epochs(first[ok], last[ok])
            planned = frame["epochs"].to_numpy(float) if "epochs" in frame.columns else []
            horizon = max(1, int(np.nanmax(np.r_[last[ok], planned])))
            km = survival.kaplan_meier(time, event, horizon)
            arm = check.treatment if treatment else check.baseline
            label = f"{_arm_label(check, treatment)} (n={int(ok.sum())})"
            fits.append((label, arm, km, time[~event]))
        if fits and not any(np.any(km.reached > 0) for _, _, km, _ in fits):
            blank.append(f"{cv.name} ({cv.setup.short()})")
        elif fits:
            panels.append((_panel_title(cv), fits))
    nothing = (
        f"No run of either arm reached the threshold within its budget for {'; '.join(blank)}: "
        "there is no curve to draw, and the check is not measurable at this budget."
        if blank
        else ""
    )
    if not panels:
        # a figure with nothing to show is one sentence (Figure.uri empty), not a flat plot
        return Figure("Success over epochs", "", nothing) if blank else None
    return Figure(
        "Success over epochs",
        figures.png_data_uri(figures.success_curves(panels[:MAX_PANELS])),
        "Fraction of runs that reached the check's threshold by each epoch, at its headline "
        "setup (Kaplan-Meier; runs that stopped or diverged before reaching it are censored at "
        "their last epoch, not dropped, and marked with a tick), with pointwise 95% log-log "
        "bands." + (" " + nothing if nothing else ""),
    )


_LADDER_UNITS = {
    "time_to_threshold": "epochs saved",
    "seed_std": "std over seeds, reduction",
    "rate": "rate difference",
}


def ladder_panels(verdict: Verdict) -> list[tuple[str, str, list[figures.LadderSeries]]]:
    """The scale ladder of a claim as data: per metric (title, y label, series), each series
    one check's effect at every copying delay it was judged at (display units), with the
    paper's effect at the paper's delay where the paper gives both arms' numbers."""
    panels: dict[tuple[str, str], list[figures.LadderSeries]] = {}
    for check in verdict.claim.checks:
        at = [cv for cv in verdict.by_setup if cv.check is check and cv.has_data
              and cv.effect is not None and cv.setup is not None
              and cv.setup.task == "copying" and not math.isnan(cv.setup.delay)]  # fmt: skip
        if not at:
            continue
        scale = 100.0 if check.percent else 1.0
        effects = [Estimate(*(x * scale for x in cv.effect)) for cv in at]
        paper = None
        t, b = check.paper.get(check.treatment), check.paper.get(check.baseline)
        delay = check.paper_setup.get("seq_len")
        if t is not None and b is not None and delay is not None:
            paper = (float(delay), float(t) - float(b))
        label = describe_filters(check.treatment_filters) or check.treatment
        delays = np.array([cv.setup.delay for cv in at])
        series = figures.LadderSeries(label, delays, effects, [cv.scale for cv in at], paper)
        unit = _LADDER_UNITS.get(check.statistic, "difference")
        ylabel = f"{unit} ({'pp' if check.percent else check.unit or 'units'})"
        panels.setdefault((check.metric, ylabel), []).append(series)
    return [(metric, ylabel, series) for (metric, ylabel), series in panels.items()]


def ladder_figure(verdict: Verdict) -> Figure | None:
    """The scale ladder of a claim (:func:`ladder_panels`) drawn, one panel per metric."""
    panels = ladder_panels(verdict)
    if not panels:
        return None
    return Figure(
        "The scale ladder: effect against the delay",
        figures.png_data_uri(figures.ladder(panels[:MAX_PANELS])),
        "The treatment's effect over the vanilla baseline (positive: the claimed direction for "
        "'better' checks), with its 95% CI, at every copying delay T the data holds (filled: "
        "paper scale, open: reduced or other scale; several setups at one T sit side by side); "
        "stars are the paper's own effect at its T. Does the benefit grow with the delay, and "
        "from which T on does it appear?",
    )


# --------------------------------------------------------------------------------------------
# The paper's tables beside ours (from the verdicts: the numbers are the claims' own)


@dataclass(frozen=True)
class Cell:
    """Our number (in the check's unit, with CI) beside the paper's, for one arm."""

    ours: Estimate | None
    paper: float | None
    n: int
    verdict: str | None = None
    best_of: BestOf | None = None  # expected best of 5 seeds: what the paper's number is

    @property
    def paper_vs_best(self) -> str | None:
        """The paper's number judged against the quantity it is (a best of 5 seeds): inside,
        above or below our expected best-of-5 interval; None without both."""
        b = self.best_of
        if self.paper is None or b is None or math.isnan(b.low) or math.isnan(b.high):
            return None
        if self.paper > b.high:
            return "above our best-of-5 interval"
        if self.paper < b.low:
            return "below our best-of-5 interval"
        return "inside our best-of-5 interval"


def _checks_of(verdicts: Sequence[Verdict], cid: str) -> list[CheckVerdict]:
    """The claim's checks as judged at paper scale (the paper's tables compare like with
    like: a reduced-scale number beside the paper's would mislead)."""
    return [cv for v in verdicts if v.claim_id == cid for cv in v.by_setup if cv.at_paper_scale]


def _cell(cv: CheckVerdict, treatment: bool, verdict: str | None = None) -> Cell:
    arm = cv.treatment if treatment else cv.baseline
    name = cv.check.treatment if treatment else cv.check.baseline
    ours = arm.headline if arm is not None else None
    best = arm.best_of if arm is not None else None
    return Cell(ours, cv.paper.get(name), arm.n if arm is not None else 0, verdict, best)


TABLE1_COLUMNS = (("vanilla", "vanilla"), ("h0.5", "h-detach 0.5"), ("h0.25", "h-detach 0.25"))


def table1(verdicts: Sequence[Verdict]) -> list[tuple[int, dict[str, Cell]]]:
    """Table 1 at paper scale: transfer copying accuracy per delay T (rows), vanilla / h-detach
    0.5 / 0.25 (T is the ratio of the check times the paper's training delay)."""
    by_delay: dict[int, dict[str, Cell]] = {}
    for cv in _checks_of(verdicts, "C3"):
        ratio, p = transfer_ratio(cv.check.metric), cv.check.treatment_filters.get("p_detach")
        trained = cv.check.paper_setup.get("seq_len")
        if ratio is None or p is None or trained is None:
            continue
        row = by_delay.setdefault(int(ratio * trained), {})
        row[f"h{p:g}"] = _cell(cv, True, cv.verdict)
        base = _cell(cv, False)
        if "vanilla" not in row or (row["vanilla"].ours is None and base.ours is not None):
            row["vanilla"] = base
    return sorted(by_delay.items())


def table2(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """Table 2 at paper scale: MNIST / pMNIST test accuracy, each arm at its best lr."""
    rows = []
    for cid in ("C4", "C5"):
        for cv in _checks_of(verdicts, cid):
            if cv.check.metric != "test_acc_at_best":
                continue
            rows.append(
                {
                    "task": cv.check.task or "",
                    "p": cv.check.treatment_filters.get("p_detach"),
                    "baseline": _cell(cv, False),
                    "treatment": _cell(cv, True),
                    "verdict": cv.verdict,
                }
            )
    return rows


def expected_max_figure(config_rows: Sequence[ConfigRow]) -> Figure | None:
    """Expected best validation accuracy against the number of configurations tried."""
    by_problem: dict[str, list[tuple[str, float]]] = {}
    for row in config_rows:
        value = row.best_val_acc.mean.value
        if math.isnan(value):
            continue
        by_problem.setdefault(row.setup.short(), []).append((row.arm, value))
    panels = []
    for title, values in sorted(by_problem.items()):
        if len(values) < 2:
            continue
        pooled = tuning.expected_max(np.array([v for _, v in values]))
        series = [("all configurations", "all", pooled)]
        for arm in sorted({a for a, _ in values}):
            arm_values = np.array([v for a, v in values if a == arm])
            if arm_values.size >= 2:
                series.append((arm, arm, tuning.expected_max(arm_values)))
        panels.append((title, series))
    if not panels:
        return None
    shown = panels[:MAX_PANELS]
    hidden = len(panels) - len(shown)
    more = f" {hidden} further problems are not drawn." if hidden else ""
    return Figure(
        "Expected best validation accuracy vs number of trials",
        figures.png_data_uri(figures.expected_max(shown)),
        "Expected best validation accuracy (mean over seeds of a configuration) among n "
        "configurations drawn from those the search tried, mean ± std (Dodge et al. 2019, "
        "unbiased order-statistic estimator), per task and copying delay. A curve that keeps "
        "rising needs more trials; arms compared at equal n compare equal tuning budgets." + more,
    )
