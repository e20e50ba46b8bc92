"""The runs table and its history as the reports use them: selecting runs, pairing two arms
on the contract's key, and per-run curves by epoch.

``runs`` and ``history`` are the frames :func:`dashboards.dataset.load` returns (their
columns are documented in :mod:`dashboards.export`). Nothing here computes a statistic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from trainables.contract import PAIR_KEYS, epochs_to_threshold

#: The metric that picks an arm's best learning rate (as the paper's Table 2 selects models).
SELECTION_METRIC = "best_val_acc"


def match(column: pd.Series, want: Any) -> np.ndarray:
    """Rows whose value is ``want`` (a list means "any of"; numbers compare with isclose)."""
    items = want if isinstance(want, list | tuple) else [want]
    hit = np.zeros(len(column), dtype=bool)
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    for item in items:
        if numeric and isinstance(item, int | float) and not isinstance(item, bool):
            vals = column.to_numpy(dtype=float, na_value=np.nan)
            hit |= np.isclose(vals, float(item), rtol=1e-9, atol=1e-12)
        else:
            hit |= (column == item).to_numpy(dtype=bool, na_value=False)
    return hit


def select(runs: pd.DataFrame, filters: Mapping[str, Any]) -> tuple[pd.DataFrame, str | None]:
    """The runs matching every filter, and why none can match (a filter's column is missing)."""
    mask = np.ones(len(runs), dtype=bool)
    for col, want in filters.items():
        if col not in runs.columns:
            return runs.iloc[:0], f"column '{col}' is not in the runs"
        mask &= match(runs[col], want)
    return runs[mask], None


def best_lr(arm_runs: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The runs of the arm's best learning rate (by mean ``best_val_acc``), or none and why."""
    for col in ("lr", SELECTION_METRIC):
        if col not in arm_runs.columns:
            return arm_runs.iloc[:0], f"no '{col}' column to pick the best learning rate"
    means = arm_runs.groupby("lr")[SELECTION_METRIC].mean().dropna()
    if means.empty:
        return arm_runs.iloc[:0], f"no finite '{SELECTION_METRIC}' to pick the best learning rate"
    return arm_runs[np.isclose(arm_runs["lr"].to_numpy(float), means.idxmax())], None


def pair(
    treat: pd.DataFrame, base: pd.DataFrame, *, across_lr: bool = False
) -> pd.DataFrame | None:
    """Inner join of two arms on the pairing key (``_t`` / ``_b`` suffixes), or None when the
    runs cannot be paired: no seed column, a key that repeats in an arm, or fewer than two
    pairs. ``across_lr``: each arm at its own learning rate, so ``lr`` is not in the key."""
    keys = [k for k in PAIR_KEYS if k in treat.columns and k in base.columns]
    if across_lr:
        keys = [k for k in keys if k != "lr"]
    if "seed" not in keys or treat.duplicated(keys).any() or base.duplicated(keys).any():
        return None
    merged = treat.merge(base, on=keys, suffixes=("_t", "_b"))
    return merged if len(merged) >= 2 else None


def paired_values(
    treat: pd.DataFrame, base: pd.DataFrame, column: str, *, across_lr: bool = False
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``column`` of both arms for a comparison: seed-paired (finite pairs only) when at least
    two pairs exist, else each arm's finite values. Returns (treatment, baseline, paired)."""
    pairs = pair(treat, base, across_lr=across_lr)
    if pairs is not None:
        a = pairs[f"{column}_t"].to_numpy(float)
        b = pairs[f"{column}_b"].to_numpy(float)
        ok = ~np.isnan(a) & ~np.isnan(b)
        if ok.sum() >= 2:
            return a[ok], b[ok], True
    a, b = treat[column].to_numpy(float), base[column].to_numpy(float)
    return a[~np.isnan(a)], b[~np.isnan(b)], False


class HistoryIndex:
    """Row positions of each run in the history frame, built once (no per-run filtering)."""

    def __init__(self, history: pd.DataFrame | None):
        self.history = history if history is not None else pd.DataFrame()
        self._codes: dict[str, int] = {}
        self._order = np.empty(0, dtype=np.int64)
        self._starts = np.zeros(1, dtype=np.int64)
        self._epoch = np.empty(0, dtype=np.int64)
        if self.history.empty or "run_id" not in self.history.columns:
            return
        codes, uniques = pd.factorize(self.history["run_id"], sort=False)
        self._codes = {run_id: i for i, run_id in enumerate(uniques)}
        self._order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(uniques))
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._epoch = self.history["epoch"].to_numpy(dtype=np.int64)

    def _rows(self, run_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
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
        rows, owners = self._rows(run_ids)
        if rows.size == 0 or column not in self.history.columns:
            return np.full((len(run_ids), 0), np.nan)
        epochs = self._epoch[rows]
        out = np.full((len(run_ids), int(epochs.max())), np.nan)
        out[owners, epochs - 1] = self.history[column].to_numpy(dtype=float)[rows]
        return out

    def last_epoch(self, run_ids: Sequence[str]) -> np.ndarray:
        """Per run: the last epoch the history holds (NaN: none)."""
        rows, owners = self._rows(run_ids)
        last = np.full(len(run_ids), np.nan)
        np.fmax.at(last, owners, self._epoch[rows].astype(float))
        return last

    def reach(self, run_ids: Sequence[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Per run: first epoch with val_acc >= threshold (NaN: never) and last epoch (NaN:
        no history), through the contract's definition of epochs to threshold."""
        curves = self.matrix(run_ids, "val_acc")
        return epochs_to_threshold(curves, threshold), self.last_epoch(run_ids)
