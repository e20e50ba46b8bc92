"""The Parquet dataset the reports read: per experiment a ``runs`` and a ``history`` table,
hive-partitioned by task, written and read with ``pyarrow.dataset``.

Layout (names URI-encoded in directory names; pyarrow decodes them)::

    <root>/experiment=<name>/runs/task=<task>/part-<i>.parquet
    <root>/experiment=<name>/history/task=<task>/part-<i>.parquet
    <root>/experiment=<name>/state.json        what the export knows of each run

An experiment's directory is replaced as a whole: it is built in ``<root>/.staging/`` and
renamed into place (:func:`write_partition`), so a reader sees the old dataset or the new one,
never half of either, and an interrupted write leaves only a staging directory that the next
write sweeps away. Writers of one experiment are serialised with a lock file.

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
MLflow step) and the contract's ``EPOCH_METRICS`` and ``TASK_EPOCH_METRICS`` (double). The
epochs are those whose ``epoch`` bookkeeping marker MLflow holds; a metric missing at such an
epoch was non-finite (the study does not log those) and is NaN, as is MLflow's stand-in for
+/-inf (+/-1.8e308).

"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import filelock
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from trainables.contract import EPOCH_METRICS, FINAL_METRICS, TASK_EPOCH_METRICS

FORMAT_VERSION = 3  # 3: the text tasks' per-epoch metrics in history
TABLES = ("runs", "history")
STATE_FILE = "state.json"
_STAGING = ".staging"
_PREFIX = "experiment="
_TASK_PARTITIONING = ds.partitioning(pa.schema([("task", pa.string())]), flavor="hive")
_TS = pa.timestamp("ms", tz="UTC")

#: Final metrics that are 0/1 flags (read as booleans); the others are doubles.
BOOL_FINALS = ("diverged", "censored")
FLOAT_FINALS = tuple(m for m in FINAL_METRICS if m not in (*BOOL_FINALS, "last_epoch"))
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
    **{m: pa.float64() for m in FLOAT_FINALS},
    **{m: pa.bool_() for m in BOOL_FINALS},
}
HISTORY_COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "epoch": pa.int64(),
    **{key: pa.float64() for key in (*EPOCH_METRICS, *TASK_EPOCH_METRICS)},
}
COLUMNS = {"runs": RUN_COLUMNS, "history": HISTORY_COLUMNS}


class DatasetError(ValueError):
    """A problem the user can fix: no dataset, an unreadable one."""


def experiment_dir(root: Path, experiment: str) -> Path:
    return Path(root) / f"{_PREFIX}{quote(str(experiment), safe='')}"


def experiments(root: str | os.PathLike) -> list[str]:
    """Names of the experiments with a committed dataset under ``root``."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(
        unquote(d.name[len(_PREFIX) :])
        for d in base.iterdir()
        if d.name.startswith(_PREFIX) and (d / STATE_FILE).is_file()
    )


def read_state(root: Path, experiment: str) -> dict[str, Any] | None:
    """The committed state of an experiment's dataset, or None when there is none."""
    path = experiment_dir(root, experiment) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise DatasetError(f"dataset state {path} is not valid JSON: {err}") from None
    if state.get("format") != FORMAT_VERSION:
        raise DatasetError(
            f"dataset {path.parent} has format {state.get('format')!r}, expected "
            f"{FORMAT_VERSION}: export into a fresh directory"
        )
    return state


@contextlib.contextmanager
def locked(root: Path, experiment: str) -> Iterator[None]:
    """Hold the experiment's write lock; a crashed write left before is cleaned up first."""
    staging = Path(root) / _STAGING
    staging.mkdir(parents=True, exist_ok=True)
    name = quote(str(experiment), safe="")
    with filelock.FileLock(staging / f"{name}.lock"):
        _recover(Path(root), experiment)
        yield


def _staged(root: Path, experiment: str, kind: str) -> Path:
    return root / _STAGING / f"{quote(str(experiment), safe='')}.{uuid.uuid4().hex}.{kind}"


def _recover(root: Path, experiment: str) -> None:
    """After a crash: put back a replaced dataset the crash left aside, sweep the rest."""
    final = experiment_dir(root, experiment)
    name = quote(str(experiment), safe="")
    for leftover in sorted((root / _STAGING).glob(f"{name}.*.*")):
        if leftover.suffix == ".old" and not final.exists():
            os.rename(leftover, final)
        elif leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _typed(values: pd.Series | None, kind: pa.DataType, n: int) -> pa.Array:
    if values is None or values.isna().all():
        return pa.nulls(n, type=kind)
    if pa.types.is_timestamp(kind) and not pd.api.types.is_datetime64_any_dtype(values):
        values = pd.to_datetime(values, unit="ms", utc=True)
    return pa.array(values, from_pandas=True).cast(kind)


