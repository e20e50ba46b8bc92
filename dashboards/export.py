"""MLflow -> Parquet: every child run of a study experiment as two tables, exported incrementally.

:func:`export` copies the child runs (``run_kind=child``) of one experiment into the Parquet
dataset of :mod:`dashboards.dataset`; :func:`load` reads it back as the ``runs`` /
``history`` DataFrames the reports use. :func:`write_frames` writes such frames directly
(synthetic data, benchmarks). Parent runs and report runs (``run_kind=report``) are never
exported. Names come from the data contract (:mod:`trainables.contract`).

The tables' columns are documented in :mod:`dashboards.dataset`.

Incremental export
------------------
The dataset's ``state.json`` keeps, per run: its status, end time, ``updated``,
``epochs_logged``, a digest of its params, tags and latest metric values, and a *history key*
(the newest step and timestamp of its per-epoch metrics). One paged ``search_runs`` returns
all of that for every run, so an export first pages through the children, then:

* a run whose state equals the stored one is left alone (nothing fetched);
* a new run, or a changed one whose history key moved, has its history fetched: with
  ``GetMetricHistoryBulkInterval`` (one request per metric per 100 runs, the endpoint the
  MLflow UI uses; the SQL store answers the same call locally) or, where the store lacks it,
  ``get_metric_history`` per run and metric;
* a changed run whose history key did not move (it only finished, or got tags) keeps the
  history rows the dataset already holds;
* a run gone from MLflow (deleted) is dropped.

When nothing changed no file is touched; otherwise the experiment's dataset is rebuilt from
the stored rows and the fetched ones and swapped in atomically (:mod:`dashboards.dataset`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from dashboards import dataset, mlflow_runs


class ExportError(dataset.DatasetError):
    """A problem the user can fix: unknown experiment, unreadable dataset."""


@dataclass
class ExportResult:
    """What one :func:`export` call did."""

    experiment: str
    out_dir: Path
    runs_total: int = 0
    runs_new: int = 0
    runs_changed: int = 0
    runs_unchanged: int = 0
    runs_removed: int = 0
    #: Runs whose per-epoch history was fetched from MLflow (new, or with new epochs).
    fetched: list[str] = field(default_factory=list)
    search_requests: int = 0
    history_requests: int = 0
    files_written: int = 0
    seconds: float = 0.0
    #: Values that could not be read as their column's type (left null), one line each.
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"exported {self.experiment!r}: {self.runs_total} runs ({self.runs_new} new, "
            f"{self.runs_changed} changed, {self.runs_removed} removed, {self.runs_unchanged} "
            f"unchanged); histories fetched for {len(self.fetched)} runs in "
            f"{self.search_requests} search + {self.history_requests} history requests; "
            f"{self.files_written} files written in {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------------------------
# Public API


def export(
    tracking_uri: str,
    experiment: str,
    out_dir: str | os.PathLike,
    *,
    client: MlflowClient | None = None,
    max_rows_per_file: int = 1_000_000,
) -> ExportResult:
    """Bring the Parquet dataset of `experiment` in `out_dir` up to date with MLflow.

    Args:
        tracking_uri: MLflow tracking URI (ignored when `client` is given).
        experiment: experiment name; it must exist (nothing is created in MLflow).
        out_dir: dataset root; created if missing.
        client: a ready client (e.g. one that counts its requests).
        max_rows_per_file: rows per Parquet file.

    Raises:
        ExportError: the experiment does not exist or is deleted.
    """
    started = time.monotonic()
    client = client or MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ExportError(f"no experiment named {experiment!r} on {tracking_uri}")
    if exp.lifecycle_stage != "active":
        raise ExportError(f"experiment {experiment!r} on {tracking_uri} is deleted")
    root = Path(out_dir)
    result = ExportResult(experiment=experiment, out_dir=root)
    with dataset.locked(root, experiment):
        stored = dataset.read_state(root, experiment)
        if stored is not None and stored.get("experiment_id") != exp.experiment_id:
            stored = None  # the name now belongs to another experiment: start afresh
        old_states: dict[str, dict] = stored["runs"] if stored else {}

        found, result.search_requests = mlflow_runs.search_children(client, exp.experiment_id)
        rows, states = {}, {}
        for run in found:
            row, state = mlflow_runs.run_row(run, result.problems)
            rows[run.info.run_id], states[run.info.run_id] = row, state

        changed, need_history = [], []
        for run_id, state in states.items():
            old = old_states.get(run_id)
            if old is None:
                result.runs_new += 1
            elif old != state:
                result.runs_changed += 1
            else:
                result.runs_unchanged += 1
                continue
            changed.append(run_id)
            # Same history key (no new epoch, same task): the dataset's epochs are still right.
            if old is None or any(old.get(k) != state[k] for k in ("history_key", "task")):
                need_history.append(run_id)
        removed = [run_id for run_id in old_states if run_id not in states]
        result.runs_removed = len(removed)
        result.runs_total = len(states)
        if stored is not None and not changed and not removed:
            result.seconds = time.monotonic() - started
            return result

        fetched, result.history_requests = mlflow_runs.fetch_histories(
            client,
            need_history,
            {r: states[r]["epochs_logged"] for r in need_history},
            {r: states[r]["task"] for r in need_history},
        )
        result.fetched = list(need_history)
        old = dataset.read_partition(root, experiment) if stored else None
        frames = _merge(old, rows, states, changed, need_history, fetched)
        state = {
            "experiment": experiment,
            "experiment_id": exp.experiment_id,
            "tracking_uri": tracking_uri,
            "exported_at": _now_ms(),
            "runs": states,
        }
        result.files_written = dataset.write_partition(
            root, experiment, frames, state, max_rows_per_file=max_rows_per_file
        )
    result.seconds = time.monotonic() - started
    return result


def load(
    out_dir: str | os.PathLike, experiment: str | Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the dataset as ``(runs, history)`` DataFrames (schema: module docstring).

    Args:
        out_dir: dataset root written by :func:`export` or :func:`write_frames`.
        experiment: one experiment, several, or None for every experiment in the dataset.

    Raises:
        ExportError: no dataset (or no such experiment) in `out_dir`.
    """
    try:
        runs, history = dataset.load_frames(out_dir, experiment)
    except dataset.DatasetError as err:
        raise ExportError(str(err)) from None
    return deduplicated(runs, history)


