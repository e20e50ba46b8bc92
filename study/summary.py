"""The end-of-study console summary: configurations ranked by their seed-robust objective,
each with its paired vanilla baseline beside it (read back from MLflow), and the study's
family of "better / worse than vanilla" verdicts: each configuration's raw p-value, adjusted
across the configurations the study tested (``--correction``: Holm by default, controlling
the family-wise error; Benjamini-Hochberg, the false discovery rate; or none), computed once
here and written to the parent runs and their child runs (``log_family``) for the report to
read.

The p-value of a configuration: with ``--seeds auto`` the sequential design's stage-wise
p-value (``study/sequential.py``, logged by the driver when the comparison stopped); with a
fixed number of seeds the same sign-flip test with one look at all the paired seeds, on the
headline metric, through the shape gate (``pairedstats/shape.py``) at the skewness of the
paired differences pooled over every configuration of the study (the searcher applies the
same gate to ``--seeds auto`` looks). A verdict survives the correction when the test itself
decided it and its adjusted p-value is at most alpha."""

from __future__ import annotations

import math

import numpy as np

from pairedstats.multiplicity import CONTROLS, adjust
from pairedstats.shape import Shape
from study import sequential as seq
from study.tracking import StudyTracker
from trainables.contract import (
    ADJUSTED_DECISION_TAG,
    BASELINE_TAG,
    CHILD,
    CORRECTION_TAG,
    DECISION_TAG,
    FAMILY_CHILD_METRICS,
    GATE_CHILD_METRICS,
    GATE_METRICS,
    LOWER_IS_BETTER,
    P_ADJUSTED_METRIC,
    P_VALUE_METRIC,
    PARENT,
    SEQUENTIAL_DECISIONS,
    STOP_TAG,
    TERMINAL_STATUSES,
    VANILLA,
    headline_metric,
    prob_better,
)


def ranked_summary(
    tracker: StudyTracker, *, correction: str = "holm", alpha: float = 0.05
) -> tuple[list[dict], str]:
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
    differences: dict[str, np.ndarray] = {}  # signed paired differences per configuration
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
            differences[cid] = sign * (a[ok] - b[ok])
        if parent.tags.get(DECISION_TAG):
            row["p_value"] = parent.metrics.get(P_VALUE_METRIC, math.nan)
            for key in GATE_METRICS:  # the gate the searcher applied at the decision
                if math.isfinite(parent.metrics.get(key, math.nan)):
                    row[key] = parent.metrics[key]
        rows.append(row)
    # fixed seeds: one look at every pair, gated by the skewness pooled over every
    # configuration of the study (each against its baseline, one group)
    pool = Shape.of(differences.values())
    for row in rows:
        if not row["decision"] and row["config_id"] in differences:
            d = differences[row["config_id"]]
            row["decision"], row["p_value"], withheld = _fixed_test(
                d, row["config_id"], alpha, pool.gamma
            )
            row.update(_gate_figures(pool, withheld))
    family(rows, correction, alpha)
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
    tested = [r for r in rows if math.isfinite(r.get("p_value", math.nan))]
    if tested:
        lines += [
            "",
            f"Better / worse than vanilla (alpha {alpha}; correction {correction}: "
            f"{CONTROLS[correction]}):",
            f"  {'config':<28} {'pairs':>5} {'p raw':>8} {'p adj':>8}  {'test':<10} verdict",
        ]
        for r in tested:
            lines.append(
                f"  {r['config_id']:<28} {r['pairs']:>5} {r['p_value']:>8.4f} "
                f"{r['p_adjusted']:>8.4f}  {r['decision']:<10} {r['decision_adjusted']}"
            )
        gated = [r for r in tested if not r["stopped_by"] and "skewness_pairs" in r]
        if gated:
            lines.append(f"  Shape gate: {_gate_line(gated[0])}")
            withheld = [r["config_id"] for r in gated if r.get("withheld")]
            if withheld:
                lines.append(
                    f"  withheld by the gate (the test decided, the pairs are too few for "
                    f"this skewness): {', '.join(withheld)}"
                )
    sequential = [r for r in rows if r["stopped_by"] and r["arm"] != VANILLA]
    if sequential:
        lines += ["", "Sequential seeds (--seeds auto): decision against the paired baseline"]
        for r in sequential:
            look = r["decided_at_look"]
            when = f"at look {int(look)}" if look else f"stopped by {r['stopped_by']}"
            fixed = r["fixed_design_seeds"]
            vs = f"; a fixed design (80% power at this effect): {int(fixed)}" if fixed else ""
            lines.append(
                f"  {r['config_id']:<28} {r['decision']:<10} {when}, {r['seeds']} seeds{vs}"
            )
            if "skewness_pairs" in r:
                withheld = "withheld by the shape gate: " if r.get("withheld") else "shape gate: "
                lines.append(f"  {'':<28} {withheld}{_gate_line(r)}")
    return rows, "\n".join(lines)


