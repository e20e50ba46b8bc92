"""The Parquet dataset the reports read: per experiment a ``runs`` and a ``history`` table,
hive-partitioned by task, written and read with ``pyarrow.dataset``.

Layout (names URI-encoded in directory names; pyarrow decodes them)::

    <root>/experiment=<name>/runs/task=<task>/part-<i>.parquet
    <root>/experiment=<name>/history/task=<task>/part-<i>.parquet
    <root>/experiment=<name>/state.json        what the export knows of each run

An experiment's directory is replaced as a whole: it is built in ``<root>/.staging/`` and
renamed into place (:func:`write_partition`), so a reader sees the old dataset or the new one,
never half of either, and an interrupted write leaves only a staging directory that the next
write sweeps away. Writers of one experiment are serialised with a lock file. The columns are
documented in :mod:`dashboards.export`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

FORMAT_VERSION = 2
TABLES = ("runs", "history")
STATE_FILE = "state.json"
_STAGING = ".staging"
_PREFIX = "experiment="
_TASK_PARTITIONING = ds.partitioning(pa.schema([("task", pa.string())]), flavor="hive")


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
    with open(staging / f"{name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            _recover(Path(root), experiment)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    columns: Mapping[str, Mapping[str, pa.DataType]],
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
        table = _table(frames[name], columns[name])
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
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    schema = schema.append(pa.field("task", pa.string()))
    dataset = ds.dataset(
        [str(f) for f in files],
        schema=schema,
        format="parquet",
        partitioning=_TASK_PARTITIONING,
        partition_base_dir=str(path),
    )
    return dataset.to_table().to_pandas()


def read_partition(
    root: str | os.PathLike, experiment: str, columns: Mapping[str, Mapping[str, pa.DataType]]
) -> dict[str, pd.DataFrame]:
    """An experiment's ``runs`` and ``history`` frames (with ``experiment`` and ``task``)."""
    base = experiment_dir(Path(root), experiment)
    out = {}
    for name in TABLES:
        frame = _read(base / name, columns[name])
        frame.insert(0, "experiment", experiment)
        leading = ["experiment", "task", *columns[name]]
        out[name] = frame[leading + [c for c in frame.columns if c not in leading]]
    return out


def load_frames(
    root: str | os.PathLike,
    experiment: str | Sequence[str] | None,
    columns: Mapping[str, Mapping[str, pa.DataType]],
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
                parts.append(read_partition(root, name, columns))
            break
        except FileNotFoundError:
            # A concurrent export swapped the experiment's directory while we read it.
            if attempt == 2:
                raise
    frames = [pd.concat([p[t] for p in parts], ignore_index=True, sort=False) for t in TABLES]
    return frames[0], frames[1]
