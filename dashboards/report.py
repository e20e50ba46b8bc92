"""The study report: claim verdicts, figures and tables as one self-contained HTML page.

:func:`build_report` takes the ``runs`` / ``history`` frames of :mod:`dashboards.export`,
judges the paper's claims with :mod:`dashboards.claims`, and writes into one directory:

* ``index.html``: the report. Figures are PNG data URIs, styles are inline: the page loads no
  file and makes no request, so it opens offline, from an e-mail or an MLflow artifact view.
* ``summary.json``: the numbers a later report compares itself with (:func:`compare`): seeds
  and intervals per configuration, verdicts, effects and intervals per claim and check.

Reading order of the page: the verdict table (one row per claim: our number with its CI
beside the paper's, seeds per arm), what changed since the previous report, the paper's
Tables 1 and 2 beside ours, one section per claim (its checks, per-seed validation curves per
arm, distributions of the final metrics, P(A>B) with its CI, Kaplan-Meier success curves),
the per-configuration table and the expected best validation accuracy against the number of
trials (Dodge et al. 2019).

Figures stay readable at any scale: at most ``max_curves`` seed curves per panel (a fixed-seed
random sample; the bold median is over all seeds and the caption says how many are shown).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import json
import math
import os
import re
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dashboards import claims as claims_mod
from dashboards import figures, stats

REPORT_FILE = "index.html"
SUMMARY_FILE = "summary.json"
SUMMARY_FORMAT = 1
MAX_CURVES = 50
MAX_PANELS = 6
DEFAULT_THRESHOLD = 0.99
_UNKNOWN = "—"


@dataclass
class Report:
    """A written report: where it is, its numbers, and how long each stage took."""

    out_dir: Path
    html: Path
    summary: dict[str, Any]
    verdicts: list[claims_mod.Verdict]
    changes: dict[str, Any] | None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Group:
    """The runs of one arm in one check: task, arm and the filters that select them."""

    label: str
    arm: str
    task: str
    filters: tuple[tuple[str, Any], ...]
    best_lr: bool = False


# --------------------------------------------------------------------------------------------
# Selecting runs (dashboards.claims's own selection: lists mean "any of", numbers isclose)


def _select(runs: pd.DataFrame, group: _Group) -> pd.DataFrame:
    chosen, _ = claims_mod._select(runs, {"task": group.task, "arm": group.arm})
    filters = {k: list(v) if isinstance(v, tuple) else v for k, v in group.filters}
    chosen, _ = claims_mod._select(chosen, filters)
    return claims_mod._best_lr(chosen) if group.best_lr else chosen


def _freeze(filters: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in filters.items()))


_SHORT = {"p_detach": "p", "c_detach": "c", "seq_len": "T", "clip": "clip", "lr": "lr"}


def _describe_filters(filters: Mapping[str, Any]) -> str:
    parts = []
    for key, value in filters.items():
        shown = (
            "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
            if (isinstance(value, list | tuple))
            else (f"{value:g}" if isinstance(value, float) else str(value))
        )
        parts.append(f"{_SHORT.get(key, key)}={shown}")
    return ", ".join(parts)


def _claim_groups(
    claim: claims_mod.Claim,
) -> tuple[list[tuple[claims_mod.Check, _Group, _Group]], dict]:
    """(check, treatment group, baseline group) per run-based check, and the filters all
    share."""
    run_checks = [c for c in claim.checks if c.statistic != "benchmark"]
    if not run_checks:
        return [], {}
    common = dict(run_checks[0].filters)
    for check in run_checks[1:]:
        common = {k: v for k, v in common.items() if check.filters.get(k) == v}
    tasks = {c.task for c in run_checks}
    pairs = []
    for check in run_checks:
        own = {k: v for k, v in check.filters.items() if k not in common}
        made = []
        for arm, extra in (
            (check.treatment, check.treatment_filters),
            (check.baseline, check.baseline_filters),
        ):
            label = " ".join(
                part
                for part in (
                    check.task if len(tasks) > 1 else "",
                    arm,
                    _describe_filters({**extra, **own}),
                )
                if part
            )
            made.append(
                _Group(
                    label=label,
                    arm=arm,
                    task=check.task,
                    filters=_freeze({**check.filters, **extra}),
                    best_lr=check.select_lr == "best",
                )
            )
        pairs.append((check, made[0], made[1]))
    return pairs, common


# --------------------------------------------------------------------------------------------
# History access


class _HistoryIndex:
    """Row positions of each run in the history frame, built once (no per-run filtering)."""

    def __init__(self, history: pd.DataFrame | None):
        self.history = history if history is not None else pd.DataFrame()
        if self.history.empty or "run_id" not in self.history.columns:
            self._codes: dict[str, int] = {}
            self._order = np.empty(0, dtype=np.int64)
            self._starts = np.zeros(1, dtype=np.int64)
            return
        codes, uniques = pd.factorize(self.history["run_id"], sort=False)
        self._codes = {run_id: i for i, run_id in enumerate(uniques)}
        self._order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(uniques))
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._epoch = self.history["epoch"].to_numpy(dtype=np.int64)

    def rows(self, run_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(row positions, index of the run in `run_ids`) for every history row of the runs."""
        parts, owners = [], []
        for i, run_id in enumerate(run_ids):
            code = self._codes.get(run_id)
            if code is None:
                continue
            rows = self._order[self._starts[code] : self._starts[code + 1]]
            parts.append(rows)
            owners.append(np.full(rows.size, i, dtype=np.int64))
        if not parts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return np.concatenate(parts), np.concatenate(owners)

    def matrix(self, run_ids: Sequence[str], column: str) -> np.ndarray:
        """``len(run_ids) x E`` values of `column` by epoch (NaN where a run has none)."""
        rows, owners = self.rows(run_ids)
        if rows.size == 0 or column not in self.history.columns:
            return np.full((len(run_ids), 0), np.nan)
        epochs = self._epoch[rows]
        out = np.full((len(run_ids), int(epochs.max())), np.nan)
        out[owners, epochs - 1] = self.history[column].to_numpy(dtype=float)[rows]
        return out

    def reach(self, run_ids: Sequence[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Per run: first epoch with val_acc >= threshold (NaN: never) and last epoch (NaN:
        no history)."""
        n = len(run_ids)
        first = np.full(n, np.nan)
        last = np.full(n, np.nan)
        rows, owners = self.rows(run_ids)
        if rows.size == 0 or "val_acc" not in self.history.columns:
            return first, last
        epochs = self._epoch[rows].astype(float)
        np.fmax.at(last, owners, epochs)
        with np.errstate(invalid="ignore"):
            hit = self.history["val_acc"].to_numpy(dtype=float)[rows] >= threshold
        np.fmin.at(first, owners[hit], epochs[hit])
        return first, last


# --------------------------------------------------------------------------------------------
# Numbers and their formatting


def _est(d: Mapping[str, Any] | None) -> stats.Estimate | None:
    if not d or "value" not in d:
        return None
    return stats.Estimate(float(d["value"]), float(d["low"]), float(d["high"]))


def _scale(unit: str) -> float:
    return 100.0 if unit == "%" else 1.0


def _num(x: float, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return _UNKNOWN
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if unit == "%":
        return f"{x:.2f}"
    if unit == "epochs":
        return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"
    return f"{x:.3g}"


def _fmt(est: stats.Estimate | None, unit: str = "", scale: float = 1.0) -> str:
    if est is None or math.isnan(est.value):
        return _UNKNOWN
    value = _num(est.value * scale, unit)
    if math.isnan(est.low) or math.isnan(est.high):
        return value
    return f"{value} [{_num(est.low * scale, unit)}, {_num(est.high * scale, unit)}]"


def _arm_estimate(cv: claims_mod.CheckVerdict, arm: str) -> tuple[stats.Estimate | None, int]:
    """This arm's headline number in the check's unit (with CI) and its number of runs."""
    numbers = cv.arms.get(arm) or {}
    n = int(numbers.get("n", 0) or 0)
    scale = _scale(cv.unit)
    est = None
    if cv.statistic == "mean":
        est = _est(numbers.get("mean"))
    elif cv.statistic == "seed_std":
        est = _est(numbers.get("std"))
    elif cv.statistic == "rate":
        est = _est(numbers.get("rate"))
    elif cv.statistic == "time_to_threshold":
        est, scale = _est(numbers.get("median_epochs")), 1.0
    elif cv.statistic == "lr_worst_case":
        est = _est(numbers.get("worst"))
    if est is None:
        return None, n
    return stats.Estimate(est.value * scale, est.low * scale, est.high * scale), n


def _effect_text(cv: claims_mod.CheckVerdict) -> str:
    effect = _est(cv.effect.get("effect") or cv.effect.get("figure"))
    if effect is None:
        return _UNKNOWN
    if cv.statistic == "time_to_threshold":
        return _fmt(effect, "epochs") + " epochs saved"
    if cv.unit == "%":
        return _fmt(effect, "%", 100.0) + " pp"
    return _fmt(effect, cv.unit)


def _paper_text(paper: Mapping[str, Any], arm: str) -> str:
    value = paper.get(arm)
    return _UNKNOWN if value is None else f"{value:g}"


def _headline(verdict: claims_mod.Verdict) -> int:
    """Index of the check a one-line summary shows: the first with data, else the first."""
    for i, c in enumerate(verdict.checks):
        if c.verdict not in ("no runs yet", "no data"):
            return i
    return 0


# --------------------------------------------------------------------------------------------
# Per-configuration statistics


_CONFIG_KEYS = ("task", "config_id")
_PAIRING = ("seq_len", "lr", "clip", "clip_norm")


def configuration_table(
    runs: pd.DataFrame, rng: np.random.Generator, *, n_resamples: int = stats.N_RESAMPLES
) -> list[dict[str, Any]]:
    """One row per (task, config_id): seeds, best val acc (mean, IQM) and test acc with CIs,
    P(A>B) on best val acc against the paired vanilla configuration (same task, seq_len,
    lr, clip, clip_norm; paired on seed when possible), success rate (best val acc >= the
    run's threshold) and divergence rate with Wilson intervals."""
    if runs.empty or not set(_CONFIG_KEYS) <= set(runs.columns):
        return []
    rows = []
    keyed = runs.assign(config_id=runs["config_id"].fillna("?"))
    groups = dict(tuple(keyed.groupby(list(_CONFIG_KEYS), sort=True, dropna=False)))
    pairing = [k for k in _PAIRING if k in runs.columns]

    def pair_key(frame: pd.DataFrame) -> tuple:
        first = frame.iloc[0]
        return tuple(_hashable(first[k]) for k in ("task", *pairing))

    vanilla = {}
    for frame in groups.values():
        if "arm" in frame.columns and (frame["arm"] == "vanilla").all():
            vanilla.setdefault(pair_key(frame), frame)
    for (task, config_id), frame in groups.items():
        first = frame.iloc[0]
        best = frame["best_val_acc"].to_numpy(float) if "best_val_acc" in frame else np.array([])
        test = (
            frame["test_acc_at_best"].to_numpy(float)
            if "test_acc_at_best" in frame
            else np.full(len(frame), np.nan)
        )
        s_best = stats.summarize(best, rng, n_resamples=n_resamples)
        s_test = stats.summarize(test, rng, n_resamples=n_resamples)
        threshold = (
            frame["threshold"].to_numpy(float)
            if "threshold" in frame
            else np.full(len(frame), np.nan)
        )
        threshold = np.where(np.isnan(threshold), DEFAULT_THRESHOLD, threshold)
        with np.errstate(invalid="ignore"):
            success = stats.rate(best >= threshold)
        diverged = (
            stats.rate(frame["diverged"].fillna(False).to_numpy(dtype=bool))
            if "diverged" in frame
            else stats.Estimate(math.nan, math.nan, math.nan)
        )
        p_improve, paired = None, False
        base = vanilla.get(pair_key(frame))
        if base is not None and first.get("arm") != "vanilla":
            p_improve, paired = _p_vs_baseline(frame, base, rng, n_resamples)
        rows.append(
            {
                "task": str(task),
                "config_id": str(config_id),
                "arm": str(first.get("arm", "")),
                "p_detach": _float(first.get("p_detach")),
                "lr": _float(first.get("lr")),
                "clip": None if pd.isna(first.get("clip")) else bool(first.get("clip")),
                "seq_len": _float(first.get("seq_len")),
                "n": int(len(frame)),
                "best_val_acc": s_best,
                "test_acc": s_test,
                "p_improve": p_improve,
                "paired": paired,
                "success": success,
                "diverged": diverged,
            }
        )
    return rows


def _p_vs_baseline(frame, base, rng, n_resamples) -> tuple[stats.Estimate | None, bool]:
    if "best_val_acc" not in frame or "best_val_acc" not in base:
        return None, False
    if (
        "seed" in frame.columns
        and not frame["seed"].duplicated().any()
        and not (base["seed"].duplicated().any())
    ):
        merged = frame[["seed", "best_val_acc"]].merge(
            base[["seed", "best_val_acc"]], on="seed", suffixes=("_a", "_b")
        )
        merged = merged.dropna()
        if len(merged) >= 2:
            cmp = stats.paired_comparison(
                merged["best_val_acc_a"].to_numpy(float),
                merged["best_val_acc_b"].to_numpy(float),
                rng,
                n_resamples=n_resamples,
            )
            return cmp.p_improve, True
    a = frame["best_val_acc"].dropna().to_numpy(float)
    b = base["best_val_acc"].dropna().to_numpy(float)
    if a.size == 0 or b.size == 0:
        return None, False
    cmp = stats.unpaired_comparison(a, b, rng, n_resamples=n_resamples)
    return cmp.p_improve, False


def _float(value: Any) -> float:
    try:
        return math.nan if pd.isna(value) else float(value)
    except (TypeError, ValueError):
        return math.nan


def _hashable(value: Any) -> Any:
    if pd.isna(value):
        return None
    if isinstance(value, float | np.floating):
        return round(float(value), 12)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------------------------
# Summary (summary.json) and the comparison with a previous report


def _est_dict(est: stats.Estimate | None) -> dict[str, float] | None:
    if est is None:
        return None
    return {"value": est.value, "low": est.low, "high": est.high}


def make_summary(
    experiment: str,
    runs: pd.DataFrame,
    verdicts: Sequence[claims_mod.Verdict],
    config_rows: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The numbers a later report compares with (JSON-ready; NaN become null on writing)."""
    claims_out = {}
    for v in verdicts:
        checks = {}
        for cv in v.checks:
            arms = {}
            for arm in cv.arms:
                est, n = _arm_estimate(cv, arm)
                arms[arm] = {"n": n, "estimate": _est_dict(est)}
            checks[cv.name] = {
                "verdict": cv.verdict,
                "unit": cv.unit,
                "effect": cv.effect.get("effect") or cv.effect.get("figure"),
                "p_improve": cv.effect.get("p_improve"),
                "arms": arms,
                "seeds_needed": cv.seeds_needed,
            }
        claims_out[v.claim_id] = {
            "title": v.title,
            "verdict": v.verdict,
            "seeds_needed": v.seeds_needed,
            "checks": checks,
        }
    configs = {}
    for row in config_rows:
        configs[f"{row['task']}/{row['config_id']}"] = {
            "task": row["task"],
            "config_id": row["config_id"],
            "arm": row["arm"],
            "n": row["n"],
            "best_val_acc": _est_dict(row["best_val_acc"].mean),
            "test_acc": _est_dict(row["test_acc"].mean),
            "p_improve": _est_dict(row["p_improve"]),
        }
    return {
        "format": SUMMARY_FORMAT,
        "experiment": experiment,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_runs": int(len(runs)),
        "n_configs": len(configs),
        "configs": configs,
        "claims": claims_out,
    }


def _width(d: Mapping[str, Any] | None) -> float:
    if not d:
        return math.nan
    low, high = d.get("low"), d.get("high")
    if low is None or high is None:
        return math.nan
    return float(high) - float(low)


def compare(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """What changed between two summaries: new seeds per configuration, intervals that
    tightened (configurations' best val acc, checks' effects), verdicts that changed."""
    new_seeds = []
    prev_configs = previous.get("configs", {})
    for key, cfg in current.get("configs", {}).items():
        before = prev_configs.get(key, {}).get("n", 0)
        if cfg["n"] != before:
            new_seeds.append({"config": key, "arm": cfg["arm"], "before": before, "now": cfg["n"]})
    tightened = []
    for key, cfg in current.get("configs", {}).items():
        old = prev_configs.get(key)
        if old is None:
            continue
        w0, w1 = _width(old.get("best_val_acc")), _width(cfg.get("best_val_acc"))
        if w1 < w0:
            tightened.append(
                {"what": f"{key}: best val acc (mean)", "before": w0, "now": w1, "unit": "%"}
            )
    changed = []
    prev_claims = previous.get("claims", {})
    for cid, claim in current.get("claims", {}).items():
        old = prev_claims.get(cid)
        before = old["verdict"] if old else "absent"
        if before != claim["verdict"]:
            changed.append({"what": cid, "before": before, "now": claim["verdict"]})
        for name, check in claim.get("checks", {}).items():
            old_check = (old or {}).get("checks", {}).get(name)
            if old_check is None:
                continue
            if old_check["verdict"] != check["verdict"]:
                changed.append(
                    {
                        "what": f"{cid} / {name}",
                        "before": old_check["verdict"],
                        "now": check["verdict"],
                    }
                )
            w0, w1 = _width(old_check.get("effect")), _width(check.get("effect"))
            if w1 < w0:
                tightened.append(
                    {
                        "what": f"{cid} / {name}: effect",
                        "before": w0,
                        "now": w1,
                        "unit": check.get("unit", ""),
                    }
                )
    return {
        "previous_created": previous.get("created"),
        "runs_before": previous.get("n_runs", 0),
        "runs_now": current.get("n_runs", 0),
        "new_seeds": new_seeds,
        "tightened": tightened,
        "verdicts_changed": changed,
    }


def read_summary(report_dir: str | os.PathLike) -> dict[str, Any]:
    """The summary.json of a report directory.

    Raises:
        ValueError: missing or unreadable.
    """
    path = Path(report_dir) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{report_dir} is not a report directory (no {SUMMARY_FILE})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != SUMMARY_FORMAT:
        raise ValueError(f"{path} is not a report summary of format {SUMMARY_FORMAT}")
    return data


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------------------------
# Figures of one claim


@dataclass
class _Figure:
    title: str
    uri: str
    caption: str


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


def _unique_groups(pairs: Sequence[tuple[claims_mod.Check, _Group, _Group]]) -> list[_Group]:
    seen: dict[tuple, _Group] = {}
    # Baselines first: the reference panel reads first.
    for group in [b for _, _, b in pairs] + [t for _, t, _ in pairs]:
        seen.setdefault((group.arm, group.task, group.filters, group.best_lr), group)
    return list(seen.values())


def _claim_figures(
    claim: claims_mod.Claim,
    verdict: claims_mod.Verdict,
    runs: pd.DataFrame,
    index: _HistoryIndex,
    *,
    max_curves: int,
    seed: int,
) -> list[_Figure]:
    pairs, common = _claim_groups(claim)
    if not pairs:
        return []
    out: list[_Figure] = []
    rng = np.random.default_rng(seed)
    where = _describe_filters(common)
    where = f" ({where})" if where else ""
    groups = _unique_groups(pairs)
    cache: dict[_Group, pd.DataFrame] = {}

    def select(group: _Group) -> pd.DataFrame:
        if group not in cache:
            cache[group] = _select(runs, group)
        return cache[group]

    with_runs = [g for g in groups if not select(g).empty]
    if not with_runs:
        return []

    # 1. Validation accuracy per seed, one panel per arm.
    panels, sampled_any, skipped = [], False, max(0, len(with_runs) - MAX_PANELS)
    for group in with_runs[:MAX_PANELS]:
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
    if panels:
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
        out.append(_Figure("Validation accuracy per seed", _png(figures.curves(panels)), caption))

    # 2. Final metrics: strip + box per arm.
    metric_panels, percent, log, seen = [], [], [], set()
    for check, treat, base in pairs:
        if check.metric in claims_mod.BOOLEAN_METRICS or check.statistic == "time_to_threshold":
            continue
        if check.metric not in runs.columns:
            continue
        key = (check.metric, treat, base)
        if key in seen or len(metric_panels) >= MAX_PANELS:
            continue
        seen.add(key)
        entries = []
        for group in (base, treat):
            frame = select(group)
            if check.statistic == "lr_worst_case" and "lr" in frame.columns:
                for lr, sub in frame.groupby("lr"):
                    entries.append(
                        (f"{group.arm} lr={lr:g}", group.arm, sub[check.metric].to_numpy(float))
                    )
            else:
                entries.append((group.label, group.arm, frame[check.metric].to_numpy(float)))
        if not any(np.isfinite(e[2]).any() for e in entries):
            continue
        metric_panels.append((f"{check.metric}\n{check.name}", entries))
        percent.append(check.unit == "%" and check.metric != "max_grad_norm")
        log.append(check.metric == "max_grad_norm")
    if metric_panels:
        fig = figures.distributions(metric_panels, percent=percent, log=log, rng=rng)
        out.append(
            _Figure(
                "Final metrics per seed",
                _png(fig),
                f"Final metrics{where}: one dot per run, boxes span the quartiles (whiskers "
                "1.5 IQR). Accuracies in percent; gradient norms on a log scale.",
            )
        )

    # 3. P(A>B) with its CI, one row per check.
    rows = []
    for cv in verdict.checks:
        p = _est(cv.effect.get("p_improve"))
        if p is not None:
            rows.append((_short(cv.name), p))
    if rows:
        out.append(
            _Figure(
                "Probability of improvement",
                _png(figures.intervals(rows)),
                "P(treatment better than baseline) per check with its 95% bootstrap CI "
                "(paired over seeds where possible; for epochs-to-threshold: P(faster)). Solid "
                "line: 0.5 (no difference); dotted: 0.75 (a meaningful improvement, Bouthillier "
                "et al. 2021). A CI entirely right of 0.5 is a significant improvement.",
            )
        )

    # 4. Kaplan-Meier success curves at each time check's threshold.
    km_panels: dict[tuple, tuple[str, dict]] = {}
    for check, treat, base in pairs:
        if check.statistic != "time_to_threshold" or check.threshold is None:
            continue
        own = {k: v for k, v in check.filters.items() if k not in common}
        title = f"{check.task}: val acc >= {check.threshold * 100:g}%"
        if own:
            title += f" ({_describe_filters(own)})"
        key = (check.task, check.threshold, _freeze(check.filters))
        entry = km_panels.setdefault(key, (title, {}))
        for group in (base, treat):
            entry[1].setdefault(group, None)
    fits_panels = []
    for (_, threshold, _), (title, group_map) in km_panels.items():
        fits = []
        for group in group_map:
            frame = select(group)
            if frame.empty:
                continue
            first, last = index.reach(frame["run_id"].tolist(), threshold)
            ok = ~np.isnan(last)
            if not ok.any():
                continue
            t, e = stats.censored_epochs(first[ok], last[ok])
            horizon = int(np.nanmax(last))
            if "epochs" in frame.columns and frame["epochs"].notna().any():
                horizon = max(horizon, int(np.nanmax(frame["epochs"].to_numpy(float))))
            km = stats.kaplan_meier(t, e, max(horizon, 1))
            fits.append((f"{group.label} (n={int(ok.sum())})", group.arm, km))
        if fits:
            fits_panels.append((title, fits))
    if fits_panels:
        out.append(
            _Figure(
                "Success over epochs",
                _png(figures.success_curves(fits_panels[:MAX_PANELS])),
                f"Fraction of runs that reached the threshold by each epoch{where} "
                "(Kaplan-Meier; runs that stopped or diverged before reaching it are censored "
                "at their last epoch, not dropped), with pointwise 95% log-log bands.",
            )
        )
    return out


def _short(text: str, width: int = 64) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _png(fig) -> str:
    return figures.png_data_uri(fig)


# --------------------------------------------------------------------------------------------
# Paper tables (from the verdicts, so the numbers are the claims' own)


def _table1(claim_list, verdicts) -> str | None:
    """Table 1: transfer copying accuracy per delay T, vanilla / h-detach 0.5 / 0.25."""
    pairs = _checks_of(claim_list, verdicts, "C3")
    if not pairs:
        return None
    by_delay: dict[int, dict[str, Any]] = {}
    for check, cv in pairs:
        m = re.fullmatch(r"transfer_acc_T(\d+)", check.metric)
        p = check.treatment_filters.get("p_detach")
        if not m or p is None:
            continue
        row = by_delay.setdefault(int(m.group(1)), {})
        ours_t, n_t = _arm_estimate(cv, check.treatment)
        ours_b, n_b = _arm_estimate(cv, check.baseline)
        row[f"h{p:g}"] = (ours_t, check.paper.get(check.treatment), n_t, cv.verdict)
        if "vanilla" not in row or (row["vanilla"][0] is None and ours_b is not None):
            row["vanilla"] = (ours_b, check.paper.get(check.baseline), n_b, None)
    if not by_delay:
        return None
    columns = [("vanilla", "vanilla"), ("h0.5", "h-detach 0.5"), ("h0.25", "h-detach 0.25")]
    head = "".join(f"<th>{html.escape(label)}: ours</th><th>paper</th>" for _, label in columns)
    body = []
    for delay in sorted(by_delay):
        cells = [f"<td>{delay}</td>"]
        for key, _ in columns:
            ours, paper, n, verdict = by_delay[delay].get(key, (None, None, 0, None))
            badge = f" {_badge(verdict, small=True)}" if verdict else ""
            cells.append(f"<td class='num'>{_fmt(ours, '%')}<br><small>n={n}</small>{badge}</td>")
            cells.append(
                f"<td class='num paper'>{_UNKNOWN if paper is None else f'{paper:g}'}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<h3>Table 1: transfer copying (trained at T=100), accuracy %</h3>"
        f"<table class='grid'><thead><tr><th>T</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        "<p class='caption'>Ours: mean over seeds of the best checkpoint's accuracy at delay T "
        "with its 95% bootstrap CI; the badge is the verdict of that h-detach vs vanilla "
        "check.</p>"
    )


def _table2(claim_list, verdicts) -> str | None:
    """Table 2: MNIST / pMNIST test accuracy, each arm at its best learning rate."""
    rows = []
    for cid in ("C4", "C5"):
        for check, cv in _checks_of(claim_list, verdicts, cid):
            if check.metric != "test_acc_at_best":
                continue
            ours_b, n_b = _arm_estimate(cv, check.baseline)
            ours_t, n_t = _arm_estimate(cv, check.treatment)
            p = check.treatment_filters.get("p_detach")
            rows.append(
                "<tr>"
                f"<td>{html.escape(check.task or '')}</td>"
                f"<td class='num'>{_fmt(ours_b, '%')}<br><small>n={n_b}</small></td>"
                f"<td class='num paper'>{_paper_text(check.paper, check.baseline)}</td>"
                f"<td class='num'>{_fmt(ours_t, '%')}<br><small>n={n_t}"
                f"{'' if p is None else f', p={p:g}'}</small></td>"
                f"<td class='num paper'>{_paper_text(check.paper, check.treatment)}</td>"
                f"<td>{_badge(cv.verdict, small=True)}</td>"
                "</tr>"
            )
    if not rows:
        return None
    return (
        "<h3>Table 2: sequential and permuted MNIST, test accuracy %</h3>"
        "<table class='grid'><thead><tr><th>task</th><th>vanilla: ours</th><th>paper</th>"
        "<th>h-detach: ours</th><th>paper</th><th>verdict</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        "<p class='caption'>Test accuracy at the best validation epoch, mean over seeds with "
        "its 95% bootstrap CI; each arm at its own best learning rate (by mean best validation "
        "accuracy), as the paper selects models. Paper notes: MNIST text 98.6 vs 98.8, pMNIST "
        "text 90.9 vs 92.92.</p>"
    )


def _checks_of(claim_list, verdicts, cid):
    for claim, verdict in zip(claim_list, verdicts, strict=True):
        if claim.id == cid:
            return list(zip(claim.checks, verdict.checks, strict=True))
    return []


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1180px;padding:0 16px;color:#1d1d1f;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:2em}h3{margin-top:1.4em}
table.grid{border-collapse:collapse;margin:.6em 0;font-size:.86em}
table.grid th,table.grid td{border:1px solid #d0d0d0;padding:4px 7px;vertical-align:top}
table.grid th{background:#f3f3f3;text-align:left}
td.num{text-align:right;white-space:nowrap}td.paper{color:#555;background:#fafafa}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;
font-weight:600;white-space:nowrap}.badge.small{font-size:.75em;padding:0 6px}
.supported{background:#d8f0dc;color:#185c2a}.contradicted{background:#f8d7d5;color:#8a1c13}
.inconclusive{background:#fdf0c8;color:#6b4e00}.norunsyet,.nodata{background:#e8e8e8;
color:#555}
.caption{color:#555;font-size:.85em;max-width:1000px}figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
.reason{color:#555;font-size:.85em}.meta{color:#555;font-size:.9em}
details summary{cursor:pointer;color:#333}.wide{overflow-x:auto}
#configs td,#configs th{font-size:.92em}#configs td:nth-child(3){white-space:nowrap}
"""


def _badge(verdict: str | None, *, small: bool = False) -> str:
    if not verdict:
        return ""
    cls = verdict.replace(" ", "")
    return f"<span class='badge {cls}{' small' if small else ''}'>{html.escape(verdict)}</span>"


def _verdict_cell(v: claims_mod.Verdict) -> str:
    text = _badge(v.verdict)
    if v.verdict == "inconclusive" and v.seeds_needed is not None:
        n = v.seeds_needed
        needed = "infinitely many" if math.isinf(n) else f"≈{int(n)}"
        text += f"<br><small>{needed} seeds per arm needed</small>"
    return text


def _verdict_table(claim_list, verdicts) -> str:
    rows = []
    for claim, v in zip(claim_list, verdicts, strict=True):
        i = _headline(v)
        cv, check = v.checks[i], claim.checks[i]
        if cv.statistic == "benchmark":
            fig = _est(cv.effect.get("figure"))
            ours = f"{cv.metric} = {_fmt(fig, cv.unit)}" if fig else _UNKNOWN
            paper = f"claimed {cv.comparison} {check.value:g}"
            seeds = _UNKNOWN
        else:
            t, n_t = _arm_estimate(cv, check.treatment)
            b, n_b = _arm_estimate(cv, check.baseline)
            unit = "epochs (median)" if cv.statistic == "time_to_threshold" else cv.unit
            what = {"seed_std": " (std over seeds)", "rate": " (rate)"}.get(cv.statistic, "")
            ours = (
                f"{html.escape(check.treatment)}: {_fmt(t, cv.unit)}<br>"
                f"{html.escape(check.baseline)}: {_fmt(b, cv.unit)}"
                f"<br><small>{html.escape(unit)}{what}</small>"
            )
            paper = (
                f"{html.escape(check.treatment)}: {_paper_text(cv.paper, check.treatment)}<br>"
                f"{html.escape(check.baseline)}: {_paper_text(cv.paper, check.baseline)}"
            )
            seeds = f"{n_t} / {n_b}"
        note = cv.paper.get("note")
        if note:
            paper += f"<br><small>{html.escape(str(note))}</small>"
        rows.append(
            f"<tr id='row-{claim.id}'><td><a href='#{claim.id}'>{claim.id}</a></td>"
            f"<td>{html.escape(claim.title)}<br><small>{html.escape(claim.source)}; headline "
            f"check: {html.escape(cv.name)}</small></td>"
            f"<td>{_verdict_cell(v)}</td><td class='num'>{ours}</td>"
            f"<td class='num paper'>{paper}</td><td class='num'>{seeds}</td></tr>"
        )
    return (
        "<table class='grid' id='verdicts'><thead><tr><th>claim</th><th>what the paper "
        "says</th><th>verdict</th><th>ours [95% CI]</th><th>paper</th><th>seeds per arm "
        "(treatment / baseline)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _check_table(claim: claims_mod.Claim, verdict: claims_mod.Verdict) -> str:
    rows = []
    for check, cv in zip(claim.checks, verdict.checks, strict=True):
        if cv.statistic == "benchmark":
            fig = _est(cv.effect.get("figure"))
            cells = (
                f"<td colspan='3' class='num'>{cv.metric} = {_fmt(fig, cv.unit)}</td>"
                f"<td class='num paper'>claimed {cv.comparison} {check.value:g}</td>"
                f"<td>{_UNKNOWN}</td><td>{_UNKNOWN}</td>"
            )
        else:
            t, n_t = _arm_estimate(cv, check.treatment)
            b, n_b = _arm_estimate(cv, check.baseline)
            p = _est(cv.effect.get("p_improve"))
            cells = (
                f"<td class='num'>{_fmt(t, cv.unit)}</td><td class='num'>{_fmt(b, cv.unit)}</td>"
                f"<td class='num'>{_effect_text(cv)}</td>"
                f"<td class='num paper'>{_paper_text(cv.paper, check.treatment)} / "
                f"{_paper_text(cv.paper, check.baseline)}</td>"
                f"<td class='num'>{_fmt(p)}</td><td class='num'>{n_t} / {n_b}</td>"
            )
        rows.append(
            f"<tr><td>{html.escape(cv.name)}<br><small>{html.escape(cv.statistic)}, "
            f"{html.escape(cv.comparison)}</small></td><td>{_badge(cv.verdict, small=True)}</td>"
            f"{cells}<td class='reason'>{html.escape(cv.reason)}</td></tr>"
        )
    return (
        "<table class='grid'><thead><tr><th>check</th><th>verdict</th><th>treatment</th>"
        "<th>baseline</th><th>effect [95% CI]</th><th>paper (T / B)</th><th>P(A&gt;B)</th>"
        "<th>runs (T / B)</th><th>reason</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _config_table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>No runs yet.</p>"
    body = []
    for r in rows:
        s_best, s_test = r["best_val_acc"], r["test_acc"]
        p = r["p_improve"]
        p_text = _fmt(p) + (" (paired)" if r["paired"] else "") if p is not None else _UNKNOWN
        clip = _UNKNOWN if r["clip"] is None else ("yes" if r["clip"] else "no")
        body.append(
            "<tr>"
            f"<td>{html.escape(r['task'])}</td><td>{html.escape(r['config_id'])}</td>"
            f"<td>{html.escape(r['arm'])}</td><td class='num'>{_num(r['p_detach'])}</td>"
            f"<td class='num'>{_num(r['lr'])}</td><td>{clip}</td>"
            f"<td class='num'>{_num(r['seq_len'])}</td><td class='num'>{r['n']}</td>"
            f"<td class='num'>{_fmt(s_best.mean, '%', 100.0)}</td>"
            f"<td class='num'>{_fmt(s_best.iqm, '%', 100.0)}</td>"
            f"<td class='num'>{_fmt(s_test.mean, '%', 100.0)}</td>"
            f"<td class='num'>{p_text}</td>"
            f"<td class='num'>{_fmt(r['success'], '%', 100.0)}</td>"
            f"<td class='num'>{_fmt(r['diverged'], '%', 100.0)}</td>"
            "</tr>"
        )
    return (
        "<div class='wide'><table class='grid' id='configs'><thead><tr><th>task</th>"
        "<th>config</th><th>arm</th>"
        "<th>p</th><th>lr</th><th>clip</th><th>T</th><th>seeds</th><th>best val acc % mean"
        "</th><th>IQM</th><th>test acc % mean</th><th>P(A&gt;B) vs vanilla</th><th>success %"
        "</th><th>diverged %</th></tr></thead><tbody>" + "".join(body) + "</tbody></table></div>"
        "<p class='caption'>Means and IQMs (25% trimmed means) with 95% percentile bootstrap "
        "CIs over seeds. P(A&gt;B): probability that this configuration's best validation "
        "accuracy beats the vanilla configuration with the same task, T, lr and clipping "
        "(paired on seed when both have the seed). Success: best val acc at or above the run's "
        "threshold; success and divergence rates with Wilson 95% intervals.</p>"
    )


def _expected_max_figure(config_rows) -> _Figure | None:
    # One panel per problem (task and copying delay): a search varies p, lr and clipping.
    by_problem: dict[str, list] = {}
    for row in config_rows:
        value = row["best_val_acc"].mean.value
        if math.isnan(value):
            continue
        title = row["task"]
        if row["task"] == "copying" and not math.isnan(row["seq_len"]):
            title += f" T={row['seq_len']:g}"
        by_problem.setdefault(title, []).append((row["arm"], value))
    panels = []
    for title, values in sorted(by_problem.items()):
        if len(values) < 2:
            continue
        pooled = stats.expected_max(np.array([v for _, v in values]))
        series = [("all configurations", "all", pooled)]
        for arm in sorted({a for a, _ in values}):
            arm_values = np.array([v for a, v in values if a == arm])
            if arm_values.size >= 2:
                series.append((arm, arm, stats.expected_max(arm_values)))
        panels.append((title, series))
    if not panels:
        return None
    shown = panels[:MAX_PANELS]
    more = (
        f" {len(panels) - len(shown)} further problems are not drawn."
        if len(panels) > len(shown)
        else ""
    )
    return _Figure(
        "Expected best validation accuracy vs number of trials",
        _png(figures.expected_max(shown)),
        "Expected best validation accuracy (mean over seeds of a configuration) among n "
        "configurations drawn from those the search tried, mean ± std (Dodge et al. 2019, "
        "unbiased order-statistic estimator), per task and copying delay. A curve that keeps "
        "rising needs more trials; arms compared at equal n compare equal tuning budgets." + more,
    )


def _changes_html(changes: Mapping[str, Any] | None, since_label: str | None) -> str:
    if changes is None:
        if since_label:
            return f"<p>{html.escape(since_label)}</p>"
        return ""
    parts = [
        f"<p class='meta'>Compared with {html.escape(since_label or 'the previous report')} "
        f"(created {html.escape(str(changes.get('previous_created')))}): "
        f"{changes['runs_before']} → {changes['runs_now']} runs.</p>"
    ]
    vc = changes["verdicts_changed"]
    if vc:
        items = "".join(
            f"<tr><td>{html.escape(c['what'])}</td><td>{_badge(c['before'], small=True)}</td>"
            f"<td>{_badge(c['now'], small=True)}</td></tr>"
            for c in vc
        )
        parts.append(
            "<h3>Verdicts that changed</h3><table class='grid' id='verdicts-changed'><thead>"
            f"<tr><th>claim / check</th><th>before</th><th>now</th></tr></thead><tbody>{items}"
            "</tbody></table>"
        )
    else:
        parts.append("<p>No verdict changed.</p>")
    ns = changes["new_seeds"]
    if ns:
        items = "".join(
            f"<tr><td>{html.escape(c['config'])}</td><td>{html.escape(c['arm'])}</td>"
            f"<td class='num'>{c['before']}</td><td class='num'>{c['now']}</td>"
            f"<td class='num'>{c['now'] - c['before']:+d}</td></tr>"
            for c in ns
        )
        parts.append(
            "<h3>New seeds per configuration</h3><table class='grid' id='new-seeds'><thead><tr>"
            "<th>configuration</th><th>arm</th><th>before</th><th>now</th><th>new</th></tr>"
            f"</thead><tbody>{items}</tbody></table>"
        )
    else:
        parts.append("<p>No new seeds.</p>")
    tg = changes["tightened"]
    if tg:
        items = "".join(_tightened_row(c) for c in tg[:200])
        more = f"<p class='caption'>{len(tg) - 200} more not shown.</p>" if len(tg) > 200 else ""
        parts.append(
            "<h3>Intervals that tightened</h3><table class='grid' id='tightened'><thead><tr>"
            "<th>interval</th><th>width before</th><th>width now</th><th>now / before</th></tr>"
            f"</thead><tbody>{items}</tbody></table>{more}"
        )
    else:
        parts.append("<p>No interval tightened.</p>")
    return "".join(parts)


def _tightened_row(change: Mapping[str, Any]) -> str:
    unit = change.get("unit", "")
    before, now = change["before"] * _scale(unit), change["now"] * _scale(unit)
    ratio = f"{now / before * 100:.0f}%" if before else _UNKNOWN
    return (
        f"<tr><td>{html.escape(change['what'])}</td><td class='num'>{_num(before, unit)}</td>"
        f"<td class='num'>{_num(now, unit)}</td><td class='num'>{ratio}</td></tr>"
    )


def _figure_html(fig: _Figure) -> str:
    return (
        f"<figure><img alt='{html.escape(fig.title, quote=True)}' src='{fig.uri}'>"
        f"<figcaption class='caption'><b>{html.escape(fig.title)}.</b> "
        f"{html.escape(fig.caption)}</figcaption></figure>"
    )


# --------------------------------------------------------------------------------------------
# The whole report


def build_report(
    runs: pd.DataFrame,
    history: pd.DataFrame | None,
    out_dir: str | os.PathLike,
    *,
    experiment: str,
    claim_list: list[claims_mod.Claim] | None = None,
    benchmarks: Mapping[str, Any] | None = None,
    previous: Mapping[str, Any] | None = None,
    since_label: str | None = None,
    notes: Sequence[str] = (),
    seed: int = 0,
    n_resamples: int = stats.N_RESAMPLES,
    max_curves: int = MAX_CURVES,
) -> Report:
    """Judge the claims on `runs` / `history` and write ``index.html`` + ``summary.json``.

    Args:
        runs, history: as :func:`dashboards.export.load` returns them (one experiment).
        out_dir: the report directory (created; files are replaced atomically).
        claim_list: default: the packaged claims.yaml.
        benchmarks: figures for benchmark claims (C9).
        previous: the summary of an earlier report, to say what changed.
        since_label: how to name that earlier report (or why there is none).
        notes: extra lines for the header (e.g. the export's summary).
        seed: drives every bootstrap and subsample: the same data give the same report.
    """
    if max_curves < 1:
        raise ValueError(f"max_curves must be >= 1, got {max_curves}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    claim_list = claim_list if claim_list is not None else claims_mod.load_claims()
    rng = np.random.default_rng(seed)
    verdicts = claims_mod.evaluate_claims(
        claim_list, runs, history, rng, benchmarks, n_resamples=n_resamples
    )
    timings["claims"] = time.perf_counter() - clock

    clock = time.perf_counter()
    config_rows = configuration_table(runs, rng, n_resamples=n_resamples)
    summary = make_summary(experiment, runs, verdicts, config_rows)
    changes = compare(previous, summary) if previous is not None else None
    timings["configurations"] = time.perf_counter() - clock

    clock = time.perf_counter()
    index = _HistoryIndex(history)
    claim_figures = {
        claim.id: _claim_figures(claim, v, runs, index, max_curves=max_curves, seed=seed)
        for claim, v in zip(claim_list, verdicts, strict=True)
    }
    dodge = _expected_max_figure(config_rows)
    timings["figures"] = time.perf_counter() - clock

    clock = time.perf_counter()
    page = _page(
        experiment,
        runs,
        claim_list,
        verdicts,
        claim_figures,
        config_rows,
        dodge,
        changes,
        since_label,
        notes,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / SUMMARY_FILE, json.dumps(_json_safe(summary), indent=1, sort_keys=True))
    _write_text(out / REPORT_FILE, page)
    timings["html"] = time.perf_counter() - clock
    return Report(out, out / REPORT_FILE, summary, verdicts, changes, timings)


def _page(
    experiment,
    runs,
    claim_list,
    verdicts,
    claim_figures,
    config_rows,
    dodge,
    changes,
    since_label,
    notes,
) -> str:
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tasks = sorted(runs["task"].dropna().unique().tolist()) if "task" in runs else []
    n_configs = len(config_rows)
    counts = Counter(v.verdict for v in verdicts)
    tally = ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
    head = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        # An empty icon: the browser asks for no favicon.ico.
        "<link rel='icon' href='data:,'>"
        f"<title>h-detach study report: {html.escape(experiment)}</title>"
        f"<style>{_CSS}</style></head><body>"
    )
    parts = [
        head,
        f"<h1>Does h-detach hold up? Study <code>{html.escape(experiment)}</code></h1>",
        f"<p class='meta'>Generated {created}. {len(runs)} runs in {n_configs} configurations"
        f"{' of ' + ', '.join(html.escape(t) for t in tasks) if tasks else ''}. "
        f"Claims: {html.escape(tally)}.</p>",
    ]
    for note in notes:
        parts.append(f"<p class='meta'>{html.escape(note)}</p>")
    parts.append("<h2 id='verdict-table'>Verdicts</h2>")
    parts.append(_verdict_table(claim_list, verdicts))
    parts.append(
        "<p class='caption'>Kanuparthi et al., ICLR 2019. A claim is <i>supported</i> when "
        "every check's 95% CI (or P(A&gt;B)'s) lies on the claimed side, <i>contradicted</i> "
        "when one lies on the other side, <i>inconclusive</i> otherwise (with the seeds per "
        "arm a t-test would need at the observed effect, Colas et al. 2018). Ours and paper "
        "are in the check's unit; rows show the claim's first check with data.</p>"
    )
    if changes is not None or since_label:
        parts.append("<h2 id='changes'>Since the previous report</h2>")
        parts.append(_changes_html(changes, since_label))
    tables = [t for t in (_table1(claim_list, verdicts), _table2(claim_list, verdicts)) if t]
    if tables:
        parts.append("<h2 id='paper-tables'>The paper's tables beside ours</h2>")
        parts.extend(tables)
    parts.append("<h2 id='claims'>Claims</h2>")
    for claim, v in zip(claim_list, verdicts, strict=True):
        parts.append(
            f"<h3 id='{claim.id}'>{claim.id}: {html.escape(claim.title)} "
            f"{_badge(v.verdict)}</h3><p class='meta'>{html.escape(claim.source)}. "
            f"{html.escape(v.reason)}</p>"
        )
        parts.append(_check_table(claim, v))
        for fig in claim_figures.get(claim.id, []):
            parts.append(_figure_html(fig))
    parts.append("<h2 id='configurations'>Configurations</h2>")
    parts.append(_config_table_html(config_rows))
    if dodge is not None:
        parts.append("<h2 id='expected-max'>Tuning budget</h2>")
        parts.append(_figure_html(dodge))
    parts.append(
        "<p class='caption'>Statistics: dashboards/stats.py; claims and decision rule: "
        "dashboards/claims.py and claims.yaml.</p></body></html>"
    )
    return "\n".join(parts)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