def family(rows: list[dict], correction: str, alpha: float) -> None:
    """Adjust the rows' p-values across the study's configurations (in place: ``p_adjusted``
    and ``decision_adjusted``, with ``correction``); rows without a test are not counted."""
    p = [r.get("p_value", math.nan) for r in rows]
    adjusted = adjust(p, correction)
    for r, q in zip(rows, adjusted, strict=True):
        if not math.isfinite(q):
            continue
        kept = r["decision"] in (seq.BETTER, seq.WORSE) and q <= alpha
        r["p_adjusted"] = float(q)
        r["correction"] = correction
        r["decision_adjusted"] = r["decision"] if kept else seq.UNDECIDED


def log_family(tracker: StudyTracker, rows: list[dict]) -> None:
    """Write each tested configuration's raw and adjusted p-value, the correction and the
    verdict after it to its parent run, and the same to its child runs (the report's data:
    ``FAMILY_CHILD_METRICS``), with the shape gate's figures (``GATE_METRICS``, on children
    ``GATE_CHILD_METRICS``). Only what differs is written, so a resumed study's second
    pass changes nothing."""
    parents = {p.config_id: p for p in tracker.find_runs(PARENT)}
    children: dict[str, list] = {}
    for child in tracker.find_runs(CHILD):
        children.setdefault(child.config_id, []).append(child)
    for r in rows:
        parent = parents.get(r["config_id"])
        if parent is None or "p_adjusted" not in r:
            continue
        tags = {CORRECTION_TAG: r["correction"], ADJUSTED_DECISION_TAG: r["decision_adjusted"]}
        gated = {key: float(r[key]) for key in GATE_METRICS if key in r}
        tracker.finish(
            parent.run_id,
            {P_VALUE_METRIC: r["p_value"], P_ADJUSTED_METRIC: r["p_adjusted"], **gated},
            parent.status,
            tags=tags,
        )
        figures = {P_VALUE_METRIC: r["p_value"], P_ADJUSTED_METRIC: r["p_adjusted"]}
        figures[ADJUSTED_DECISION_TAG] = SEQUENTIAL_DECISIONS.get(r["decision_adjusted"], math.nan)
        child_metrics = {metric: figures[key] for metric, key in FAMILY_CHILD_METRICS.items()}
        child_metrics |= {m: gated[key] for m, key in GATE_CHILD_METRICS.items() if key in gated}
        for child in children.get(r["config_id"], []):
            if child.status not in TERMINAL_STATUSES:  # a run still open is not rewritten
                continue
            tracker.finish(
                child.run_id, child_metrics, child.status, tags={CORRECTION_TAG: r["correction"]}
            )


def _fixed_test(
    d: np.ndarray, key: str, alpha: float, gamma: float | None = None
) -> tuple[str | None, float, bool]:
    """A fixed-seed study's test of one configuration: the sign-flip design with one look
    at all ``d.size`` pairs, through the shape gate at the pooled skewness ``gamma`` (None:
    the skewness of ``d`` alone). The decision, the p-value and whether the gate withheld a
    decision the test reached (None, NaN and False below 2 pairs)."""
    if d.size < 2:
        return None, math.nan, False
    if gamma is None:
        gamma = Shape.of([d]).gamma
    design = seq.SequentialDesign(min_seeds=d.size, seed_block=1, max_seeds=d.size, alpha=alpha)
    result = seq.analyse(d, design, key, gamma=gamma)
    return result.decision, result.p_value, result.withheld


def _gate_figures(pool: Shape, withheld: bool) -> dict:
    """A row's shape-gate figures (``trainables.contract.GATE_METRICS``); the skewness and
    the pairs it asks for only where the skewness is defined."""
    out = {"skewness_pairs": pool.values, "withheld": float(withheld)}
    if pool.needed() is not None:
        out.update(skewness=pool.gamma, pairs_needed=pool.needed())
    return out


def _gate_line(r: dict) -> str:
    if "skewness" not in r:
        return f"no skewness to measure over {int(r['skewness_pairs'])} paired differences: open"
    return (
        f"skewness {r['skewness']:.2f} pooled over {int(r['skewness_pairs'])} paired "
        f"differences asks for {int(r['pairs_needed'])} pairs per verdict"
    )


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%" if math.isfinite(value) else "-"


def _num(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "-"
