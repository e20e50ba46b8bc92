"""Per-configuration statistics: every configuration of a study beside its paired baseline.

:func:`configuration_table` summarises each (task, configuration) over its seeds and compares
it with the vanilla configuration of the same setup (task, T, lr, clipping) the way every
check does (:func:`dashboards.runs.paired_values` and :func:`dashboards.stats.compare`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dashboards import runs as runs_mod
from dashboards import stats
from dashboards.setups import Setup, SetupIndex
from dashboards.stats import Estimate, Summary
from trainables.contract import (
    ADJUSTED_DECISION_TAG,
    CORRECTION_TAG,
    FAMILY_CHILD_METRICS,
    GATE_CHILD_METRICS,
    P_ADJUSTED_METRIC,
    P_VALUE_METRIC,
    SEQUENTIAL_DECISIONS,
    SEQUENTIAL_STOPS,
    VANILLA,
)

_CONFIG_KEYS = ("task", "config_id")
_FAMILY = {key: metric for metric, key in FAMILY_CHILD_METRICS.items()}
FAMILY_P, FAMILY_P_ADJUSTED = _FAMILY[P_VALUE_METRIC], _FAMILY[P_ADJUSTED_METRIC]
FAMILY_DECISION = _FAMILY[ADJUSTED_DECISION_TAG]
_GATE = {key: metric for metric, key in GATE_CHILD_METRICS.items()}
#: the decision of a tested configuration that the correction did not keep
UNDECIDED = "undecided"


@dataclass(frozen=True)
class ConfigRow:
    """One configuration over its seeds."""

    task: str
    config_id: str
    setup: Setup
    shared_id: bool  # the same configuration id also ran in another setup
    arm: str
    p_detach: float
    lr: float
    clip: bool | None
    seq_len: float
    n: int
    best_val_acc: Summary
    test_acc: Summary
    p_improve: Estimate | None  # P(best val acc better than the paired vanilla baseline)
    paired: bool
    success: Estimate  # best val acc >= the run's own threshold (Wilson), runs with one
    without_threshold: int  # runs that logged no threshold (left out of ``success``)
    diverged: Estimate
    #: the study's test of this configuration against vanilla (``study/summary.py``: raw and
    #: adjusted p across the study's configurations, the correction, the decision after it),
    #: read from the child runs; NaN / None where the study wrote none
    family_p: float = math.nan
    family_p_adjusted: float = math.nan
    correction: str | None = None
    decision_adjusted: str | None = None
    #: the shape gate behind that test (``pairedstats.shape``): the pooled skewness, the pairs
    #: it asks for, and whether it held a decision back (None: the study wrote no gate)
    gate_skewness: float = math.nan
    gate_pairs_needed: float = math.nan
    gate_withheld: bool | None = None

    @property
    def key(self) -> str:
        """``task/config_id``, with the setup when the id ran in several."""
        name = f"{self.task}/{self.config_id}"
        return f"{name} @ {self.setup.words()}" if self.shared_id else name


def _float(value: Any) -> float:
    try:
        return math.nan if pd.isna(value) else float(value)
    except (TypeError, ValueError):
        return math.nan


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].to_numpy(float) if name in frame else np.full(len(frame), np.nan)


def _vs_baseline(frame, base, rng, n_resamples) -> tuple[Estimate | None, bool]:
    if "best_val_acc" not in frame or "best_val_acc" not in base:
        return None, False
    a, b, paired = runs_mod.paired_values(frame, base, "best_val_acc")
    if a.size == 0 or b.size == 0:
        return None, False
    return stats.compare(a, b, rng, paired=paired, n_resamples=n_resamples).p_improve, paired


def configuration_table(
    runs: pd.DataFrame, rng: np.random.Generator, *, n_resamples: int = stats.N_RESAMPLES
) -> list[ConfigRow]:
    """One row per configuration and setup: seeds, best val acc (mean, IQM) and test acc with CIs,
    P(A>B) on best val acc against the paired vanilla configuration (paired on seed when
    possible), success rate (best val acc >= the run's own threshold, over the runs that
    logged one) and divergence rate with Wilson intervals."""
    if runs.empty or not set(_CONFIG_KEYS) <= set(runs.columns):
        return []
    runs = runs.reset_index(drop=True)
    index = SetupIndex(runs)
    # A configuration id names (arm, p, lr, clip) only: the same id at another delay or budget
    # is another configuration, compared with the vanilla runs of its own setup.
    keyed = runs.assign(config_id=runs["config_id"].fillna("?"), _setup=index.codes)
    groups = dict(tuple(keyed.groupby([*_CONFIG_KEYS, "_setup"], sort=True, dropna=False)))
    vanilla: dict[int, pd.DataFrame] = {}
    for (_, _, code), frame in groups.items():
        if "arm" in frame.columns and (frame["arm"] == VANILLA).all():
            vanilla.setdefault(code, frame)
    ids = [cid for _, cid, _ in groups]
    rows = []
    for (task, config_id, code), frame in groups.items():
        first = frame.iloc[0]
        best, threshold = _column(frame, "best_val_acc"), _column(frame, "threshold")
        has = ~np.isnan(threshold)
        success = stats.success_rate(best[has], threshold[has])
        diverged = (
            stats.rate(frame["diverged"].astype("boolean").fillna(False).to_numpy(dtype=bool))
            if "diverged" in frame
            else stats.NAN
        )
        p_improve, paired = None, False
        base = vanilla.get(code)
        if base is not None and first.get("arm") != VANILLA:
            p_improve, paired = _vs_baseline(frame, base, rng, n_resamples)
        rows.append(
            ConfigRow(
                task=str(task),
                config_id=str(config_id),
                setup=index.setups[code],
                shared_id=ids.count(config_id) > 1,
                arm=str(first.get("arm", "")),
                p_detach=_float(first.get("p_detach")),
                lr=_float(first.get("lr")),
                clip=None if pd.isna(first.get("clip")) else bool(first.get("clip")),
                seq_len=_float(first.get("seq_len")),
                n=int(len(frame)),
                best_val_acc=stats.summarize(best, rng, n_resamples=n_resamples),
                test_acc=stats.summarize(_column(frame, "test_acc_at_best"), rng,
                                         n_resamples=n_resamples),
                p_improve=p_improve,
                paired=paired,
                success=success,
                without_threshold=int((~has).sum()),
                diverged=diverged,
                **_family(first),
            )
        )  # fmt: skip
    return rows


def _family(first: pd.Series) -> dict[str, Any]:
    """The study's family test of a configuration, as its child runs carry it."""
    p = _float(first.get(FAMILY_P))
    if math.isnan(p):
        return {}
    code = _float(first.get(FAMILY_DECISION))
    decisions = {v: k for k, v in SEQUENTIAL_DECISIONS.items()}
    correction = first.get(f"tag.{CORRECTION_TAG}")
    withheld = _float(first.get(_GATE["withheld"]))
    return {
        "family_p": p,
        "family_p_adjusted": _float(first.get(FAMILY_P_ADJUSTED)),
        "correction": None if pd.isna(correction) else str(correction),
        "decision_adjusted": decisions.get(code, UNDECIDED),
        "gate_skewness": _float(first.get(_GATE["skewness"])),
        "gate_pairs_needed": _float(first.get(_GATE["pairs_needed"])),
        "gate_withheld": None if math.isnan(withheld) else bool(withheld),
    }


