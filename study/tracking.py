"""Every MLflow write and read of a study, made from the driver process only.

One experiment per study; in it one parent run per configuration (`run_kind=parent`) and one
child run per (configuration, seed) (`run_kind=child`, nested with `mlflow.parentRunId`).
Everything here is idempotent, so a restarted driver can replay what it already sent:

- runs are found again by their tags (`config_id`, `seed`, `run_kind`), never duplicated;
- each logged epoch carries a bookkeeping metric `epoch` (value = step = epoch) in the same
  `log_batch` as its values. The SQL store commits a batch's metrics in one transaction (tags
  and params in others), so the latest `epoch` says exactly which epochs are in MLflow.

Non-finite values (a diverged run) are not logged: MLflow's SQL stores keep NaN but turn
+/-inf into +/-1.8e308 without a word, and NaN breaks the run page of the 3.x UI. An epoch
whose `epoch` marker exists but which lacks a value therefore had a non-finite one; the
run's final `diverged` metric says so too.

One file on purpose: every write the driver makes to MLflow is here, so what a restarted
driver may replay, and why that is harmless, can be checked in one reading.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from trainables.contract import (
    CHILD,
    CONFIG_ID_TAG,
    EPOCH_MARKER,
    PARENT,
    PARENT_EPOCH_METRICS,
    RUN_KIND_TAG,
    SEED_TAG,
    TERMINAL_STATUSES,
)
from trainables.locking import sqlite_init_lock
from trainables.tracking_uri import TrackingError, check_tracking_uri

_RESERVED_TAGS = frozenset({RUN_KIND_TAG, CONFIG_ID_TAG, SEED_TAG, MLFLOW_PARENT_RUN_ID})
_PAGE_SIZE = 1000


@dataclass(frozen=True)
class TrackedRun:
    """A parent or child run of the study as MLflow holds it (metrics: latest values)."""

    run_id: str
    run_kind: str
    config_id: str
    seed: int | None
    parent_run_id: str | None
    status: str
    last_epoch: int
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class StudyTracker:
    """The MLflow side of one study: one experiment, its parent and child runs.

    Call `start()` once before anything else. Pass `client` only to instrument the real
    client (e.g. count its requests); by default one is built for `uri`.
    """

    def __init__(self, uri: str, experiment_name: str, *, client: MlflowClient | None = None):
        if not isinstance(experiment_name, str) or not experiment_name.strip():
            raise TrackingError(
                f"experiment name must be a non-empty string, got {experiment_name!r}"
            )
        self.uri = uri
        self.experiment_name = experiment_name
        # Built in start(), after the URI check: a sqlite client creates its database (and
        # missing directories) as soon as it exists.
        self._mlflow: MlflowClient | None = client
        self._experiment_id: str | None = None
        self._parents: dict[str, str] = {}  # config_id -> run_id
        self._children: dict[tuple[str, int], str] = {}  # (config_id, seed) -> run_id
        self._kinds: dict[str, str] = {}  # run_id -> run_kind
        self._last_epoch: dict[str, int] = {}  # run_id -> last epoch held by MLflow
        # Runs found in MLflow at start(), not yet checked against the caller's params/tags.
        self._unchecked: dict[str, TrackedRun] = {}

    @property
    def _client(self) -> MlflowClient:
        if self._mlflow is None or self._experiment_id is None:
            raise RuntimeError("StudyTracker.start() has not been called")
        return self._mlflow

    @property
    def started(self) -> bool:
        """Whether `start()` has run (it is called once per process)."""
        return self._experiment_id is not None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            raise RuntimeError("StudyTracker.start() has not been called")
        return self._experiment_id

    def start(self, tags: Mapping[str, object] | None = None) -> str:
        """Check the URI, get or create the experiment (adding missing `tags`), load its runs."""
        check_tracking_uri(self.uri)
        # The client opens the store: a new sqlite file is created and migrated then, which
        # two processes at once would race through (alembic fails in one of them).
        with sqlite_init_lock(self.uri):
            if self._mlflow is None:
                self._mlflow = MlflowClient(tracking_uri=self.uri)
            experiment = self._mlflow.get_experiment_by_name(self.experiment_name)
        client = self._mlflow
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if experiment is None:
            self._experiment_id = client.create_experiment(self.experiment_name, tags=tags)
        elif experiment.lifecycle_stage != "active":
            raise TrackingError(
                f"experiment {self.experiment_name!r} on {self.uri} is deleted: restore it "
                "or choose another experiment name"
            )
        else:
            self._experiment_id = experiment.experiment_id
            # The first command that created the study stays recorded; only fill gaps.
            for key, value in tags.items():
                if key not in experiment.tags:
                    client.set_experiment_tag(self._experiment_id, key, value)
        for run in self.find_runs(run_kind=None):
            if run.run_kind == PARENT:
                self._parents.setdefault(run.config_id, run.run_id)
            else:
                self._children.setdefault((run.config_id, run.seed), run.run_id)
            self._kinds[run.run_id] = run.run_kind
            self._last_epoch[run.run_id] = run.last_epoch
            self._unchecked[run.run_id] = run
        return self._experiment_id

    def parent_run(
        self, config_id: str, params: Mapping[str, object], tags: Mapping[str, object]
    ) -> str:
        """Run id of the configuration's parent run, created (with `params`) if missing."""
        _check_config_id(config_id)
        run_id = self._parents.get(config_id)
        run_tags = {CONFIG_ID_TAG: config_id, RUN_KIND_TAG: PARENT}
        if run_id is None:
            run_id = self._create(PARENT, config_id, params, tags, run_tags)
            self._parents[config_id] = run_id
        else:
            self._reconcile(run_id, params, tags)
        return run_id

    def child_run(
        self,
        config_id: str,
        seed: int,
        params: Mapping[str, object],
        tags: Mapping[str, object],
    ) -> str:
        """Run id of the (configuration, seed) child, nested under the existing parent."""
        _check_config_id(config_id)
        seed_int = _as_int(seed)
        if seed_int is None or seed_int < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        seed = seed_int
        parent_id = self._parents.get(config_id)
        if parent_id is None:
            raise ValueError(f"no parent run for config_id {config_id!r}: call parent_run first")
        run_id = self._children.get((config_id, seed))
        if run_id is None:
            run_tags = {
                CONFIG_ID_TAG: config_id,
                RUN_KIND_TAG: CHILD,
                SEED_TAG: str(seed),
                MLFLOW_PARENT_RUN_ID: parent_id,
            }
            run_id = self._create(CHILD, f"{config_id}-s{seed}", params, tags, run_tags)
            self._children[(config_id, seed)] = run_id
        else:
            self._reconcile(run_id, params, tags)
        return run_id

    def last_epoch(self, run_id: str) -> int:
        """Last epoch MLflow holds for the run (0 if none); asks MLflow once per unknown run."""
        if run_id not in self._last_epoch:
            run = self._client.get_run(run_id)
            self._last_epoch[run_id] = _last_epoch(run)
            self._kinds[run_id] = run.data.tags.get(RUN_KIND_TAG, "")
        return self._last_epoch[run_id]

    def log_epochs(self, run_id: str, epochs: Sequence[Mapping[str, float]]) -> int:
        """Log per-epoch metrics at `step=epoch`; epochs MLflow already holds are skipped.

        Each dict has `epoch` (int, 1-based, consecutive) and metric values. Non-finite values
        are not logged (see the module docstring). Returns how many epochs were new.
        """
        last = self.last_epoch(run_id)
        new = _new_epochs(run_id, epochs, last)
        # One timestamp for the call: if a retried request had in fact been committed, the
        # store drops the copy (same key, step, timestamp and value).
        now = _now_ms()
        per_epoch = []
        for epoch, row in new:
            metrics = [Metric(EPOCH_MARKER, float(epoch), now, epoch)]
            for key, value in row.items():
                if key == EPOCH_MARKER:
                    continue
                value = _as_float(key, value, run_id)
                if math.isfinite(value):
                    metrics.append(Metric(key, value, now, epoch))
            if len(metrics) > MAX_METRICS_PER_BATCH:
                raise ValueError(
                    f"epoch {epoch} of run {run_id} has {len(metrics) - 1} values; "
                    f"at most {MAX_METRICS_PER_BATCH - 1} fit in one MLflow batch"
                )
            per_epoch.append((epoch, metrics))
        for batch_last_epoch, batch in _pack_epochs(per_epoch):
            try:
                self._client.log_batch(run_id, metrics=batch, synchronous=True)
            except Exception:
                # The batch may have been committed before the error: ask MLflow next time.
                del self._last_epoch[run_id]
                raise
            self._last_epoch[run_id] = batch_last_epoch
        return len(new)

    def log_parent_epochs(self, run_id: str, epochs: Sequence[Mapping[str, float]]) -> int:
        """Log seed-aggregate curves on a parent run, like `log_epochs`.

        Each dict has `epoch` and at least `val_acc_mean`, `val_acc_min`, `val_acc_max` and
        `seeds` (how many seeds the aggregate covers).
        """
        self.last_epoch(run_id)
        if self._kinds.get(run_id) != PARENT:
            raise ValueError(f"run {run_id} is not a parent run of this study")
        for row in epochs:
            missing = [key for key in PARENT_EPOCH_METRICS if key not in row]
            if missing:
                raise ValueError(
                    f"parent epoch {row.get(EPOCH_MARKER)!r} of run {run_id} lacks {missing}"
                )
        return self.log_epochs(run_id, epochs)

    def finish(
        self,
        run_id: str,
        final_metrics: Mapping[str, float],
        status: str = "FINISHED",
        tags: Mapping[str, object] | None = None,
    ) -> None:
        """Log the final metrics (non-finite ones skipped) and tags, then terminate the run.

        Only what differs from MLflow is written, so finishing twice is a no-op; finishing a
        FAILED run again as FINISHED (after a resume) updates it.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, got {status!r}")
        tags = {k: str(v) for k, v in (tags or {}).items()}
        _check_not_reserved(tags)
        if EPOCH_MARKER in final_metrics:
            raise ValueError(f"{EPOCH_MARKER!r} is bookkeeping, not a final metric")
        run = self._client.get_run(run_id)
        now = _now_ms()
        metrics = []
        for key, value in final_metrics.items():
            value = _as_float(key, value, run_id)
            if math.isfinite(value) and run.data.metrics.get(key) != value:
                metrics.append(Metric(key, value, now, 0))
        new_tags = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
        self._log_batches(run_id, metrics=metrics, tags=new_tags)
        if run.info.status != status:
            self._client.set_terminated(run_id, status=status)

    def find_runs(
        self, run_kind: str | None = CHILD, config_id: str | None = None
    ) -> list[TrackedRun]:
        """Runs of the study's experiment, oldest first: children, parents (or both for None)."""
        if run_kind not in (CHILD, PARENT, None):
            raise ValueError(f"run_kind must be 'child', 'parent' or None, got {run_kind!r}")
        filter_string = f"tags.{RUN_KIND_TAG} = '{run_kind}'" if run_kind else ""
        found, token = [], None
        while True:
            page = self._client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=_PAGE_SIZE,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            for run in page:
                tracked = _tracked(run)
                if tracked is None or (config_id is not None and tracked.config_id != config_id):
                    continue
                found.append(tracked)
            token = page.token
            if not token:
                return found

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` pairs of one metric of a run, in step order."""
        history = self._client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in history)

    def _create(
        self,
        kind: str,
        run_name: str,
        params: Mapping[str, object],
        tags: Mapping[str, object],
        run_tags: dict[str, str],
    ) -> str:
        caller_tags = {k: str(v) for k, v in tags.items()}
        _check_not_reserved(caller_tags)
        run = self._client.create_run(
            self.experiment_id, tags={**caller_tags, **run_tags}, run_name=run_name
        )
        run_id = run.info.run_id
        # Params are immutable in MLflow: they are written once, here.
        self._log_batches(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._kinds[run_id] = kind
        self._last_epoch[run_id] = 0
        return run_id

    def _reconcile(
        self, run_id: str, params: Mapping[str, object], tags: Mapping[str, object]
    ) -> None:
        """First reuse of a run found at start(): add the params a crash may have left out
        (a changed value is refused) and bring the caller's tags up to date."""
        found = self._unchecked.get(run_id)
        if found is None:
            return
        caller_tags = {k: str(v) for k, v in tags.items()}
        _check_not_reserved(caller_tags)
        missing = []
        for key, value in params.items():
            value = str(value)
            if key not in found.params:
                missing.append(Param(key, value))
            elif found.params[key] != value:
                raise TrackingError(
                    f"run {run_id} (config_id {found.config_id!r}) holds param "
                    f"{key}={found.params[key]!r}, now {value!r}: a config_id must always "
                    "name the same configuration"
                )
        new_tags = [RunTag(k, v) for k, v in caller_tags.items() if found.tags.get(k) != v]
        self._log_batches(run_id, params=missing, tags=new_tags)
        del self._unchecked[run_id]

    def _log_batches(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        while metrics or params or tags:
            batch_params = params[:MAX_PARAMS_TAGS_PER_BATCH]
            batch_tags = tags[:MAX_PARAMS_TAGS_PER_BATCH]
            room = min(
                MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(batch_params) - len(batch_tags)
            )
            batch_metrics = metrics[:room]
            self._client.log_batch(
                run_id,
                metrics=batch_metrics,
                params=batch_params,
                tags=batch_tags,
                synchronous=True,
            )
            metrics = metrics[len(batch_metrics) :]
            params = params[len(batch_params) :]
            tags = tags[len(batch_tags) :]


def _check_config_id(config_id: str) -> None:
    if not isinstance(config_id, str) or not config_id:
        raise ValueError(f"config_id must be a non-empty string, got {config_id!r}")


def _check_not_reserved(tags: Mapping[str, str]) -> None:
    clash = sorted(_RESERVED_TAGS.intersection(tags))
    if clash:
        raise ValueError(f"tags {clash} are set by the tracker, not by the caller")


def _new_epochs(
    run_id: str, epochs: Sequence[Mapping[str, float]], last: int
) -> list[tuple[int, Mapping[str, float]]]:
    """(epoch, record) after `last`, checked to continue it without gap or repeat."""
    previous = None
    new = []
    for row in epochs:
        epoch = _as_int(row.get(EPOCH_MARKER))
        if epoch is None or epoch < 1:
            raise ValueError(
                f"'epoch' must be an int >= 1, got {row.get(EPOCH_MARKER)!r} (run {run_id})"
            )
        if previous is not None and epoch != previous + 1:
            raise ValueError(f"epochs must be consecutive, got {epoch} after {previous}")
        previous = epoch
        if epoch > last:
            new.append((epoch, row))
    if new and new[0][0] != last + 1:
        raise ValueError(
            f"run {run_id} holds epochs up to {last}; epoch {new[0][0]} would leave a gap"
        )
    return new


def _pack_epochs(per_epoch: list[tuple[int, list[Metric]]]) -> Iterator[tuple[int, list[Metric]]]:
    """Whole epochs into batches of at most MAX_METRICS_PER_BATCH metrics.

    Never splitting an epoch keeps each epoch and its `epoch` marker in one transaction.
    """
    batch: list[Metric] = []
    batch_last = 0
    for epoch, metrics in per_epoch:
        if batch and len(batch) + len(metrics) > MAX_METRICS_PER_BATCH:
            yield batch_last, batch
            batch = []
        batch.extend(metrics)
        batch_last = epoch
    if batch:
        yield batch_last, batch


def _as_int(value: object) -> int | None:
    """`value` as an int if it is one (numpy integers too, bools not), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _as_float(key: str, value: object, run_id: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"metric {key!r} of run {run_id} must be a number, got {value!r}"
        ) from None


def _last_epoch(run: Run) -> int:
    value = run.data.metrics.get(EPOCH_MARKER)
    return int(value) if value is not None and math.isfinite(value) else 0


def _tracked(run: Run) -> TrackedRun | None:
    tags = run.data.tags
    kind = tags.get(RUN_KIND_TAG)
    if kind not in (PARENT, CHILD) or CONFIG_ID_TAG not in tags:
        return None
    seed = tags.get(SEED_TAG)
    return TrackedRun(
        run_id=run.info.run_id,
        run_kind=kind,
        config_id=tags[CONFIG_ID_TAG],
        seed=int(seed) if seed is not None else None,
        parent_run_id=tags.get(MLFLOW_PARENT_RUN_ID),
        status=run.info.status,
        last_epoch=_last_epoch(run),
        params=dict(run.data.params),
        tags=dict(tags),
        metrics=dict(run.data.metrics),
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
