"""The end-of-study console summary: configurations ranked by their seed-robust objective,
each with its paired vanilla baseline beside it (read back from MLflow)."""

from __future__ import annotations

import math

import numpy as np

from study.tracking import StudyTracker
from trainables.contract import (
    BASELINE_TAG,
    CHILD,
    DECISION_TAG,
    LOWER_IS_BETTER,
    PARENT,
    STOP_TAG,
    VANILLA,
    headline_metric,
    prob_better,
)


def ranked_summary(tracker: StudyTracker) -> tuple[list[dict], str]:
    """Rows (one per configuration, best first) and the table as text."""
    parents = {p.config_id: p for p in tracker.find_runs(PARENT)}
    tasks = {p.params.get("task") or p.tags.get("task") for p in parents.values()}
    task = tasks.pop() if len(tasks) == 1 else None
    # The task's headline metric (best validation accuracy; test perplexity for the language
    # model, test CIDEr-D for captioning); the objective is the task's selection score.
    metric = headline_metric(task)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    show = _pct if metric == "best_val_acc" else _num  # accuracies (and their score) in %
    best: dict[str, dict[int, float]] = {}
    for child in tracker.find_runs(CHILD):
        value = child.metrics.get(metric, math.nan)
        best.setdefault(child.config_id, {})[child.seed] = value
    rows = []
    for cid, parent in parents.items():
        seeds = best.get(cid, {})
        values = np.array(list(seeds.values()), dtype=float)
        row = {
            "config_id": cid,
            "arm": parent.params.get("arm", "?"),
            "p_detach": parent.params.get("p_detach", "?"),
            "lr": parent.params.get("lr", "?"),
            "clip": parent.params.get("clip", "?"),
            "seeds": len(seeds),
            "objective": parent.metrics.get("objective", math.nan),
            "metric": metric,
            "mean": float(np.nanmean(values)) if np.isfinite(values).any() else math.nan,
            "baseline": parent.tags.get(BASELINE_TAG),
            "decision": parent.tags.get(DECISION_TAG),
            "stopped_by": parent.tags.get(STOP_TAG),
            "decided_at_look": parent.metrics.get("decided_at_look"),
            "fixed_design_seeds": parent.metrics.get("fixed_design_seeds"),
        }
        base = best.get(row["baseline"] or "", {})
        common = sorted(set(seeds) & set(base))
        if common:
            a = np.array([seeds[s] for s in common], dtype=float)
            b = np.array([base[s] for s in common], dtype=float)
            ok = np.isfinite(a) & np.isfinite(b)
            row["baseline_mean"] = float(b[ok].mean()) if ok.any() else math.nan
            row["p_better"] = (
                float(prob_better(sign * a[ok], sign * b[ok])) if ok.any() else math.nan
            )
            row["pairs"] = int(ok.sum())
        rows.append(row)
    rows.sort(key=lambda r: -r["objective"] if math.isfinite(r["objective"]) else math.inf)

    lines = [
        "Configurations, best first (objective = seed-robust value given to Optuna; "
        f"mean = {'mean best' if metric == 'best_val_acc' else metric} over seeds):",
        f"{'rank':>4}  {'config':<28} {'seeds':>5} {'objective':>9} {'mean':>9}  "
        f"{'paired vanilla':>14} {'P(better)':>9}",
    ]
    for i, r in enumerate(rows, 1):
        vanilla = show(r["baseline_mean"]) if "baseline_mean" in r else "-"
        better = f"{r['p_better']:.2f} ({r['pairs']})" if "p_better" in r else "-"
        lines.append(
            f"{i:>4}  {r['config_id']:<28} {r['seeds']:>5} {show(r['objective']):>9} "
            f"{show(r['mean']):>9}  {vanilla:>14} {better:>9}"
        )
    sequential = [r for r in rows if r["decision"] and r["arm"] != VANILLA]
    if sequential:
        lines += ["", "Sequential seeds (--seeds auto): decision against the paired baseline"]
        for r in sequential:
            look = r["decided_at_look"]
            when = f"at look {int(look)}" if look else f"stopped by {r['stopped_by']}"
            fixed = r["fixed_design_seeds"]
            vs = f"; a fixed design of the same power: {int(fixed)} seeds" if fixed else ""
            lines.append(
                f"  {r['config_id']:<28} {r['decision']:<10} {when}, {r['seeds']} seeds{vs}"
            )
    return rows, "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%" if math.isfinite(value) else "-"


def _num(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "-"
