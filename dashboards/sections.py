"""What the report shows beyond the verdict table, as data: the figures of each claim, the
paper's Tables 1 and 2 beside ours, and the tuning-budget figure.

Everything here selects runs and numbers (through :mod:`dashboards.evaluate`'s own selection,
so a figure shows exactly the runs its check judged) and draws them with
:mod:`dashboards.figures`; the template only lays them out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dashboards import claims as claims_mod
from dashboards import figures, survival, tuning
from dashboards.claims import Check, Claim
from dashboards.configs import ConfigRow
from dashboards.evaluate import select_arm
from dashboards.runs import HistoryIndex
from dashboards.stats import Estimate
from dashboards.verdicts import CheckVerdict, Verdict
from trainables.contract import transfer_delay

MAX_CURVES = 50
MAX_PANELS = 6


@dataclass(frozen=True)
class Figure:
    title: str
    uri: str  # a PNG data URI
    caption: str


@dataclass(frozen=True, eq=False)
class _Group:
    """The runs of one arm in one check; groups selecting the same runs are equal."""

    label: str
    check: Check
    arm: str
    extra: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> tuple:
        filters = tuple(sorted((k, str(v)) for k, v in self.check.filters.items()))
        extra = tuple((k, str(v)) for k, v in self.extra)
        return (self.arm, self.check.task, filters, extra, self.check.select_lr)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Group) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


_SHORT = {"p_detach": "p", "c_detach": "c", "seq_len": "T", "clip": "clip", "lr": "lr"}


def describe_filters(filters: Mapping[str, Any]) -> str:
    """``p=0.25, T=100``: filters in a few characters."""

    def shown(value: Any) -> str:
        if isinstance(value, list | tuple):
            return "/".join(shown(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{_SHORT.get(k, k)}={shown(v)}" for k, v in filters.items())


def _common_filters(checks: Sequence[Check]) -> dict[str, Any]:
    common = dict(checks[0].filters)
    for check in checks[1:]:
        common = {k: v for k, v in common.items() if check.filters.get(k) == v}
    return common


def _groups(claim: Claim) -> tuple[list[tuple[Check, _Group, _Group]], dict[str, Any]]:
    """(check, treatment group, baseline group) per run-based check, and the shared filters."""
    run_checks = [c for c in claim.checks if c.statistic != "benchmark"]
    if not run_checks:
        return [], {}
    common = _common_filters(run_checks)
    several_tasks = len({c.task for c in run_checks}) > 1
    out = []
    for check in run_checks:
        own = {k: v for k, v in check.filters.items() if k not in common}
        made = []
        for arm, extra in (
            (check.treatment, check.treatment_filters),
            (check.baseline, check.baseline_filters),
        ):
            words = [check.task if several_tasks else "", arm, describe_filters({**extra, **own})]
            label = " ".join(w for w in words if w)
            made.append(_Group(label, check, arm, tuple(sorted(extra.items()))))
        out.append((check, made[0], made[1]))
    return out, common


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


def _short(text: str, width: int = 64) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def claim_figures(
    claim: Claim,
    verdict: Verdict,
    runs: pd.DataFrame,
    index: HistoryIndex,
    *,
    max_curves: int,
    seed: int,
) -> list[Figure]:
    """Per-seed validation curves per arm, final-metric distributions, P(A>B) per check and
    Kaplan-Meier success curves, for the runs the claim's checks judged."""
    pairs, common = _groups(claim)
    if not pairs:
        return []
    rng = np.random.default_rng(seed)
    where = describe_filters(common)
    where = f" ({where})" if where else ""
    cache: dict[tuple, pd.DataFrame] = {}

    def select(group: _Group) -> pd.DataFrame:
        if group.key not in cache:
            cache[group.key] = select_arm(runs, group.check, group.arm, dict(group.extra))[0]
        return cache[group.key]

    # Baselines first: the reference panel reads first.
    groups = dict.fromkeys([b for _, _, b in pairs] + [t for _, t, _ in pairs])
    with_runs = [g for g in groups if not select(g).empty]
    if not with_runs:
        return []
    out = [
        fig
        for fig in (
            _curves_figure(with_runs, select, index, rng, max_curves, where),
            _distributions_figure(pairs, select, runs, rng, where),
            _intervals_figure(verdict.checks),
            _success_figure(pairs, select, index, common, where),
        )
        if fig is not None
    ]
    return out


def _curves_figure(groups, select, index, rng, max_curves, where) -> Figure | None:
    panels, sampled_any = [], False
    skipped = max(0, len(groups) - MAX_PANELS)
    for group in groups[:MAX_PANELS]:
        run_ids = select(group)["run_id"].tolist()
        full = index.matrix(run_ids, "val_acc")
        if full.shape[1] == 0:
            continue
        pick = _sample(len(run_ids), max_curves, rng)
        sampled_any |= len(pick) < len(run_ids)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs
            median = np.nanmedian(full, axis=0)
        panels.append(figures.CurvePanel(group.label, group.arm, full[pick], median, len(run_ids)))
    if not panels:
        return None
    caption = (
        f"Validation accuracy per epoch{where}: one thin line per seed, the median over all "
        "seeds of the arm in black."
    )
    if sampled_any:
        caption += (
            f" Panels with more than {max_curves} seeds show a random sample of "
            f"{max_curves} of them (the panel title says how many); the median uses all."
        )
    if skipped:
        caption += f" {skipped} further arms are not drawn."
    uri = figures.png_data_uri(figures.curves(panels))
    return Figure("Validation accuracy per seed", uri, caption)


