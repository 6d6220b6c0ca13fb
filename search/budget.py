"""The trial budget of a study shared by several coordinators, and the lock that guards it.

A study's target counts trials that *used* the budget: completed, pruned, and failed for good.
A failed trial that was retried with the same parameters does not count; its retry does. Before
asking Optuna for a trial, a coordinator takes the study lock (a PostgreSQL advisory lock, or a
file lock next to a SQLite database), counts used and running trials, and only then asks, so
three coordinators never start more trials than the target between them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

RETRY_OF = "retry_of"
RETRY_COUNT = "retry_count"
RETRY_REASON = "retry_reason"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class Budget:
    used: int
    running: int
    target: int

    @property
    def remaining(self) -> int:
        return self.target - self.used - self.running


def budget(study: optuna.Study, target: int) -> Budget:
    trials = study.get_trials(deepcopy=False)
    retried = {trial.user_attrs[RETRY_OF] for trial in trials if RETRY_OF in trial.user_attrs}
    used = sum(
        1 for trial in trials if trial.state in FINISHED_STATES and trial.number not in retried
    )
    running = sum(1 for trial in trials if trial.state == TrialState.RUNNING)
    return Budget(used=used, running=running, target=target)


def is_retried(study: optuna.Study, number: int) -> bool:
    """Whether some trial (queued, running or finished) re-runs trial `number`."""
    return any(
        other.user_attrs.get(RETRY_OF) == number for other in study.get_trials(deepcopy=False)
    )


class StudyLock:
    """A cross-process, cross-host mutex for one study's bookkeeping."""

    def __init__(self, storage_url: str, study_name: str) -> None:
        url = make_url(storage_url)
        self.study_name = study_name
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
            with self.engine.connect() as connection:
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key}
                )
                try:
                    yield
                finally:
                    connection.execute(
                        sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key}
                    )
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

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
