"""Setups: what defines an experiment except the arm and the seed, and at which scale it ran.

A run's setup is its values of the contract's ``SETUP_KEYS`` (task, delay T, encoding, hidden
size, layers, optimizer, batch size, epochs, batches per epoch, dataset sizes, learning rate,
clipping). Two runs are comparable only inside one setup; a claim is judged on every setup in
the data that holds both of its arms (:mod:`dashboards.evaluate`). Against a claim's
``paper_setup`` a setup is at *paper scale* (every value the paper gives matches), at
*reduced scale* (no size larger than the paper's) or at *other scale*.

Values are normalised before they are compared: the export keeps most params as MLflow's
strings ("128", "None", "True"), the typed ones as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainables.contract import (
    SETUP_KEYS,
    TASK_SETUP_KEYS,
    TRANSFER_PREFIX,
    transfer_delay,
    transfer_ratio_metric,
)

PAPER, REDUCED, OTHER = "paper scale", "reduced scale", "other scale"
#: The setup values that measure size: a reduced setup has none above the paper's.
SIZE_KEYS = ("seq_len", "hidden_size", "num_layers", "epochs", "batches_per_epoch", "train_size")
#: The setup values that name the data: with another one a setup is never "reduced scale".
DATA_KEYS = ("corpus", "level")


def normalise(value: Any) -> Any:
    """A setup value as a plain comparable one: None, bool, float or str."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return round(float(value), 12)
    text = str(value).strip()
    lowered = text.lower()
    if lowered in ("none", "null", "nan", ""):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return round(float(text), 12)
    except ValueError:
        return text


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@dataclass(frozen=True)
class Setup:
    """One setup: its (key, normalised value) pairs, in the contract's order."""

    values: tuple[tuple[str, Any], ...]

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.values).get(key, default)

    @property
    def task(self) -> str:
        return str(self.get("task", "?"))

    @property
    def delay(self) -> float:
        """T: the copying delay (the number of steps for MNIST); NaN when unknown."""
        value = self.get("seq_len")
        return float(value) if isinstance(value, float) else math.nan

    @property
    def updates(self) -> float:
        """The training budget in optimizer steps (NaN when the setup does not say)."""
        epochs, per_epoch = self.get("epochs"), self.get("batches_per_epoch")
        if not isinstance(epochs, float):
            return math.nan
        if isinstance(per_epoch, float):
            return epochs * per_epoch
        size, batch = self.get("train_size"), self.get("batch_size")
        if isinstance(size, float) and isinstance(batch, float):
            return epochs * math.ceil(size / batch)
        return epochs

    @property
    def size(self) -> tuple[float, float, float]:
        """Ordering of setups: larger T first matters most, then the budget, then width."""
        hidden = self.get("hidden_size")
        return tuple(
            -math.inf if math.isnan(x) else x
            for x in (self.delay, self.updates, hidden if isinstance(hidden, float) else math.nan)
        )

    def scale(self, paper: Mapping[str, Any], compared: Sequence[str] = ()) -> str:
        """Paper, reduced or other scale against the paper's setup (keys in ``compared``,
        which a check varies itself, e.g. the learning rate, do not count)."""
        wanted = {k: normalise(v) for k, v in paper.items() if k not in compared}
        if not wanted:
            return OTHER
        mine = dict(self.values)
        if all(k in mine and _same(mine[k], v) for k, v in wanted.items()):
            return PAPER
        for key in DATA_KEYS:  # another dataset is not a smaller version of the paper's
            if key in wanted and key in mine and not _same(mine[key], wanted[key]):
                return OTHER
        for key in SIZE_KEYS:
            ours, theirs = mine.get(key), wanted.get(key)
            if isinstance(ours, float) and isinstance(theirs, float) and ours > theirs:
                return OTHER
        return REDUCED

    def short(self) -> str:
        """The setup by its task and delay only (``copying T=20``, ``pmnist (49 steps)``): how
        a sentence under the setup's heading names it."""
        return self.words().split(", ")[0]

    def words(self) -> str:
        """The setup in words, e.g. ``copying T=20, 64 units, 15 epochs x 250 batches of 50,
        lr 1e-2, clip 1.0``."""
        get = self.get
        parts = [self.task]
        task = self.task
        if task == "language_model":
            corpus, level = get("corpus"), get("level")
            if corpus is not None:
                parts[0] += f" {Path(str(corpus)).name}" + (f" {level}-level" if level else "")
            if get("seq_len") is not None:
                parts[0] += f" ({_int(get('seq_len'))}-step windows)"
        elif task == "captioning":
            if get("corpus") is not None:
                parts[0] += f" {get('corpus')}"
            if get("decoder") is not None:
                parts[0] += f" {str(get('decoder')).replace('_', ' ')}"
        elif task == "copying":
            if get("seq_len") is not None:
                parts[0] += f" T={_int(get('seq_len'))}"
            if get("one_hot") is True:
                parts[0] += " (one-hot)"
        elif get("seq_len") is not None:
            pool = get("pixel_pool")
            pooled = (
                f", {_int(pool)}x{_int(pool)}-pooled"
                if isinstance(pool, float) and pool > 1
                else ""
            )
            parts[0] += f" ({_int(get('seq_len'))} steps{pooled})"
        if get("hidden_size") is not None:
            layers = get("num_layers")
            many = f" x {_int(layers)} layers" if isinstance(layers, float) and layers > 1 else ""
            parts.append(f"{_int(get('hidden_size'))} units{many}")
        if get("epochs") is not None:
            text = f"{_int(get('epochs'))} epochs"
            if isinstance(get("batches_per_epoch"), float):
                text += f" x {_int(get('batches_per_epoch'))} batches"
            elif get("train_size") is not None and task != "language_model":
                unit = "images" if task == "captioning" else "examples"
                text += f" on {_int(get('train_size')):,} {unit}"
            if get("batch_size") is not None:
                joint = " of " if " x " in text or " on " in text else ", batch "
                text += f"{joint}{_int(get('batch_size'))}"
            parts.append(text)
        optimizer = get("optimizer")
        if optimizer not in (None, "adam"):
            parts.append(str(optimizer))
        if get("lr") is not None:
            parts.append(f"lr {lr_text(get('lr'))}")
        if get("clip") is False:
            parts.append("no clipping")
        elif isinstance(get("clip_norm"), float):
            parts.append(f"clip {get('clip_norm'):.1f}" if get("clip_norm").is_integer()
                         else f"clip {get('clip_norm'):g}")  # fmt: skip
        return ", ".join(parts)


