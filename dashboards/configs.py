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
from dashboards.stats import Estimate, Summary
from trainables.contract import PAIR_KEYS, VANILLA

_CONFIG_KEYS = ("task", "config_id")
#: What a configuration shares with its paired vanilla baseline (the pairing key but the seed).
_BASELINE_KEYS = tuple(k for k in PAIR_KEYS if k != "seed")


@dataclass(frozen=True)
class ConfigRow:
    """One configuration over its seeds."""

    task: str
    config_id: str
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
    """One row per (task, config_id): seeds, best val acc (mean, IQM) and test acc with CIs,
    P(A>B) on best val acc against the paired vanilla configuration (paired on seed when
    possible), success rate (best val acc >= the run's own threshold, over the runs that
    logged one) and divergence rate with Wilson intervals."""
    if runs.empty or not set(_CONFIG_KEYS) <= set(runs.columns):
        return []
    keyed = runs.assign(config_id=runs["config_id"].fillna("?"))
    groups = dict(tuple(keyed.groupby(list(_CONFIG_KEYS), sort=True, dropna=False)))
    shared = [k for k in _BASELINE_KEYS if k in runs.columns]

    def baseline_key(frame: pd.DataFrame) -> tuple:
        first = frame.iloc[0]
        return tuple(_hashable(first[k]) for k in ("task", *shared))

    vanilla: dict[tuple, pd.DataFrame] = {}
    for frame in groups.values():
        if "arm" in frame.columns and (frame["arm"] == VANILLA).all():
            vanilla.setdefault(baseline_key(frame), frame)
    rows = []
    for (task, config_id), frame in groups.items():
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
        base = vanilla.get(baseline_key(frame))
        if base is not None and first.get("arm") != VANILLA:
            p_improve, paired = _vs_baseline(frame, base, rng, n_resamples)
        rows.append(
            ConfigRow(
                task=str(task),
                config_id=str(config_id),
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
            )
        )  # fmt: skip
    return rows
