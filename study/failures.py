"""How a study driver fails: one line naming the cause, the command that resumes it, and the
full traceback and the libraries' own log lines in a file whose path the line prints.

``python study/run.py`` exits 2 for bad input, 1 for a runtime failure (the cause from
:func:`failure_cause`, then :func:`resume_command`, then where :func:`save_traceback` wrote),
130 for Ctrl-C; Ray's, Tune's and MLflow's loggers write to the driver's log instead of the
terminal (:func:`send_library_logs_to`).
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import re
import shlex
import tempfile
import traceback
from pathlib import Path

from study.options import StudyOptions


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


def save_traceback(paths: list[Path]) -> Path | None:
    text = traceback.format_exc()
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as log:
                log.write(text)
            return path
        except OSError:
            continue
    return None


def _chain(err: BaseException | None) -> list[BaseException]:
    """The exception and the ones it wraps, outermost first."""
    seen, chain = set(), []
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def disk_full(err: BaseException) -> str | None:
    """``disk full (...)`` naming the failed write when ``err`` (or an error it wraps) is a
    full disk or quota, else ``None``. Used by the driver's line and by the trainable, which
    fails such a trial without a retry (a retry cannot free space)."""
    chain = _chain(err)
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            where = f" writing {e.filename}" if e.filename else ""
            return f"disk full{where} ({os.strerror(e.errno)})"
    for e in chain:
        full = re.search(r"^.*(?:database or disk is full|No space left).*$", str(e), re.M)
        if full is not None:  # a wrapped error's text may be a whole traceback: its line
            return f"disk full ({full.group(0).strip()[:200]})"
    return None


def failure_cause(err: BaseException) -> str:
    """One line naming what failed, from the exception and the ones it wraps."""
    full = disk_full(err)
    if full is not None:
        return full
    chain = _chain(err)
    for e in chain:
        text = str(e)
        # Tune wraps the callback's error in a TuneError whose text is the whole traceback.
        server = re.search(r"API request to (https?://[^/\s]+)", text)
        if server is None:
            server = re.search(r"HTTP\w*ConnectionPool\(host='([^']+)', port=(\d+)\)", text)
        if server is not None:
            where = ":".join(server.groups())
            return f"the MLflow server {where} is unreachable"
        if type(e).__name__ in ("DatabaseError", "OperationalError") and "sqlite" in text:
            return f"the tracking store failed: {text.splitlines()[0][:200]}"
    last = chain[0]
    first_line = (str(last).strip().splitlines() or [""])[0][:200]
    return f"{type(last).__name__}: {first_line}"