def _distributions_figure(pairs, select, runs, rng, where) -> Figure | None:
    panels, percent, log, seen = [], [], [], set()
    for check, treat, base in pairs:
        if check.metric in claims_mod.BOOLEAN_METRICS or check.statistic == "time_to_threshold":
            continue
        key = (check.metric, treat, base)
        if check.metric not in runs.columns or key in seen or len(panels) >= MAX_PANELS:
            continue
        seen.add(key)
        entries = []
        for group in (base, treat):
            frame = select(group)
            if check.statistic == "lr_worst_case" and "lr" in frame.columns:
                for lr, sub in frame.groupby("lr"):
                    label = f"{group.arm} lr={lr:g}"
                    entries.append((label, group.arm, sub[check.metric].to_numpy(float)))
            else:
                entries.append((group.label, group.arm, frame[check.metric].to_numpy(float)))
        if not any(np.isfinite(e[2]).any() for e in entries):
            continue
        panels.append((f"{check.metric}\n{check.name}", entries))
        percent.append(check.percent and check.metric != "max_grad_norm")
        log.append(check.metric == "max_grad_norm")
    if not panels:
        return None
    fig = figures.distributions(panels, percent=percent, log=log, rng=rng)
    return Figure(
        "Final metrics per seed",
        figures.png_data_uri(fig),
        f"Final metrics{where}: one dot per run, boxes span the quartiles (whiskers 1.5 IQR). "
        "Accuracies in percent; gradient norms on a log scale.",
    )


def _intervals_figure(checks: Sequence[CheckVerdict]) -> Figure | None:
    rows = [(_short(cv.name), cv.p_improve) for cv in checks if cv.p_improve is not None]
    if not rows:
        return None
    return Figure(
        "Probability of improvement",
        figures.png_data_uri(figures.intervals(rows)),
        "P(treatment better than baseline) per check with its 95% bootstrap CI (paired over "
        "seeds where possible; for epochs-to-threshold: P(faster)). Solid line: 0.5 (no "
        "difference); dotted: 0.75 (a meaningful improvement, Bouthillier et al. 2021). A CI "
        "entirely right of 0.5 is a significant improvement.",
    )


def _success_figure(pairs, select, index, common, where) -> Figure | None:
    km_panels: dict[tuple, tuple[str, dict]] = {}
    for check, treat, base in pairs:
        if check.statistic != "time_to_threshold" or check.threshold is None:
            continue
        own = {k: v for k, v in check.filters.items() if k not in common}
        title = f"{check.task}: val acc >= {check.threshold * 100:g}%"
        if own:
            title += f" ({describe_filters(own)})"
        key = (
            check.task,
            check.threshold,
            tuple(sorted((k, str(v)) for k, v in check.filters.items())),
        )
        entry = km_panels.setdefault(key, (title, {}))
        for group in (base, treat):
            entry[1].setdefault(group, None)
    panels = []
    for (_, threshold, _), (title, groups) in km_panels.items():
        fits = []
        for group in groups:
            frame = select(group)
            if frame.empty:
                continue
            first, last = index.reach(frame["run_id"].tolist(), threshold)
            ok = ~np.isnan(last)
            if not ok.any():
                continue
            time, event = survival.censored_epochs(first[ok], last[ok])
            horizon = int(np.nanmax(last))
            if "epochs" in frame.columns and frame["epochs"].notna().any():
                horizon = max(horizon, int(np.nanmax(frame["epochs"].to_numpy(float))))
            km = survival.kaplan_meier(time, event, max(horizon, 1))
            fits.append((f"{group.label} (n={int(ok.sum())})", group.arm, km))
        if fits:
            panels.append((title, fits))
    if not panels:
        return None
    return Figure(
        "Success over epochs",
        figures.png_data_uri(figures.success_curves(panels[:MAX_PANELS])),
        f"Fraction of runs that reached the threshold by each epoch{where} (Kaplan-Meier; runs "
        "that stopped or diverged before reaching it are censored at their last epoch, not "
        "dropped), with pointwise 95% log-log bands.",
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


def _checks_of(verdicts: Sequence[Verdict], cid: str) -> list[CheckVerdict]:
    return [cv for v in verdicts if v.claim_id == cid for cv in v.checks]


def _cell(cv: CheckVerdict, treatment: bool, verdict: str | None = None) -> Cell:
    arm = cv.treatment if treatment else cv.baseline
    name = cv.check.treatment if treatment else cv.check.baseline
    ours = arm.headline if arm is not None else None
    return Cell(ours, cv.paper.get(name), arm.n if arm is not None else 0, verdict)


TABLE1_COLUMNS = (("vanilla", "vanilla"), ("h0.5", "h-detach 0.5"), ("h0.25", "h-detach 0.25"))


def table1(verdicts: Sequence[Verdict]) -> list[tuple[int, dict[str, Cell]]]:
    """Table 1: transfer copying accuracy per delay T (rows), vanilla / h-detach 0.5 / 0.25."""
    by_delay: dict[int, dict[str, Cell]] = {}
    for cv in _checks_of(verdicts, "C3"):
        delay, p = transfer_delay(cv.check.metric), cv.check.treatment_filters.get("p_detach")
        if delay is None or p is None:
            continue
        row = by_delay.setdefault(delay, {})
        row[f"h{p:g}"] = _cell(cv, True, cv.verdict)
        base = _cell(cv, False)
        if "vanilla" not in row or (row["vanilla"].ours is None and base.ours is not None):
            row["vanilla"] = base
    return sorted(by_delay.items())


def table2(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """Table 2: MNIST / pMNIST test accuracy, each arm at its best learning rate."""
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
        title = row.task
        if row.task == "copying" and not math.isnan(row.seq_len):
            title += f" T={row.seq_len:g}"
        by_problem.setdefault(title, []).append((row.arm, value))
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