def _int(value: Any) -> int | str:
    return int(value) if isinstance(value, float) and value.is_integer() else str(value)


def lr_text(lr: float) -> str:
    """``1e-3``, ``5e-4``, ``1.5e-2``: a learning rate the way papers write it."""
    mantissa, exponent = f"{float(lr):.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def setup_keys(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """The setup columns the runs table has (less ``exclude``), in the contract's order."""
    return [k for k in SETUP_KEYS if k in runs.columns and k not in exclude]


class SetupIndex:
    """The setup of every run of a runs table, computed once (``exclude``: keys left out)."""

    def __init__(self, runs: pd.DataFrame, exclude: Sequence[str] = ()):
        keys = setup_keys(runs, exclude)
        tasks = runs["task"].tolist() if "task" in runs.columns else [None] * len(runs)
        # Plain Python values (a float column would turn a normalised None back into NaN); a
        # task-only key is absent for the other tasks.
        columns = [
            [
                normalise(v) if k not in TASK_SETUP_KEYS or t in TASK_SETUP_KEYS[k] else None
                for v, t in zip(runs[k].tolist(), tasks, strict=True)
            ]
            for k in keys
        ]
        rows = zip(*columns, strict=True) if keys else [()] * len(runs)
        found: dict[tuple, int] = {}
        self.setups: list[Setup] = []
        codes = []
        for values in rows:
            code = found.setdefault(values, len(found))
            if code == len(self.setups):
                self.setups.append(Setup(tuple(zip(keys, values, strict=True))))
            codes.append(code)
        self.codes = pd.Series(codes, index=runs.index, dtype=np.int64)

    def split(self, frame: pd.DataFrame) -> list[tuple[Setup, pd.DataFrame]]:
        """``frame`` (rows of the indexed table) grouped by setup, largest setup first."""
        codes = self.codes.loc[frame.index]
        groups = [
            (self.setups[code], frame.loc[index])
            for code, index in codes.groupby(codes, sort=False).groups.items()
        ]
        return sorted(groups, key=lambda g: g[0].size, reverse=True)


def split(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> list[tuple[Setup, pd.DataFrame]]:
    """The runs grouped by setup (``exclude``: keys left out of it), largest setup first."""
    return SetupIndex(runs, exclude).split(runs) if not runs.empty else []


def with_transfer_ratios(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` plus ``transfer_acc_x<k>`` columns: each copying run's transfer accuracy at k
    times its own training delay, for every k some run has (``transfer_acc_T200`` of a run
    trained at T=100 is its ``transfer_acc_x2``)."""
    if "seq_len" not in runs.columns:
        return runs
    delays = runs["seq_len"].to_numpy(dtype=float, na_value=np.nan)
    columns: dict[str, np.ndarray] = {}
    for name in runs.columns:
        delay = transfer_delay(name) if name.startswith(TRANSFER_PREFIX) else None
        if delay is None:
            continue
        values = runs[name].to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = delay / delays
        for k in np.unique(ratio[np.isfinite(values) & np.isfinite(ratio)]):
            if float(k).is_integer():
                column = columns.setdefault(
                    transfer_ratio_metric(int(k)), np.full(len(runs), np.nan)
                )
                hit = (ratio == k) & np.isfinite(values)
                column[hit] = values[hit]
    return runs.assign(**columns) if columns else runs
