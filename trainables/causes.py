"""What failed, in one line: the cause of an exception (a full disk, an unreachable MLflow
server, a failing tracking store, else the error's own first line) for the study driver's and
the report's last line, and the traceback saved where a person can read it.

Both commands exit 1 on a runtime failure with ``<cause> ... (traceback in <log>)``; the study
adds the command that resumes it (``study/failures.py``).
"""

from __future__ import annotations

import errno
import os
import re
import traceback
from pathlib import Path


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
