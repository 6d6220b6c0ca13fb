"""The study lock: a cross-process, cross-host mutex for one study's bookkeeping.

A PostgreSQL advisory lock, or a file lock next to a SQLite database. Coordinators hold it
while they count the budget and ask for a trial, sweep stale trials, tell a trial, and write
what several coordinators share in MLflow, so no two of them ever do those at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from search.storage.retry import StorageRetry


class StudyLock:
    """A cross-process, cross-host mutex for one study's bookkeeping."""

    def __init__(
        self, storage_url: str, study_name: str, *, retry: StorageRetry | None = None
    ) -> None:
        url = make_url(storage_url)
        self.retry = retry
        self.key = int.from_bytes(
            hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True
        )
        self.engine: sqlalchemy.Engine | None = None
        self.lock_file: Path | None = None
        if url.drivername.startswith("postgresql"):
            self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        elif url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
            self.lock_file = Path(f"{url.database}.{study_name}.lock")

    @property
    def exclusive(self) -> bool:
        """Whether `held` really excludes other coordinators (PostgreSQL, SQLite file)."""
        return self.engine is not None or self.lock_file is not None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.engine is not None:
            connection = self.retry.call(self._locked) if self.retry else self._locked()
            try:
                yield
            finally:
                # A connection lost meanwhile took the lock with it: the server released it.
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    connection.execute(
                        sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key}
                    )
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    connection.close()
        elif self.lock_file is not None:
            with self.lock_file.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        else:
            # Other databases: no cross-host lock; a single coordinator is always safe.
            yield

    def _locked(self) -> sqlalchemy.Connection:
        assert self.engine is not None
        connection = self.engine.connect()
        try:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
        except BaseException:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                connection.close()
            raise
        return connection

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
