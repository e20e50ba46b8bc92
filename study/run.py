"""The study service: ``python study/run.py --task pmnist``.

Optuna (through Ray Tune's ``OptunaSearch``) proposes configurations (p_detach, lr,
clipping); every configuration runs on the same seeds, in blocks of K seed members per Tune
trial, next to its vanilla (p = 0) baseline on the same seeds; the driver logs everything to
MLflow (one experiment per study, a parent run per configuration, a child run per seed).
Without ``--address`` the study runs on an embedded local Ray; ``--address auto`` joins a
cluster (see ``ray_cluster.yaml``). A killed study continues with ``--resume``.

Validation comes first: a bad option, an unreachable tracking server, missing data or a
study another driver is running exits with code 2 and a one-line message before Ray starts or
anything is written to MLflow. Later failures exit 1 with one line (the cause, the resume
command, the log holding the traceback); Ctrl-C exits 130 once Tune has saved its state.
Every case and what the user sees: ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from study.failures import (
    failure_cause,
    log_paths,
    resume_command,
    save_traceback,
    send_library_logs_to,
)
from study.options import OptionsError, StudyOptions, options_from_args
from study.preflight import StudyError, preflight
from study.search_setup import (
    build_searcher,
    max_concurrent,
    paired_seed_searcher,
    relocate_searcher,
    restored_search_alg,
)
from trainables.locking import LockHeld, StudyLock
from trainables.tracking_uri import TrackingError

__all__ = ["StudyOptions", "StudyResult", "main", "run_study"]


@dataclass
class StudyResult:
    experiment: str
    experiment_dir: str
    tracking_uri: str
    configurations: list[dict]
    errors: int
    fit_seconds: float  # wall time of Tune's loop (trials + orchestration)
    trial_seconds: list[float]  # each trial's own time (Tune's time_total_s)
    concurrency: int
    logging_seconds: float  # driver time spent writing to MLflow
    confirmation: dict | None = None  # the selected configuration on fresh seeds (confirm.py)
    causes: list[str] = field(default_factory=list)  # failed trials' causes a retry cannot fix


#: Set (unless the user set them) before Ray is imported, by the entry points only.
RUNTIME_ENVIRONMENT = {
    # No hidden network traffic: Ray's usage stats and MLflow's telemetry stay off.
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # MLflow is the record
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic table honours our columns
    "RAY_DEDUP_LOGS": "0",
    # Per-epoch checkpoints make Tune snapshot often; that is intended, not worth a warning.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # The bounded wait for an unreachable MLflow server: each request is retried 5 times
    # with backoff 2, 4, 8, 16, 32 s (about a minute, plus 30 s timeouts), so an outage of
    # tens of seconds is ridden out and a longer one ends the study with exit 1 and the resume
    # command, instead of MLflow's default of over four minutes per request.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def set_runtime_environment() -> None:
    """The study's process settings (:data:`RUNTIME_ENVIRONMENT`); the user's values win."""
    for key, value in RUNTIME_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


class StudyInterrupted(Exception):
    """Ctrl-C (SIGINT): Tune has saved its state; the study continues with ``--resume``."""


def _init_ray(options: StudyOptions) -> None:
    import ray

    if ray.is_initialized():
        return
    if options.address in (None, "", "local"):
        ray.init(address="local", include_dashboard=False, log_to_driver=options.verbose >= 2)
    else:
        ray.init(address=options.address, log_to_driver=options.verbose >= 2)


def _reporter(options: StudyOptions):
    from ray.tune import CLIReporter

    return CLIReporter(
        parameter_columns={
            "arm": "arm",
            "p_detach": "p",
            "lr": "lr",
            "clip": "clip",
            "seeds": "seeds",
        },
        metric_columns={"epoch": "epoch", "val_acc_mean": "mean val acc"},
        max_report_frequency=30,
        max_progress_rows=30,
    )


def run_study(
    options: StudyOptions, *, checked: bool = False, log_to: Path | None = None
) -> StudyResult:
    """Run (or resume) a study. Problems the user can fix raise ``OptionsError``,
    ``StudyError``, ``TrackingError`` or ``ValueError`` before anything starts
    (``checked=True``: the caller already ran ``preflight``)."""
    set_runtime_environment()
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from study.callback import MlflowStudyCallback
    from study.mlflow_ui import describe_parents, experiment_tags, runs_location
    from study.summary import log_family, ranked_summary
    from study.tracking import StudyTracker
    from study.trainable import LOCATIONS, FailDeterministicErrorsOnce, train_block

    if not checked:
        preflight(options)
    base = options.run_config()
    local_storage = "://" not in options.storage_dir
    if local_storage:  # snapshots are cheap here: keep Tune's own record fresh
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    _init_ray(options)
    if log_to is not None and options.verbose < 2:  # verbose 2 shows everything, as it comes
        send_library_logs_to(log_to)
    # Where things are (the data) goes to every trial from this command line, also to the
    # trials a resumed study restores with the run options saved when they were created.
    locations = {key: getattr(base, key) for key in LOCATIONS}
    trainable = tune.with_resources(
        tune.with_parameters(train_block, locations=locations),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial, **options.resources},
    )
    tracker = StudyTracker(options.tracking_uri, options.experiment_name)
    tracker.start(
        tags={
            "study.task": options.task,
            "study.preset": options.preset,
            "study.search": options.search,
            "study.command": " ".join(sys.argv),
            **experiment_tags(),  # the MLflow UI opens the study on its runs
        }
    )
    callback = MlflowStudyCallback(
        tracker,
        base,
        seeds=options.seed_values,
        study=options.experiment_name,
        seeds_per_trial=options.seeds_per_trial,
        objective=options.objective,
        sequential_key=options.experiment_dir if options.sequential else None,
    )
    base_dict = base.to_dict()
    base_dict.pop("seeds")
    param_space = {
        "run": base_dict,
        "cpus_per_trial": options.cpus_per_trial,
        "objective": options.objective,
    }
    if options.resume:
        from study.tune_state import mend_tune_state

        for note in mend_tune_state(options.experiment_dir, options.optuna_storage_path):
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        # Tune keeps only the keys of the param space in its saved state: a trial created
        # after the restore (a configuration not started before) would get the searcher's
        # suggestion alone, without the run options (seen after a disk filled up).
        tuner = tune.Tuner.restore(
            options.experiment_dir, trainable, resume_errored=True, param_space=param_space
        )
        callback = _restored_callback(tuner, callback)
        relocate_searcher(tuner, options)
        callback.link(paired_seed_searcher(restored_search_alg(tuner)))
    else:
        scheduler = None
        if options.asha:
            scheduler = ASHAScheduler(
                time_attr="epoch",
                metric="val_acc_mean",
                mode="max",
                max_t=base.epochs,
                grace_period=min(options.asha_grace, base.epochs),
            )
        search_alg = build_searcher(options)
        callback.link(paired_seed_searcher(search_alg))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=-1,
                reuse_actors=True,  # a fresh process per trial costs seconds of imports
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=options.run_name,
                storage_path=options.tune_root,
                callbacks=[callback, FailDeterministicErrorsOnce(), JsonLoggerCallback()],
                progress_reporter=_reporter(options),
                verbose=options.verbose,
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                # Tune snapshots its state to a staging folder and copies it to storage every
                # sync_period: locally a copy is cheap, and a killed driver then resumes from
                # a record at most ~2 s old (cloud storage keeps Tune's default).
                sync_config=tune.SyncConfig(sync_period=2 if local_storage else 300),
            ),
        )
        _save_options(options)
    started = time.perf_counter()
    with _interrupt_watch() as interrupted:
        results = tuner.fit()
    if interrupted():
        raise StudyInterrupted(options.experiment_dir)
    fit_seconds = time.perf_counter() - started
    errors = sum(1 for r in results if r.error is not None)
    causes = sorted({c for r in results if r.error and (c := _deterministic_cause(r))})
    trial_seconds = [float((r.metrics or {}).get("time_total_s", 0.0)) for r in results]
    configurations, text = ranked_summary(
        tracker, correction=options.correction, alpha=options.alpha
    )
    log_family(tracker, configurations)
    confirmation = None
    if options.search != "fixed":  # a fixed batch selects nothing: its family is corrected
        from study.confirm import confirm_selected

        confirmation, more = confirm_selected(options, tracker, configurations, run_study)
        text = f"{text}\n\n{more}" if more else text
        errors += confirmation.get("errors", 0) if confirmation else 0
    describe_parents(tracker, configurations, options.task, options.preset)
    if options.verbose:
        print(text)
        print(f"\nMLflow: {runs_location(options.tracking_uri, tracker.experiment_id)}")
        if "://" not in options.optuna_storage_path:
            print(f"Optuna: optuna-dashboard {options.optuna_storage_path}")
        print(f"Tune:   {options.experiment_dir}")
    return StudyResult(
        experiment=options.experiment_name,
        experiment_dir=options.experiment_dir,
        tracking_uri=options.tracking_uri,
        configurations=configurations,
        errors=errors,
        causes=causes,
        fit_seconds=fit_seconds,
        trial_seconds=trial_seconds,
        concurrency=max_concurrent(options),
        logging_seconds=callback.seconds,
        confirmation=confirmation,
    )


def _deterministic_cause(result) -> str | None:
    """What a trial failed on when a retry could not fix it (its last report says)."""
    from study.trainable import DETERMINISTIC

    return (result.metrics or {}).get(DETERMINISTIC)


def _restored_callback(tuner, fresh):
    """The study callback Tune restored with the experiment, bound to this driver's tracker
    (the resuming command's tracking URI). Tuner.restore takes no run config, and the
    restored one is only reachable through the Tuner's local implementation."""
    from study.callback import MlflowStudyCallback

    local = getattr(tuner, "_local_tuner", None)
    callbacks = local.get_run_config().callbacks if local is not None else None
    restored = [c for c in callbacks or [] if isinstance(c, MlflowStudyCallback)]
    if len(restored) != 1:
        raise StudyError(
            "--resume: the saved study has no MLflow callback to resume (saved by another "
            "version of this program?)"
        )
    # Its run options stay the ones the study started with: they are the child runs' params
    # (immutable), where the data was then; the trials read it where this command says.
    restored[0].bind(fresh.tracker)
    return restored[0]


class _interrupt_watch:
    """Whether Tune caught a Ctrl-C during ``fit``. Tune installs its own SIGINT handler
    (save the state one last time, then return normally) and on the first signal puts back
    the handler it found: ours, which is therefore in place after ``fit`` only if a signal
    came. A second Ctrl-C reaches ours and stops at once (KeyboardInterrupt)."""

    #: Tune's own lines on an interruption; the driver prints one line of its own instead.
    TUNE_LINES = ("Stop signal received", "Experiment has been interrupted", "Trials did not")

    def __enter__(self):
        def on_sigint(signum, frame):
            raise KeyboardInterrupt

        self._handler = on_sigint
        self._before = signal.signal(signal.SIGINT, on_sigint)
        self._fired = False
        self._logger = logging.getLogger("ray.tune.tune")
        self._logger.addFilter(self._quiet)
        return lambda: self._fired

    def _quiet(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.TUNE_LINES)

    def __exit__(self, *exc):
        self._fired = signal.getsignal(signal.SIGINT) is self._handler
        signal.signal(signal.SIGINT, self._before)
        self._logger.removeFilter(self._quiet)


def _trial_name(trial) -> str:
    """``<config_id>_b<block>_<trial id>``: readable in the table and on disk."""
    config = trial.config
    return f"{config.get('config_id', 'trial')}_b{config.get('block', 0)}_{trial.trial_id}"


def _save_options(options: StudyOptions) -> None:
    """The study's options beside the Tune experiment, for people reading it later."""
    if "://" in options.experiment_dir:
        return
    path = Path(options.experiment_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "study_options.json").write_text(json.dumps(options.to_dict(), indent=1))


def main(argv: list[str] | None = None) -> int:
    prog = "python study/run.py"
    argv = list(sys.argv[1:] if argv is None else argv)
    set_runtime_environment()
    try:
        options = options_from_args(argv)
        preflight(options)
        lock = StudyLock(options.tracking_uri, options.experiment_name).__enter__()
    except (OptionsError, StudyError, TrackingError, ValueError, LockHeld) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a store that cannot be reached to take the study's claim
        print(f"{prog}: error: {failure_cause(err)}", file=sys.stderr)
        return 1
    logs = log_paths(options)
    try:
        result = run_study(options, checked=True, log_to=logs[0])
    except (StudyInterrupted, KeyboardInterrupt):
        print(f"{prog}: interrupted: rerun with --resume: {resume_command(argv)}", file=sys.stderr)
        return 130
    except (StudyError, TrackingError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        log = save_traceback(logs)
        where = f"traceback in {log}" if log else "no log: no disk would take the traceback"
        print(
            f"{prog}: error: {failure_cause(err)}; fix it and rerun with --resume: "
            f"{resume_command(argv)} ({where})",
            file=sys.stderr,
        )
        return 1
    finally:
        lock.release()
    if result.errors:
        why = f"{'; '.join(result.causes[:3])}; " if result.causes else ""
        print(
            f"{prog}: error: {result.errors} trials failed ({why}why: each trial's error.txt under "
            f"{options.experiment_dir}, and {logs[0]}); fix the cause and rerun with "
            f"--resume: {resume_command(argv)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
