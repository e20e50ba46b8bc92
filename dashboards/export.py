"""MLflow -> Parquet: every child run of a study experiment as two tables, exported incrementally.

:func:`export` copies the child runs (``run_kind=child``) of one experiment into the Parquet
dataset of :mod:`dashboards.dataset`; :func:`load` reads it back as the ``runs`` /
``history`` DataFrames the reports use. :func:`write_frames` writes such frames directly
(synthetic data, benchmarks). Parent runs and report runs (``run_kind=report``) are never
exported. Names come from the data contract (:mod:`trainables.contract`).

Layout (hive partitioning by experiment and task; values URI-encoded, pyarrow decodes them)::

    <out_dir>/manifests/experiment=<name>.json     the commit point of one experiment
    <out_dir>/runs/experiment=<name>/task=<task>/part-<batch>.parquet
    <out_dir>/history/experiment=<name>/task=<task>/part-<batch>.parquet

``experiment`` and ``task`` live in the directory names only (pyarrow adds them as columns).
A *batch* is one ``runs`` file and the ``history`` file of the same runs.

``runs`` table: one row per child run
-------------------------------------
=========================  ================  ===========================================
column                     type              from
=========================  ================  ===========================================
experiment, task           string            partition (task: param, else tag ``task``)
run_id, parent_run_id      string            run id, tag ``mlflow.parentRunId``
config_id, run_name        string            tag ``config_id``, run name
status                     string            RUNNING / FINISHED / FAILED / KILLED
start_time, end_time       timestamp[ms,UTC] run info (end_time null while running)
updated                    timestamp[ms,UTC] last update: max(start, end, newest metric)
arm                        string            tag ``arm`` (else derived from p/c_detach, damp)
seed, seq_len, epochs      int64             params (seed also tag ``seed``)
p_detach, c_detach, damp,  double            params (tags as fallback for p_detach, c_detach,
lr, clip_norm, threshold                     lr)
clip                       bool              param (tag fallback)
epochs_logged              int64             latest ``epoch`` bookkeeping metric
last_epoch                 int64             final ``last_epoch``, else ``epochs_logged``
best_val_acc, best_epoch,  double            final metrics (NaN: not logged = not finished
test_acc_at_best,                            or non-finite)
epochs_to_threshold,
diverged_epoch,
max_grad_norm
diverged, censored         bool              final metrics (null: not logged)
<other metric>             double            every other run-level metric, e.g.
                                             ``transfer_acc_T200``, ``test_cider``
<param>                    string            every other param, verbatim (``param.<name>``
                                             if the name is taken)
tag.<key>                  string            every other tag except ``mlflow.*``
=========================  ================  ===========================================

``history`` table: one row per (run_id, epoch)
----------------------------------------------
``experiment``, ``task`` (partition), ``run_id`` (string), ``epoch`` (int64, 1-based, the
MLflow step) and the contract's ``EPOCH_METRICS`` (double). The epochs are those
whose ``epoch`` bookkeeping marker MLflow holds; a metric missing at such an epoch was
non-finite (the study does not log those) and is NaN, as is MLflow's stand-in for
+/-inf (+/-1.8e308).

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

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from dashboards import dataset
from trainables.contract import (
    CHILD,
    CONFIG_ID_TAG,
    EPOCH_MARKER,
    EPOCH_METRICS,
    FINAL_METRICS,
    RUN_KIND_TAG,
    SEED_TAG,
    arm_of,
)

UNKNOWN_TASK = "unknown"
HISTORY_KEYS = (*EPOCH_METRICS, EPOCH_MARKER)
#: MLflow's SQL stores keep +/-inf as +/-1.797e308; anything this large was not finite.
_INF_STANDIN = 1e308
_PAGE_SIZE = 2_500
_BULK_RUNS = 100  # GetMetricHistoryBulkInterval: at most 100 run ids per request
_BULK_MAX_RESULTS = 2_500  # ... and at most 2,500 points per run (more are sampled)
_TS = pa.timestamp("ms", tz="UTC")

#: Final metrics that are 0/1 flags (read as booleans); the others are doubles.
_BOOL_FINALS = ("diverged", "censored")
_FLOAT_FINALS = tuple(m for m in FINAL_METRICS if m not in (*_BOOL_FINALS, "last_epoch"))
#: Typed columns of the runs table, in order (dynamic columns follow, sorted).
RUN_COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "parent_run_id": pa.string(),
    "config_id": pa.string(),
    "run_name": pa.string(),
    "status": pa.string(),
    "start_time": _TS,
    "end_time": _TS,
    "updated": _TS,
    "arm": pa.string(),
    "seed": pa.int64(),
    "p_detach": pa.float64(),
    "c_detach": pa.float64(),
    "damp": pa.float64(),
    "lr": pa.float64(),
    "clip": pa.bool_(),
    "clip_norm": pa.float64(),
    "seq_len": pa.int64(),
    "epochs": pa.int64(),
    "threshold": pa.float64(),
    "epochs_logged": pa.int64(),
    "last_epoch": pa.int64(),
    **{m: pa.float64() for m in _FLOAT_FINALS},
    **{m: pa.bool_() for m in _BOOL_FINALS},
}
HISTORY_COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "epoch": pa.int64(),
    **{key: pa.float64() for key in EPOCH_METRICS},
}
COLUMNS = {"runs": RUN_COLUMNS, "history": HISTORY_COLUMNS}
#: Params parsed into typed columns; the rest stay strings.
_TYPED_PARAMS = {
    "seed": "int",
    "p_detach": "float",
    "c_detach": "float",
    "damp": "float",
    "lr": "float",
    "clip": "bool",
    "clip_norm": "float",
    "seq_len": "int",
    "epochs": "int",
    "threshold": "float",
}
_TAG_FALLBACK = ("p_detach", "c_detach", "lr", "clip")
_NOT_RUN_METRICS = frozenset(HISTORY_KEYS) | {"last_epoch"}


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

        found, result.search_requests = _search_children(client, exp.experiment_id)
        rows, states = {}, {}
        for run in found:
            rows[run.info.run_id], states[run.info.run_id] = _run_row(run, result.problems)

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

        fetched, result.history_requests = _fetch_histories(
            client, need_history, {r: states[r]["epochs_logged"] for r in need_history}
        )
        result.fetched = list(need_history)
        old = dataset.read_partition(root, experiment, COLUMNS) if stored else None
        frames = _merge(old, rows, states, changed, need_history, fetched)
        state = {
            "experiment": experiment,
            "experiment_id": exp.experiment_id,
            "tracking_uri": tracking_uri,
            "exported_at": _now_ms(),
            "runs": states,
        }
        result.files_written = dataset.write_partition(
            root, experiment, frames, COLUMNS, state, max_rows_per_file=max_rows_per_file
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
        return dataset.load_frames(out_dir, experiment, COLUMNS)
    except dataset.DatasetError as err:
        raise ExportError(str(err)) from None


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
            out_dir, experiment, {"runs": runs, "history": history}, COLUMNS,
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


# --------------------------------------------------------------------------------------------
# Reading MLflow


def _search_children(client: MlflowClient, experiment_id: str) -> tuple[list[Run], int]:
    found: list[Run] = []
    token, requests = None, 0
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{RUN_KIND_TAG} = '{CHILD}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=_PAGE_SIZE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        requests += 1
        found.extend(page)
        token = page.token
        if not token:
            return found, requests


def _finite(value: float | None) -> float:
    if value is None or not math.isfinite(value) or abs(value) >= _INF_STANDIN:
        return math.nan
    return float(value)


def _parse(kind: str, text: str | None) -> Any:
    if text is None:
        return None
    text = text.strip()
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(text)
    if kind == "int":
        number = float(text)
        if not number.is_integer():
            raise ValueError(text)
        return int(number)
    return float(text)


def _run_row(run: Run, problems: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The runs-table row of one MLflow run, and its change-detection state."""
    info, params, tags = run.info, run.data.params, run.data.tags
    run_id = info.run_id
    # RunData.metrics holds values only; the timestamps and steps are on the protobuf.
    metrics = list(run.data.to_proto().metrics)
    latest = {m.key: m for m in metrics}
    row: dict[str, Any] = {
        "run_id": run_id,
        "parent_run_id": tags.get(MLFLOW_PARENT_RUN_ID),
        "config_id": tags.get(CONFIG_ID_TAG, params.get("config_id")),
        "run_name": info.run_name,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }
    for name, kind in _TYPED_PARAMS.items():
        text = params.get(name)
        if text is None and (name in _TAG_FALLBACK or name == "seed"):
            text = tags.get(SEED_TAG if name == "seed" else name)
        try:
            row[name] = _parse(kind, text)
        except ValueError:
            row[name] = None
            problems.append(f"run {run_id}: param {name}={text!r} is not a {kind}")
    derived = None
    if row.get("p_detach") is not None or row.get("c_detach") is not None:
        derived = arm_of(*(row.get(k) or 0.0 for k in ("p_detach", "c_detach", "damp")))
    row["arm"] = tags.get("arm") or derived
    marker = latest.get(EPOCH_MARKER)
    epochs_logged = int(marker.value) if marker is not None else 0
    row["epochs_logged"] = epochs_logged
    last = latest.get("last_epoch")
    row["last_epoch"] = int(last.value) if last is not None and math.isfinite(last.value) else (
        epochs_logged
    )  # fmt: skip
    for key in _FLOAT_FINALS:
        row[key] = _finite(latest[key].value) if key in latest else math.nan
    for key in _BOOL_FINALS:
        row[key] = bool(latest[key].value) if key in latest else None
    taken = set(RUN_COLUMNS) | {"experiment", "task"}
    for key, metric in latest.items():
        if key not in _NOT_RUN_METRICS and key not in taken:
            row[key] = _finite(metric.value)
    taken |= set(row)
    for key, value in params.items():
        if key in _TYPED_PARAMS or key in ("task", "config_id"):
            continue
        row[key if key not in taken else f"param.{key}"] = value
    for key, value in tags.items():
        if key.startswith("mlflow.") or key in (RUN_KIND_TAG, CONFIG_ID_TAG, SEED_TAG, "arm"):
            continue
        if key in _TAG_FALLBACK or key == "task":
            continue
        row[f"tag.{key}"] = value
    updated = max([info.start_time or 0, info.end_time or 0, *(m.timestamp for m in metrics)])
    row["updated"] = updated
    per_epoch = [latest[k] for k in HISTORY_KEYS if k in latest]
    history_key = [
        epochs_logged,
        max((m.step for m in per_epoch), default=0),
        max((m.timestamp for m in per_epoch), default=0),
    ]
    digest = hashlib.sha1(
        json.dumps(
            [
                sorted(params.items()),
                sorted(tags.items()),
                sorted((m.key, m.value, m.step, m.timestamp) for m in metrics),
            ],
            default=str,
        ).encode()
    ).hexdigest()
    state = {
        "task": params.get("task") or tags.get("task") or UNKNOWN_TASK,
        "status": info.status,
        "end_time": info.end_time,
        "updated": updated,
        "epochs_logged": epochs_logged,
        "history_key": history_key,
        "digest": digest,
    }
    return row, state


