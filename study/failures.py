"""How a study driver fails: one line naming the cause, the command that resumes it, and the
full traceback and the libraries' own log lines in a file whose path the line prints.

``python study/run.py`` exits 2 for bad input, 1 for a runtime failure (the cause from
:func:`failure_cause`, then :func:`resume_command`, then where :func:`save_traceback` wrote),
130 for Ctrl-C; Ray's, Tune's and MLflow's loggers write to the driver's log instead of the
terminal (:func:`send_library_logs_to`).
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import tempfile
from pathlib import Path

from study.options import StudyOptions
from trainables.causes import disk_full, failure_cause, save_traceback

__all__ = [
    "disk_full",
    "failure_cause",
    "log_paths",
    "resume_command",
    "save_traceback",
    "send_library_logs_to",
]


def resume_command(argv: list[str]) -> str:
    """The command that continues this study."""
    words = ["python", "study/run.py", *argv]
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(words)


def log_paths(options: StudyOptions) -> list[Path]:
    """Where the driver's log goes, in order of preference: beside its Tune experiment when
    that is local, else (or when that disk is the one that failed) the temp directory."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"{options.run_name}.driver-{stamp}.log"
    spare = Path(tempfile.gettempdir()) / f"hdetach-{options.experiment_name}-{name}"
    return [Path(options.tune_root) / name, spare] if "://" not in options.tune_root else [spare]


class _DriverLog(logging.FileHandler):
    """Ray's, Tune's and MLflow's own log lines (each failed trial's traceback, every failed
    sync, each failed database write) go to a file, so the terminal keeps the one line that
    says what happened."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # a full disk must not turn every later log line into a traceback on stderr


def send_library_logs_to(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _DriverLog(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "ray.data", "mlflow"):  # their loggers do not propagate to the root
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if type(old) is not logging.FileHandler and isinstance(old, logging.StreamHandler):
                logger.removeHandler(old)
        logger.addHandler(handler)