@dataclass(frozen=True)
class SequentialRow:
    """The outcome of one configuration of a ``--seeds auto`` study (from its child runs)."""

    task: str
    config_id: str
    decision: str  # better, worse, equivalent, undecided
    stopped_by: str  # decided, max_seeds, budget
    look: int | None  # the look that decided it (1-based)
    seeds: int
    pair_hours: float  # trial hours of the configuration and its baseline on those seeds
    fixed_seeds: int | None  # a fixed design of the same power
    fixed_hours: float | None

    @property
    def saved(self) -> float | None:
        """Share of the fixed design's compute the sequential one did not spend."""
        if self.fixed_hours is None or not self.fixed_hours > 0:
            return None
        return 1.0 - self.pair_hours / self.fixed_hours


def sequential_table(runs: pd.DataFrame) -> list[SequentialRow]:
    """One row per h-detach configuration that a sequential study stopped."""
    if runs.empty or "sequential_seeds" not in runs.columns:
        return []
    decisions = {v: k for k, v in SEQUENTIAL_DECISIONS.items()}
    stops = {v: k for k, v in SEQUENTIAL_STOPS.items()}
    out = []
    done = runs[runs["sequential_seeds"].notna() & (runs["arm"] != VANILLA)]
    for (task, cid), group in done.groupby(list(_CONFIG_KEYS), sort=True):
        first = group.iloc[0]

        def value(name: str, row=first) -> float:
            return _float(row.get(name, math.nan))

        fixed = value("sequential_fixed_seeds")
        fixed_s = value("sequential_fixed_seconds")
        look = value("sequential_look")
        out.append(
            SequentialRow(
                task=str(task),
                config_id=str(cid),
                decision=decisions.get(value("sequential_decision"), "undecided"),
                stopped_by=stops.get(value("sequential_stop"), "?"),
                look=None if math.isnan(look) else int(look),
                seeds=int(value("sequential_seeds")),
                pair_hours=value("sequential_pair_seconds") / 3600,
                fixed_seeds=None if math.isnan(fixed) else int(fixed),
                fixed_hours=None if math.isnan(fixed_s) else fixed_s / 3600,
            )
        )
    return out
