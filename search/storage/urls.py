"""Optuna storage: open or create a study, and describe storage URLs without their passwords.

The default is `sqlite:///optuna.db` in the working directory. Only coordinators talk to the
storage (workers never do): one coordinator with N workers is a single SQLite writer; several
coordinators on one SQLite file wait on its lock (60 s timeout); several hosts need PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from trainers.redaction import redact

DEFAULT_STORAGE = "sqlite:///optuna.db"

__all__ = ["DEFAULT_STORAGE", "StorageError", "check_storage_url", "make_storage", "redact"]


class StorageError(RuntimeError):
    """The storage URL is malformed or the database cannot be reached."""


def check_storage_url(url: str) -> None:
    """Fail fast, with one clear line, on a malformed or unreachable database URL."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(
            f"malformed storage URL {url!r}; expected e.g. sqlite:///optuna.db or "
            "postgresql://user@host:5432/dbname"
        ) from None
    if parsed.drivername.startswith("sqlite"):
        _check_sqlite_file(url, parsed.database)
        return
    try:
        engine = sqlalchemy.create_engine(parsed, connect_args=_connect_args(parsed.drivername))
    except (NoSuchModuleError, ImportError) as error:
        hint = "; for PostgreSQL: pip install -e '.[postgres]'" if "postgres" in url else ""
        raise StorageError(
            f"storage {redact(url)}: unsupported database driver: {error}{hint}"
        ) from None
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise StorageError(f"storage {redact(url)} is unreachable: {reason}") from None
    finally:
        engine.dispose()


def _check_sqlite_file(url: str, database: str | None) -> None:
    """SQLite creates its file on first connect; check the folder instead of creating it."""
    if not database or database == ":memory:":
        raise StorageError(f"storage {url!r}: an in-memory database would lose the study")
    path = Path(database)
    if path.is_dir():
        raise StorageError(f"storage {url!r}: {path} is a directory, not a database file")
    folder = path.parent
    if not folder.is_dir():
        raise StorageError(f"storage {url!r}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StorageError(f"storage {url!r}: {path} is not writable")
    if path.exists():
        try:
            with contextlib.closing(sqlite3.connect(path)) as connection:
                connection.execute("PRAGMA schema_version")
        except sqlite3.OperationalError:
            pass  # locked by a running coordinator, say: Optuna waits for it when it opens
        except sqlite3.DatabaseError as error:
            raise StorageError(
                f"storage {url!r}: {path} is not a SQLite database ({error})"
            ) from None


def _connect_args(driver: str) -> dict[str, Any]:
    if driver.startswith("sqlite"):
        # Wait for a lock instead of failing at once ("database is locked").
        return {"timeout": 60}
    if driver.startswith("postgresql"):
        return {"connect_timeout": 10}
    return {}


def make_storage(url: str, **options: Any) -> optuna.storages.RDBStorage:
    drivername = make_url(url).drivername
    engine_kwargs: dict[str, Any] = {"connect_args": _connect_args(drivername)}
    if not drivername.startswith("sqlite"):
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        # The heartbeat arguments are marked experimental; they are what we rely on.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **options)
