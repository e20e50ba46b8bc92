"""Everything a study checks before Ray starts or MLflow is touched: the options, the
tracking store, whether the study exists (and, resumed, that the store now named holds its
runs), the data, and the engine backend. A problem the user can fix is a :class:`StudyError`
(exit code 2, one line); nothing has been written when it is raised.
"""

from __future__ import annotations

import json
from pathlib import Path

from study.options import StudyOptions
from trainables.locking import sqlite_init_lock
from trainables.tracking_uri import check_tracking_uri, local_store_path


class StudyError(ValueError):
    """A problem with the study's setup that the user can fix (exit code 2)."""


def preflight(options: StudyOptions) -> None:
    """Everything checked before Ray starts or MLflow is touched."""
    from ray.tune import Tuner

    options.validate()
    check_tracking_uri(options.tracking_uri)
    exists = Tuner.can_restore(options.experiment_dir)
    if options.resume and not exists:
        raise StudyError(f"--resume: no study to resume at {options.experiment_dir}")
    remote = "://" in options.experiment_dir
    if not options.resume and (exists or (not remote and _non_empty(Path(options.experiment_dir)))):
        raise StudyError(
            f"a study already exists at {options.experiment_dir}: pass --resume to continue "
            "it, or --run-name / --experiment for a new one"
        )
    if options.resume:
        _check_resume_store(options)
    if options.task != "copying":  # MNIST must be on disk (or downloaded now, if asked)
        from trainables.train import load_task_for

        load_task_for(options.run_config())
    _prepare_backend(options)
    if options.sequential and not options.design().can_decide_at(0):
        import warnings

        warnings.warn(
            f"--seeds auto: the first look ({options.min_seeds} seeds) cannot decide anything "
            "at this alpha; raise --min-seeds",
            RuntimeWarning,
            stacklevel=2,
        )


def _prepare_backend(options: StudyOptions) -> None:
    """Build the C++ kernels once, here, before trials start (they then load them from the
    cache instead of compiling side by side), and reject a backend that cannot run."""
    import warnings

    from trainables import kernels

    backend = options.run_config().backend
    if backend in ("triton", "persistent") and not options.gpus_per_trial:
        raise StudyError(
            f"backend {backend!r} runs on GPUs: give --gpus-per-trial (or --backend auto)"
        )
    if options.gpus_per_trial or backend not in ("auto", "cpp"):
        return
    try:
        kernels.load_cpp()
    except kernels.KernelUnavailable as err:
        if backend == "cpp":
            raise StudyError(f"backend 'cpp': {err}") from None
        warnings.warn(f"{err}; trials use the PyTorch path", RuntimeWarning, stacklevel=2)


def _non_empty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_resume_store(options: StudyOptions) -> None:
    """A resumed study writes where the resuming command says (``--tracking-uri`` now, not
    the address it was started with); refuse when that store does not hold its runs, which
    would split one study over two stores."""
    saved = Path(options.experiment_dir) / "study_options.json"
    if "://" in options.experiment_dir or not saved.is_file():
        return
    try:
        before = json.loads(saved.read_text()).get("tracking_uri")
    except ValueError:
        raise StudyError(f"--resume: {saved} is not valid JSON (corrupt or truncated)") from None
    if not before or before == options.tracking_uri:
        return
    if _store_holds_study(options.tracking_uri, options.experiment_name):
        return  # the same store at another address (a moved server, a new tunnel port)
    raise StudyError(
        f"--resume: study {options.experiment_name!r} was started with --tracking-uri {before} "
        f"and {options.tracking_uri} holds none of its runs: resume with --tracking-uri "
        f"{before}, or move the study first (copy the sqlite file, or mlflow-export-import "
        "the experiment) and resume against its new home"
    )


def _store_holds_study(uri: str, experiment: str) -> bool:
    from mlflow.tracking import MlflowClient

    path = local_store_path(uri)
    if path is not None and not path.exists():
        return False  # and it is not created by asking
    with sqlite_init_lock(uri):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
    return found is not None and bool(client.search_runs([found.experiment_id], max_results=1))
