"""Tune's saved state, checked (and mended where it can be) before a study resumes.

Tune stages its state on the driver's local disk (``<ray temp>/session_*/artifacts/<session
start>/<run name>/driver_artifacts``, each file written whole) and copies it to the study's
storage every few seconds, overwriting the files of the current session in place. A disk that
fills during a copy leaves them truncated, and ``Tuner.restore`` then fails to read them, logs
"Restarting experiment" and starts the study from scratch in the same folder: the trials run
so far are forgotten and run again beside their old runs.

:func:`mend_tune_state` runs before the restore: a truncated file of the newest session is
replaced by Ray's staged copy when that is still on this machine (it is the newer state
anyway), else the session's files are set aside (``*.truncated``) so that Tune resumes from the
session before; with no intact state at all the resume stops (exit 2). A truncated last line of
the Optuna journal (the same disk) is cut off, or Optuna would refuse the next line appended.
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import shutil
import tempfile
from pathlib import Path

from study.preflight import StudyError

#: The files of one Tune session, by session start (``2026-12-06_15-59-04``).
SESSION_FILES = ("experiment_state-{}.json", "search_gen_state-{}.json", "searcher-state-{}.pkl")


class TuneStateError(StudyError):
    """No intact saved state to resume from (exit 2, like every other resume mistake)."""


def mend_tune_state(experiment_dir: str, optuna_journal: str | None = None) -> list[str]:
    """Make the newest saved Tune state of a local experiment readable; returns one line per
    thing mended (for a warning), raises :class:`TuneStateError` when nothing is left."""
    notes = []
    if optuna_journal and "://" not in optuna_journal:
        note = _mend_journal(Path(optuna_journal))
        notes += [note] if note else []
    if "://" in experiment_dir:
        return notes  # remote storage is written whole, object by object
    exp = Path(experiment_dir)
    sessions = sorted(
        (m.group(1) for f in exp.glob("experiment_state-*.json")
         if (m := re.fullmatch(r"experiment_state-(.+)\.json", f.name))),
        reverse=True,
    )  # fmt: skip
    for stamp in sessions:
        broken = [
            name for name in _names(stamp) if (exp / name).exists() and not _intact(exp / name)
        ]
        if not broken:
            return notes
        staged = _staged_copy(exp, stamp)
        if staged is not None:
            for name in _names(stamp):
                if (staged / name).exists():
                    _replace(staged / name, exp / name)
            notes.append(
                f"Tune's state {', '.join(broken)} in {exp} was truncated (a full disk?): "
                f"restored from the copy Ray staged in {staged}"
            )
            return notes
        for name in _names(stamp):
            if (exp / name).exists():
                (exp / name).rename(exp / f"{name}.truncated")
        notes.append(
            f"Tune's state {', '.join(broken)} in {exp} was truncated (a full disk?) and no "
            "intact copy is left: set aside as *.truncated, resuming from the state before"
        )
    if sessions:
        raise TuneStateError(
            f"--resume: Tune's saved state in {exp} is truncated (a full disk?) and no intact "
            "copy is left: start the study again under a new --run-name"
        )
    return notes


def _names(stamp: str) -> list[str]:
    return [template.format(stamp) for template in SESSION_FILES]


def _intact(path: Path) -> bool:
    """Whether the file reads to its end: a pickle's opcodes reach STOP (Tune pickles the
    search state into ``search_gen_state-*.json`` too), JSON parses."""
    try:
        data = path.read_bytes()
        if data.startswith(b"\x80"):  # the pickle protocol opcode
            for _ in pickletools.genops(data):
                pass
        else:
            json.loads(data)
    except (OSError, ValueError):
        return False
    return True


def _ray_temp_roots() -> list[Path]:
    roots = [os.environ.get("RAY_TMPDIR"), os.environ.get("TMPDIR"), "/tmp", tempfile.gettempdir()]
    return list(dict.fromkeys(Path(r) / "ray" for r in roots if r))


def _staged_copy(exp: Path, stamp: str) -> Path | None:
    """Ray's staged copy of session ``stamp`` of this experiment: every file intact and every
    trial it names a folder of ``exp`` (another study of the same run name, started the same
    second elsewhere, names other trials). The newest such copy, or None."""
    found = []
    for root in _ray_temp_roots():
        for staged in root.glob(f"session_*/artifacts/{stamp}/{exp.name}/driver_artifacts"):
            state = staged / f"experiment_state-{stamp}.json"
            if not state.is_file() or not all(
                _intact(staged / n) for n in _names(stamp) if (staged / n).exists()
            ):
                continue
            try:
                trials = json.loads(state.read_text())["trial_data"]
                names = [json.loads(t)["custom_dirname"] or json.loads(t)["relative_logdir"]
                         for t, _ in trials]  # fmt: skip
            except (ValueError, KeyError, TypeError):
                continue
            if all((exp / name).is_dir() for name in names):
                found.append((state.stat().st_mtime, staged))
    return max(found)[1] if found else None


def _replace(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.mending")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _mend_journal(path: Path) -> str | None:
    """Cut a truncated last line (written as the disk filled) off the Optuna journal."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return None
            f.truncate(data.rfind(b"\n") + 1)
    except OSError:
        return None
    return f"the Optuna journal {path} ended in a truncated line (a full disk?): cut off"
