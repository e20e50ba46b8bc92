"""The driver side of a study: Tune's trial events become MLflow runs (through
``study.tracking``), so workers never need MLflow access.

* trial start: the configuration's parent run and one child run per seed of the block exist
  (found again by tags after a restart, never duplicated);
* each result: every live member's epoch record goes to its child run, batched, each epoch
  exactly once (``StudyTracker.log_epochs`` skips what MLflow already holds);
* trial end: each child gets its final metrics and is terminated; a trial stopped early by a
  scheduler is marked ``censored`` (its finals come from the epochs it ran);
* when every seed of a configuration is done: the parent gets its seed-aggregate curves
  (mean, min, max validation accuracy per epoch) and its seed-robust summary.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np
from ray import tune

from study.searcher import PairedSeedSearcher, config_id, objective_value
from study.sequential import UNDECIDED
from study.tracking import StudyTracker
from trainables.config import RunConfig
from trainables.contract import (
    BASELINE_TAG,
    DECISION_METRIC_TAG,
    DECISION_TAG,
    EPOCH_METRICS,
    GATE_CHILD_METRICS,
    GATE_METRICS,
    RUN_TAGS,
    SCORE_METRIC,
    SEQUENTIAL_CHILD_METRICS,
    SEQUENTIAL_DECISIONS,
    SEQUENTIAL_METRICS,
    SEQUENTIAL_STOPS,
    STOP_TAG,
    TASK_EPOCH_METRICS,
    TERMINAL_STATUSES,
    VANILLA,
)
from trainables.seeds import stream_seeds


class MlflowStudyCallback(tune.Callback):
    def __init__(
        self,
        tracker: StudyTracker,
        base: RunConfig,
        seeds: list[int],
        study: str,
        seeds_per_trial: int,
        objective: str,
        sequential_key: str | None = None,
    ):
        self.tracker = tracker
        self.base = base
        self.seeds = list(seeds)
        self.study = study
        self.seeds_per_trial = seeds_per_trial
        self.objective = objective
        self.sequential_key = sequential_key  # --seeds auto: the searcher decides (link)
        self.searcher: PairedSeedSearcher | None = None  # the deciding searcher, see link()
        self._stopped_seen = 0
        self._children: dict[tuple[str, int], str] = {}
        self._blocks: dict[tuple[str, tuple[int, ...]], list[str]] = {}  # ensured run ids
        self.seconds = 0.0  # time spent in MLflow calls from Tune's event loop

    # -- pickling: Tune stores the callback with the experiment and uses that copy on
    # Tuner.restore. It travels without its tracker: where the study writes is what the
    # resuming command says (a moved server, a new tunnel port), never the pickled address,
    # so the resuming driver hands it its tracker (`bind`) before Tune calls setup(). ----

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["tracker"] = None
        state["searcher"] = None  # Tune saves the searcher itself; the driver links it again
        state["_children"], state["_blocks"], state["_stopped_seen"] = {}, {}, 0
        return state

    def bind(self, tracker: StudyTracker) -> None:
        """Write through ``tracker`` (the resuming driver's, for the same experiment)."""
        if tracker.experiment_name != self.study:
            raise ValueError(
                f"the callback of study {self.study!r} cannot write to {tracker.experiment_name!r}"
            )
        self.tracker = tracker

    def link(self, searcher: PairedSeedSearcher | None) -> None:
        """Read sequential outcomes from ``searcher``: the one in the Tuner the driver runs
        (``study.search_setup.paired_seed_searcher``), which Tune restores in place."""
        self.searcher = searcher

    def setup(self, **info):
        if self.tracker is None:
            raise RuntimeError("a restored study callback needs bind(tracker) before Tune starts")
        if self.sequential_key is not None and getattr(self, "searcher", None) is None:
            raise RuntimeError(
                "a --seeds auto study callback needs link(searcher) before Tune starts"
            )
        if not self.tracker.started:
            self.tracker.start()

    # -- runs -----------------------------------------------------------------------------

    def _tags(self, config: dict) -> dict[str, Any]:
        values = {**config, "task": self.base.task, "study": self.study}
        return {key: values[key] for key in RUN_TAGS}

    def ensure_runs(self, config: dict) -> list[str]:
        """Child run ids for a trial's block; the parent and children are created when
        missing (once per block and driver: every result of the trial comes through here)."""
        block = (config["config_id"], tuple(config["seeds"]))
        if block not in self._blocks:
            self._blocks[block] = self._create_runs(config)
        return self._blocks[block]

    def _create_runs(self, config: dict) -> list[str]:
        cid = config["config_id"]
        tags = self._tags(config)
        if config["arm"] != VANILLA:
            tags[BASELINE_TAG] = config_id(VANILLA, 0.0, float(config["lr"]), bool(config["clip"]))
        # Params name the configuration (immutable in MLflow); what changes from batch to
        # batch (the seeds of a nightly run, how they are packed) goes in tags.
        parent_params = {
            "task": self.base.task,
            "preset": self.base.preset,
            "arm": config["arm"],
            "p_detach": config["p_detach"],
            "lr": config["lr"],
            "clip": config["clip"],
            "clip_norm": self.base.clip_norm,
            "epochs": self.base.epochs,
            "seq_len": self.base.seq_len,
            "hidden_size": self.base.hidden_size,
        }
        planned = ",".join(map(str, self.seeds))
        tags = {
            **tags,
            "seeds": f"auto (up to {len(self.seeds)})" if self.sequential_key else planned,
            "seeds_per_trial": self.seeds_per_trial,
            "objective": self.objective,
        }
        self.tracker.parent_run(cid, parent_params, tags)
        run_ids = []
        for seed in config["seeds"]:
            key = (cid, int(seed))
            if key not in self._children:
                run = self.base.replace(
                    p_detach=float(config["p_detach"]),
                    lr=float(config["lr"]),
                    clip=bool(config["clip"]),
                ).to_dict()
                run.pop("seeds")
                params = {
                    **run,
                    "seed": int(seed),
                    **stream_seeds(int(seed)),
                    "config_id": cid,
                    "members_per_trial": len(config["seeds"]),
                    "objective": self.objective,
                }
                self._children[key] = self.tracker.child_run(cid, int(seed), params, tags)
            run_ids.append(self._children[key])
        return run_ids

    # -- Tune events ----------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        with self._timed():
            self.ensure_runs(trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        with self._timed():
            self._log_result(trial, result)

    def _log_result(self, trial, result) -> None:
        run_ids = self.ensure_runs(trial.config)
        for run_id, record in zip(run_ids, result.get("members") or [], strict=False):
            if record is not None:
                row = {"epoch": record["epoch"], **{k: record[k] for k in EPOCH_METRICS}}
                row |= {k: record[k] for k in TASK_EPOCH_METRICS if k in record}
                self.tracker.log_epochs(run_id, [row])

    def on_trial_complete(self, iteration, trials, trial, **info):
        with self._timed():
            self._complete(trial)

    def _complete(self, trial) -> None:
        config, result = trial.config, trial.last_result or {}
        run_ids = self.ensure_runs(config)
        # Without finals the trial was stopped early by a scheduler: censored, and scored on
        # the epochs it ran (the running summary reported with its last epoch).
        finals, censored = result.get("finals"), 0.0
        if finals is None:
            finals, censored = result.get("summary") or [{} for _ in run_ids], 1.0
        for run_id, member in zip(run_ids, finals, strict=True):
            final = {key: v for key, v in member.items() if key != "seed"}
            final["censored"] = censored
            where = {"node_id": result.get("node_id", ""), "tune_trial_id": trial.trial_id}
            self.tracker.finish(run_id, final, "FINISHED", tags=where)
        self.maybe_finish_parent(config)

    def on_trial_error(self, iteration, trials, trial, **info):
        with self._timed():
            where = {
                "node_id": (trial.last_result or {}).get("node_id", ""),
                "tune_trial_id": trial.trial_id,
            }
            for run_id in self.ensure_runs(trial.config):
                self.tracker.finish(run_id, {}, "FAILED", tags=where)
            self.maybe_finish_parent(trial.config)

    @contextlib.contextmanager
    def _timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    # -- aggregates -----------------------------------------------------------------------

    def maybe_finish_parent(self, config: dict) -> None:
        """Once every seed of the configuration is done: aggregate curves and summary. With
        ``--seeds auto``: every configuration the searcher has stopped since the last call,
        with its decision (a look can stop a configuration other than the trial's own)."""
        if self.sequential_key is not None:
            searcher = self.searcher
            while self._stopped_seen < len(searcher.stopped):
                cid = searcher.stopped[self._stopped_seen]
                self._stopped_seen += 1
                outcome = searcher.outcome(cid)
                if outcome is not None:
                    self._finish_parent(cid, outcome)
            return
        cid = config["config_id"]
        children = self.tracker.find_runs("child", config_id=cid)
        done = [c for c in children if c.status in TERMINAL_STATUSES]  # every batch of seeds so far
        if sum(c.seed in self.seeds for c in done) < len(self.seeds):
            return
        self._finish_parent(cid, None, done)

    def _finish_parent(self, cid: str, outcome: dict | None, done: list | None = None) -> None:
        if done is None:
            seeds = set(outcome["seeds"])
            children = self.tracker.find_runs("child", config_id=cid)
            done = [c for c in children if c.status in TERMINAL_STATUSES and c.seed in seeds]
        curves: dict[int, list[float]] = {}
        for child in done:
            for step, value in self.tracker.metric_history(child.run_id, "val_acc"):
                curves.setdefault(step, []).append(value)
        rows = [
            {
                "epoch": epoch,
                "val_acc_mean": float(np.mean(v)),
                "val_acc_min": float(np.min(v)),
                "val_acc_max": float(np.max(v)),
                "seeds": float(len(v)),
            }
            for epoch, v in sorted(curves.items())
        ]
        parent = self.tracker.parent_run(cid, {}, {})
        self.tracker.log_parent_epochs(parent, rows)
        best = [c.metrics.get("best_val_acc", math.nan) for c in done]
        score = [c.metrics.get(SCORE_METRIC, math.nan) for c in done]
        test = [c.metrics.get("test_acc_at_best", math.nan) for c in done]
        diverged = [c.metrics.get("diverged", 0.0) for c in done]
        finals = {
            # No seed measured anything (every child failed): no objective, not 0.0.
            "objective": objective_value(score, self.objective)
            if any(c.status != "FAILED" for c in done)
            else math.nan,
            "best_val_score_mean": _nanmean(score),
            "best_val_acc_mean": _nanmean(best),
            "best_val_acc_min": float(np.nanmin(best)) if np.isfinite(best).any() else math.nan,
            "test_acc_at_best_mean": _nanmean(test),
            "diverged_rate": float(np.mean(diverged)),
            "seeds_done": float(len(done)),
            "seeds_failed": float(sum(c.status != "FINISHED" for c in done)),
        }
        status = "FINISHED" if all(c.status == "FINISHED" for c in done) else "FAILED"
        tags = {}
        if outcome is not None:
            finals["seeds_used"] = float(len(outcome["seeds"]))
            for key in (*SEQUENTIAL_METRICS, *GATE_METRICS):
                value = outcome.get(key)
                if isinstance(value, int | float) and key != "seeds_used":
                    finals[key] = float(value)
            tags = {
                DECISION_TAG: outcome.get("decision", UNDECIDED),
                STOP_TAG: outcome["reason"],
                DECISION_METRIC_TAG: outcome["metric"],
                "seeds": ",".join(map(str, outcome["seeds"])),
            }
            if "pair_seconds_per_seed" in outcome:
                finals["pair_seconds"] = outcome["pair_seconds_per_seed"] * len(outcome["seeds"])
            child_finals = _child_outcome({**outcome, **finals, **tags})
            for child in done:  # the report reads child runs: each carries the outcome too
                self.tracker.finish(child.run_id, child_finals, child.status)
        self.tracker.finish(parent, finals, status, tags=tags)


def _child_outcome(outcome: dict) -> dict[str, float]:
    out = {}
    for metric, key in (SEQUENTIAL_CHILD_METRICS | GATE_CHILD_METRICS).items():
        value = outcome.get(key)
        if key == "decision":
            value = SEQUENTIAL_DECISIONS.get(value)
        elif key == "reason":
            value = SEQUENTIAL_STOPS.get(value)
        if isinstance(value, int | float) and math.isfinite(value):
            out[metric] = float(value)
    return out


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
