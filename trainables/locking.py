"""Who may write a study, and where a study's names may lead.

* **Names are names.** An experiment (study) name or a run name becomes a directory and a
  file name (Tune storage, the Optuna journal, Parquet partitions), so it is checked where it
  enters: :data:`NAME_RULE` (letters, digits, ``_ . + -``, at most :data:`NAME_MAX`
  characters, starting with a letter or digit, so never ``.`` or ``..``), and
  :func:`inside` checks, after resolving links, that a path built from one stays in its base.
* **One study, one driver.** :class:`StudyLock` is held for a whole run by the study driver
  and by the nightly, one per (tracking store, experiment). On a local store (sqlite, file
  store) it is an OS file lock (``filelock``) beside the database, released by the kernel when
  its holder dies, so it is never stale. On a remote store (an MLflow server) it is a claim in
  the experiment's tags: an owner and a heartbeat renewed every :data:`HEARTBEAT_S`; a claim
  whose heartbeat is older than :data:`STALE_S` belongs to a dead driver and is taken over
  with a warning. A process started by the holder (a nightly's batch) inherits the lock
  through :data:`LOCK_TOKEN_ENV`.
* **A new sqlite store is created once.** :func:`sqlite_init_lock` serialises the first
  opening of a database (MLflow creates and migrates it then; two at once race in alembic).

Plain stdlib and ``filelock``: MLflow is imported only for a remote claim.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import filelock

from trainables.tracking_uri import local_store_path

NAME_MAX = 100
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
NAME_HELP = (
    f"letters, digits and _ . + - only, starting with a letter or digit, at most {NAME_MAX} "
    "characters"
)
#: Set by a lock holder for the processes it starts: they run under its lock.
LOCK_TOKEN_ENV = "HDETACH_STUDY_LOCK"
OWNER_TAG = "hdetach.driver"
HEARTBEAT_TAG = "hdetach.heartbeat"
HEARTBEAT_S = 20.0
STALE_S = 120.0  # six missed heartbeats: the holder is gone (or cut off that long)
_CLAIM_SETTLE_S = 1.0  # two claims at once: both write, both read back, the last write wins


class BadName(ValueError):
    """A name that is not a name (exit 2)."""


class LockHeld(RuntimeError):
    """Another live driver holds the study (exit 2); the message names it."""


def check_name(what: str, name: object) -> str:
    """``name`` if it is a valid experiment or run name, else a one-line ``BadName``."""
    if not isinstance(name, str) or not name:
        raise BadName(f"{what} must be a non-empty name ({NAME_HELP}), got {name!r}")
    if len(name) > NAME_MAX:
        raise BadName(
            f"{what} must be at most {NAME_MAX} characters, got {len(name)} ({name[:20]!r}...)"
        )
    if not NAME_RULE.fullmatch(name):
        raise BadName(f"{what} must be a name ({NAME_HELP}), got {name!r}")
    return name


def inside(base: str | os.PathLike, *parts: str) -> Path:
    """``base/parts...`` resolved, refused unless it stays inside ``base`` resolved (an
    absolute part would drop the base, ``..`` or a link would leave it)."""
    root = Path(base).expanduser().resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise BadName(f"{'/'.join(parts)!r} leads outside {root} (to {path})")
    return path


# -- the study lock ------------------------------------------------------------------------


def _owner(token: str) -> dict:
    return {
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(sys.argv)[:300],
    }


def _describe(owner: dict) -> str:
    return (
        f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since "
        f"{owner.get('since', '?')} ({owner.get('command', '?')})"
    )


class StudyLock:
    """The study ``experiment`` in tracking store ``uri``, held by this process (or, through
    :data:`LOCK_TOKEN_ENV`, by the process that started it). Use as a context manager."""

    def __init__(self, uri: str, experiment: str, *, token: str | None = None):
        self.uri = uri
        self.experiment = check_name("experiment", experiment)
        # One token for every lock a process holds (a nightly holds one per experiment), so
        # the processes it starts inherit them all through one environment variable.
        self.token = token or uuid.uuid4().hex
        self._file_lock: filelock.BaseFileLock | None = None
        self._client = None
        self._experiment_id: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.inherited = False

    # where a local store keeps its locks: beside the database, one file per experiment
    def _lock_path(self) -> Path | None:
        store = local_store_path(self.uri)
        if store is None:
            return None
        folder = store.with_name(store.name + ".locks") if store.suffix else store / ".locks"
        return folder / f"{self.experiment}.lock"

    def env(self) -> dict[str, str]:
        """Environment for a process that runs under this lock (a nightly's batch)."""
        return {LOCK_TOKEN_ENV: self.token}

    def __enter__(self) -> StudyLock:
        path = self._lock_path()
        if path is not None:
            self._acquire_file(path)
        else:
            self._acquire_claim()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _acquire_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        owner_file = path.with_suffix(".owner")
        lock = filelock.FileLock(path, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            owner = _read_json(owner_file)
            if owner.get("token") and owner["token"] == os.environ.get(LOCK_TOKEN_ENV):
                self.inherited = True  # our parent holds it for us
                return
            raise LockHeld(
                f"study {self.experiment!r} in {self.uri} is being run by {_describe(owner)}: "
                "wait for it to finish or stop it (one driver per study)"
            ) from None
        self._file_lock = lock
        owner_file.write_text(json.dumps(_owner(self.token)))

    def _acquire_claim(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            experiment_id = client.create_experiment(self.experiment)
        else:
            experiment_id = experiment.experiment_id
        tags = client.get_experiment(experiment_id).tags
        owner, beat = _read_tag(tags.get(OWNER_TAG)), _float(tags.get(HEARTBEAT_TAG))
        if owner.get("token") and owner["token"] == os.environ.get(LOCK_TOKEN_ENV):
            self.inherited = True
            return
        age = time.time() - beat
        if owner.get("token") and age < STALE_S and not _gone(owner):
            raise LockHeld(
                f"study {self.experiment!r} on {self.uri} is claimed by {_describe(owner)}, "
                f"heartbeat {time.time() - beat:.0f} s ago: wait for it to finish or stop it "
                "(one driver per study)"
            )
        if owner.get("token"):
            why = "whose process is gone" if _gone(owner) else f"silent for {age:.0f} s"
            warnings.warn(
                f"study {self.experiment!r}: taking over the claim of {_describe(owner)}, "
                f"{why} (a claim is stale after {STALE_S:.0f} s without a heartbeat)",
                RuntimeWarning,
                stacklevel=3,
            )
        mine = _owner(self.token)
        client.set_experiment_tag(experiment_id, OWNER_TAG, json.dumps(mine))
        client.set_experiment_tag(experiment_id, HEARTBEAT_TAG, str(time.time()))
        time.sleep(_CLAIM_SETTLE_S)
        now = _read_tag(client.get_experiment(experiment_id).tags.get(OWNER_TAG))
        if now.get("token") != self.token:
            raise LockHeld(
                f"study {self.experiment!r} on {self.uri} was claimed at the same time by "
                f"{_describe(now)}: one driver per study"
            )
        self._client, self._experiment_id = client, experiment_id
        self._beat = threading.Thread(target=self._heartbeat, name="study-lock", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            # A missed beat (server briefly down) is not fatal: STALE_S allows several.
            with contextlib.suppress(Exception):
                self._client.set_experiment_tag(
                    self._experiment_id, HEARTBEAT_TAG, str(time.time())
                )

    def release(self) -> None:
        if self._file_lock is not None:
            with contextlib.suppress(OSError):
                self._lock_path().with_suffix(".owner").unlink()
            self._file_lock.release()
            self._file_lock = None
        if self._client is not None:
            self._stop.set()
            if self._beat is not None:
                self._beat.join(timeout=5)
            with contextlib.suppress(Exception):  # a dead server: the claim goes stale
                tags = self._client.get_experiment(self._experiment_id).tags
                if _read_tag(tags.get(OWNER_TAG)).get("token") == self.token:
                    self._client.delete_experiment_tag(self._experiment_id, OWNER_TAG)
            self._client = None


@contextlib.contextmanager
def sqlite_init_lock(uri: str) -> Iterator[None]:
    """Serialise the first opening of a sqlite store (MLflow creates and migrates it then)."""
    store = local_store_path(uri)
    if store is None or urlparse(uri).scheme != "sqlite":
        yield
        return
    with filelock.FileLock(store.with_name(store.name + ".init.lock")):
        yield


def _gone(owner: dict) -> bool:
    """Whether the claim's holder ran on this host and its process no longer exists (a
    driver that died while the server was down could not withdraw its claim)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_tag(value: str | None) -> dict:
    try:
        owner = json.loads(value or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _float(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


__all__ = [
    "HEARTBEAT_S",
    "LOCK_TOKEN_ENV",
    "NAME_MAX",
    "STALE_S",
    "LockHeld",
    "BadName",
    "StudyLock",
    "check_name",
    "inside",
    "sqlite_init_lock",
]