#: What names one measurement: a (configuration, seed) of one experiment is run once.
RUN_KEY = ("experiment", "config_id", "seed")


def deduplicated(runs: pd.DataFrame, history: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each (experiment, configuration, seed) once, loudly: two drivers on one study (before
    the study lock existed) left every run twice, and counting both doubles the seeds an arm
    seems to have. Kept: the first finished run of each, else the first started."""
    if runs.empty or not set(RUN_KEY) <= set(runs.columns):
        return runs, history
    keyed = runs["config_id"].notna() & runs["seed"].notna()
    repeated = keyed & runs.duplicated(list(RUN_KEY), keep=False)
    if not repeated.any():
        return runs, history
    order = runs.assign(_unfinished=runs["status"] != "FINISHED").sort_values(
        ["_unfinished", "start_time"], kind="stable"
    )
    kept = order[keyed].drop_duplicates(list(RUN_KEY), keep="first").index.union(runs.index[~keyed])
    dropped = runs.index.difference(kept)
    sample = ", ".join(runs.loc[dropped[:3], "run_id"].astype(str))
    warnings.warn(
        f"{len(dropped)} runs repeat a (configuration, seed) of their experiment (two drivers "
        f"on one study?): each counts once, the first finished kept; dropped {sample}"
        f"{', ...' if len(dropped) > 3 else ''}",
        RuntimeWarning,
        stacklevel=2,
    )
    runs = runs.loc[runs.index.isin(kept)].reset_index(drop=True)
    history = history[history["run_id"].isin(runs["run_id"])].reset_index(drop=True)
    return runs, history


def write_frames(
    out_dir: str | os.PathLike,
    experiment: str,
    runs: pd.DataFrame,
    history: pd.DataFrame,
    *,
    max_rows_per_file: int = 1_000_000,
) -> None:
    """Replace the dataset of `experiment` with these frames (synthetic data, benchmarks).

    `runs` needs ``run_id`` and ``task``; `history` needs ``run_id`` and ``epoch`` (its
    ``task`` is taken from `runs`). Columns follow the schema of the module docstring.
    """
    for name, frame, need in (
        ("runs", runs, {"run_id", "task"}),
        ("history", history, {"run_id", "epoch"}),
    ):
        missing = need - set(frame.columns)
        if missing:
            raise ValueError(f"{name} lacks columns {sorted(missing)}")
    if runs["run_id"].duplicated().any():
        raise ValueError("runs has duplicate run_id values")
    runs = runs.drop(columns=["experiment"], errors="ignore")
    task_of = runs.set_index("run_id")["task"].astype(str)
    history = history.drop(columns=["experiment", "task"], errors="ignore")
    history = history.assign(task=history["run_id"].map(task_of))
    states = {r: {"task": str(t)} for r, t in task_of.items()}
    with dataset.locked(Path(out_dir), experiment):
        dataset.write_partition(
            out_dir, experiment, {"runs": runs, "history": history},
            {"experiment": experiment, "experiment_id": None, "runs": states},
            max_rows_per_file=max_rows_per_file,
        )  # fmt: skip


def experiments(out_dir: str | os.PathLike) -> list[str]:
    """Names of the experiments with a committed dataset in `out_dir`."""
    return dataset.experiments(out_dir)


def _merge(old, rows, states, changed, need_history, fetched) -> dict[str, pd.DataFrame]:
    """The new frames: stored rows of runs that did not change, fresh rows of those that did;
    stored history of runs whose epochs did not move, fetched history of those that did."""
    keep_runs = set(states) - set(changed)
    keep_history = set(states) - set(need_history)
    new_runs = pd.DataFrame([rows[r] for r in changed])
    if not new_runs.empty:
        new_runs["task"] = [states[r]["task"] for r in changed]
        for name in ("start_time", "end_time", "updated"):
            new_runs[name] = pd.to_datetime(new_runs[name], unit="ms", utc=True)
    runs_parts, history_parts = [new_runs], []
    if old is not None:
        runs_parts.insert(0, old["runs"][old["runs"]["run_id"].isin(keep_runs)])
        history_parts.append(old["history"][old["history"]["run_id"].isin(keep_history)])
    task_of = {r: s["task"] for r, s in states.items()}
    history_parts.append(fetched.assign(task=fetched["run_id"].map(task_of)))
    runs = pd.concat([p for p in runs_parts if not p.empty] or [new_runs], ignore_index=True)
    runs = runs.drop(columns=["experiment"], errors="ignore")
    history = pd.concat(history_parts, ignore_index=True).drop(
        columns=["experiment"], errors="ignore"
    )
    # A run that moved to another task keeps no history of its old partition.
    history = history[history["task"].astype(str) == history["run_id"].map(task_of)]
    order = [c for c in ("config_id", "seed", "run_id") if c in runs.columns]
    runs = runs.sort_values(order, kind="stable", na_position="last")
    history = history.sort_values(["run_id", "epoch"], kind="stable")
    return {"runs": runs, "history": history}


def _now_ms() -> int:
    return int(time.time() * 1000)