def _table(frame: pd.DataFrame, fixed: Mapping[str, pa.DataType]) -> pa.Table:
    """An Arrow table with the typed ``fixed`` columns first (present even if empty), then
    every other column that holds a value, sorted; ``task`` stays (it is the partition)."""
    others = sorted(
        c for c in frame.columns if c not in fixed and c != "task" and frame[c].notna().any()
    )
    n = len(frame)
    arrays = [_typed(frame.get(name), kind, n) for name, kind in fixed.items()]
    rest = pa.Table.from_pandas(frame[others], preserve_index=False) if others else None
    names = [*fixed, *others, "task"]
    arrays += [rest[c] for c in others] if rest is not None else []
    tasks = frame["task"].astype(str) if "task" in frame else pd.Series([], dtype=str)
    arrays.append(pa.array(tasks, type=pa.string()))
    return pa.Table.from_arrays(arrays, names=names)


def _write_table(path: Path, table: pa.Table, max_rows_per_file: int) -> None:
    ds.write_dataset(
        table,
        path,
        format="parquet",
        partitioning=_TASK_PARTITIONING,
        basename_template="part-{i}.parquet",
        max_rows_per_file=max_rows_per_file,
        max_rows_per_group=min(max_rows_per_file, 1 << 20),
        file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
    )


def _commit(staging: Path, final: Path, old: Path) -> None:
    """Swap the staged dataset into place (the commit point)."""
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def write_partition(
    root: str | os.PathLike,
    experiment: str,
    frames: Mapping[str, pd.DataFrame],
    state: Mapping[str, Any],
    *,
    max_rows_per_file: int = 1_000_000,
) -> int:
    """Replace an experiment's dataset with ``frames`` (``runs`` and ``history``, each with a
    ``task`` column) and ``state``; call it holding :func:`locked`. Returns files written."""
    root = Path(root)
    staging = _staged(root, experiment, "new")
    staging.mkdir(parents=True)
    for name in TABLES:
        table = _table(frames[name], COLUMNS[name])
        _write_table(staging / name, table, max_rows_per_file)
    (staging / STATE_FILE).write_text(
        json.dumps({**state, "format": FORMAT_VERSION}, separators=(",", ":"), sort_keys=True),
        encoding="utf-8",
    )
    written = sum(1 for _ in staging.rglob("*.parquet"))
    _commit(staging, experiment_dir(root, experiment), _staged(root, experiment, "old"))
    return written


def _read(path: Path, fixed: Mapping[str, pa.DataType]) -> pd.DataFrame:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else []
    if not files:
        empty = pa.schema([("task", pa.string()), *fixed.items()]).empty_table()
        return empty.to_pandas()
    schema = pa.unify_schemas([_schema(f) for f in files], promote_options="permissive")
    schema = schema.append(pa.field("task", pa.string()))
    dataset = ds.dataset(
        [str(f) for f in files],
        schema=schema,
        format="parquet",
        partitioning=_TASK_PARTITIONING,
        partition_base_dir=str(path),
    )
    return dataset.to_table().to_pandas()


def _schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DatasetError(
            f"dataset file {path} is unreadable (corrupt or truncated: {err}): delete "
            f"{path.parent} and export again"
        ) from None


def read_partition(root: str | os.PathLike, experiment: str) -> dict[str, pd.DataFrame]:
    """An experiment's ``runs`` and ``history`` frames (with ``experiment`` and ``task``)."""
    base = experiment_dir(Path(root), experiment)
    out = {}
    for name in TABLES:
        frame = _read(base / name, COLUMNS[name])
        frame.insert(0, "experiment", experiment)
        leading = ["experiment", "task", *COLUMNS[name]]
        out[name] = frame[leading + [c for c in frame.columns if c not in leading]]
    return out


def load_frames(
    root: str | os.PathLike, experiment: str | Sequence[str] | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(runs, history)`` of one experiment, several, or every one under ``root``."""
    root = Path(root)
    if experiment is None:
        names = experiments(root)
        if not names:
            raise DatasetError(f"no exported dataset in {root}")
    else:
        names = [experiment] if isinstance(experiment, str) else list(dict.fromkeys(experiment))
    for attempt in range(3):
        try:
            parts = []
            for name in names:
                if not experiment_dir(root, name).exists():
                    with locked(root, name):  # a write that died mid-swap is put back
                        pass
                if read_state(root, name) is None:
                    raise DatasetError(f"no exported dataset of experiment {name!r} in {root}")
                parts.append(read_partition(root, name))
            break
        except FileNotFoundError:
            # A concurrent export swapped the experiment's directory while we read it.
            if attempt == 2:
                raise
    frames = [pd.concat([p[t] for p in parts], ignore_index=True, sort=False) for t in TABLES]
    return frames[0], frames[1]