def _bulk_history(client: MlflowClient, run_ids: Sequence[str], key: str) -> Iterator[tuple]:
    """(run_id, key, step, value, timestamp) of `key` for up to 100 runs in one request.

    The one MLflow call without a public client method: the bulk history endpoint the MLflow
    UI uses (``GetMetricHistoryBulkInterval``), through the client's store: the REST store's
    endpoint for http(s) URIs, the SQL store's method for sqlite. Raises ``LookupError`` when
    the store has neither (the caller then asks run by run).
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if hasattr(store, "_call_endpoint") and hasattr(store, "get_host_creds"):
        from mlflow.protos.service_pb2 import GetMetricHistoryBulkInterval
        from mlflow.utils.proto_json_utils import message_to_json

        request = GetMetricHistoryBulkInterval(
            run_ids=list(run_ids), metric_key=key, max_results=_BULK_MAX_RESULTS
        )
        found = store._call_endpoint(GetMetricHistoryBulkInterval, message_to_json(request))
        found = found.metrics
    elif callable(getattr(store, "get_metric_history_bulk_interval", None)):
        found = store.get_metric_history_bulk_interval(
            run_ids=list(run_ids), metric_key=key, max_results=_BULK_MAX_RESULTS,
            start_step=None, end_step=None,
        )  # fmt: skip
    else:
        raise LookupError("this MLflow store has no bulk metric history")
    for m in found:
        yield m.run_id, key, m.step, m.value, m.timestamp


def _fetch_histories(
    client: MlflowClient, run_ids: Sequence[str], epochs_logged: Mapping[str, int]
) -> tuple[pd.DataFrame, int]:
    """The history rows of `run_ids` and the number of MLflow requests made for them."""
    points: list[tuple] = []  # (run_id, key, step, value, ts)
    requests = 0
    # The bulk call samples beyond 2,500 points per run: such long runs go one by one.
    bulk_ids = [r for r in run_ids if epochs_logged[r] < _BULK_MAX_RESULTS]
    try:
        for start in range(0, len(bulk_ids), _BULK_RUNS):
            chunk = bulk_ids[start : start + _BULK_RUNS]
            for key in HISTORY_KEYS:
                requests += 1
                points.extend(_bulk_history(client, chunk, key))
    except LookupError:
        points, requests, bulk_ids = [], 0, []
    in_bulk = set(bulk_ids)
    for run_id in (r for r in run_ids if r not in in_bulk):
        for key in HISTORY_KEYS:
            requests += 1
            points.extend(
                (run_id, key, m.step, m.value, m.timestamp)
                for m in client.get_metric_history(run_id, key)
            )
    long = pd.DataFrame(points, columns=["run_id", "key", "epoch", "value", "ts"])
    return _wide_history(long), requests


def _wide_history(long: pd.DataFrame) -> pd.DataFrame:
    """Long (run_id, key, epoch, value, ts) points -> one row per (run_id, epoch)."""
    if long.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in HISTORY_COLUMNS})
    long = long[long["epoch"] >= 1]
    # A retried log may have stored a value twice at one step: the newest one counts.
    long = long.sort_values("ts", kind="stable").drop_duplicates(
        ["run_id", "key", "epoch"], keep="last"
    )
    wide = long.pivot(index=["run_id", "epoch"], columns="key", values="value")
    if EPOCH_MARKER in wide.columns:
        # Epochs are the ones whose bookkeeping marker is in MLflow; runs without any marker
        # (not written by the study) keep every step they have.
        with_marker = wide.groupby(level="run_id")[EPOCH_MARKER].transform("count") > 0
        wide = wide[wide[EPOCH_MARKER].notna() | ~with_marker]
    wide = wide.reindex(columns=list(EPOCH_METRICS))
    values = np.array(wide.to_numpy(dtype=float))
    values[~np.isfinite(values) | (np.abs(values) >= _INF_STANDIN)] = np.nan
    out = pd.DataFrame(values, columns=list(EPOCH_METRICS))
    index = wide.index.to_frame(index=False)
    out.insert(0, "epoch", index["epoch"].to_numpy(dtype=np.int64))
    out.insert(0, "run_id", index["run_id"].to_numpy())
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)
