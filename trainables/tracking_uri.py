"""Which MLflow tracking URIs a study and its reports accept, checked before anything exists.

The study (writing runs) and the reports (reading them) check the same URIs the same way, so
the check lives upstream of both, beside the data contract. Plain stdlib: no MLflow import,
and nothing is created (a sqlite client would create its database on sight).
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname


class TrackingError(ValueError):
    """A tracking setting the user can fix (bad URI, unreachable server, deleted experiment)."""


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingError unless `uri` is a usable MLflow tracking URI; create nothing.

    Accepted: `sqlite:///path` (its directory must exist and be writable), `http(s)://host:port`
    (GET `<uri>/health` must answer 200 within `timeout_s`), and `file:` or plain paths only
    when MLflow's own switch `MLFLOW_ALLOW_FILE_STORE=true` is set.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise TrackingError(f"tracking URI must be a non-empty string, got {uri!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("file", ""):
        _check_file_store(uri)
    else:
        raise TrackingError(
            f"unsupported tracking URI {uri!r}: use sqlite:///path/to/mlflow.db "
            "or http(s)://host:port"
        )


def _check_server(uri: str, timeout_s: float) -> None:
    if not urlparse(uri).hostname:
        raise TrackingError(f"tracking URI {uri!r} has no host")
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLflow server {uri} is unreachable (GET {health}: {reason})"
        ) from None
    if status != 200:
        raise TrackingError(f"MLflow server {uri} is not healthy (GET {health}: HTTP {status})")


def _check_sqlite(uri: str) -> None:
    # SQLAlchemy form: sqlite:///relative.db, sqlite:////absolute.db; sqlite:// is in-memory.
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise TrackingError(
            f"tracking URI {uri!r} is not a sqlite database file: use sqlite:///path/to/mlflow.db"
        )
    path = Path(rest[1:])
    _check_writable(path, uri, want_dir=False)
    _check_sqlite_file(path, uri)


def _check_sqlite_file(path: Path, uri: str) -> None:
    """An existing database must be one: a truncated or foreign file would otherwise fail
    deep inside MLflow's migrations with a traceback."""
    if not path.exists() or path.stat().st_size == 0:
        return  # created on first use
    path = path.absolute()  # named in full: the user may have given it relative to elsewhere
    with open(path, "rb") as f:
        header = f.read(100)
    # The SQLite file format: a 16-byte magic string, then a 100-byte header of which bytes
    # 28..31 hold the database size in pages; a file shorter than one page is cut off.
    if not header.startswith(b"SQLite format 3\x00") or len(header) < 100:
        raise TrackingError(
            f"tracking store {path} is not a complete sqlite database (corrupt or truncated): "
            "restore it from a backup or point --tracking-uri at another file"
        )
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if pages and path.stat().st_size < pages * page_size:
        raise TrackingError(
            f"tracking store {path} is truncated ({path.stat().st_size} bytes of "
            f"{pages * page_size}): restore it from a backup or point --tracking-uri at "
            "another file"
        )


def local_store_path(uri: str) -> Path | None:
    """The absolute path of a local store (a sqlite file or a file store), None for a
    server. The study lock and the sqlite first-use lock live beside it."""
    scheme = urlparse(uri).scheme.lower()
    if scheme == "sqlite":
        rest = uri[len("sqlite://") :].split("?", 1)[0]
        return Path(rest[1:]).absolute() if rest.startswith("/") else None
    if scheme in ("file", ""):
        return _local_path(uri).absolute()
    return None


def _file_store_allowed() -> bool:
    # MLflow's own switch, read as MLflow reads a boolean environment variable.
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "false").strip().lower() in ("true", "1")


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(uri)


def _check_file_store(uri: str) -> None:
    if not _file_store_allowed():
        raise TrackingError(
            f"tracking URI {uri!r} is a file store, which MLflow 3 disables: use "
            "sqlite:///mlflow.db, or set MLFLOW_ALLOW_FILE_STORE=true to allow it"
        )
    _check_writable(_local_path(uri), uri, want_dir=True)


def _check_writable(path: Path, uri: str, *, want_dir: bool) -> None:
    path = path.absolute()
    if path.exists():
        if path.is_dir() != want_dir:
            kind = "a directory" if want_dir else "a database file"
            raise TrackingError(f"tracking URI {uri!r}: {path} exists but is not {kind}")
        if not os.access(path, os.W_OK):
            raise TrackingError(f"tracking URI {uri!r}: {path} is not writable")
        return
    if not path.parent.is_dir():
        raise TrackingError(f"tracking URI {uri!r}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise TrackingError(f"tracking URI {uri!r}: directory {path.parent} is not writable")
