"""Riding out a lost database connection: every storage call retried with backoff, up to a limit.

A PostgreSQL server that restarts, a network cut, a proxy that drops its connections: the
coordinator's storage calls fail with a connection error. `retry_storage_calls` wraps every
method of the coordinator's `RDBStorage` so that such a call is retried, with backoff from
0.5 s to 10 s, until it succeeds or `limit_s` seconds have passed since the first failure of
the outage; then it raises `StorageLostError`, which `search.run` reports in one line with the
command to resume. While it waits, it calls `while_waiting` (on the main thread) several times
a second: the coordinator answers its workers' epochs there, so they keep training, and reports
those epochs to Optuna once the database is back. Nothing is written twice: intermediate values
and attributes are upserts, and a tell that did commit before its connection broke is
recognised when retried (the trial already has that state). The one write that cannot be told
apart is `ask`'s new trial: if its commit reached the database but the answer did not, the
retry makes a second trial, which no coordinator claims, and the next sweep fails it as stale
(it is not counted).

Errors that are not about the connection (an integrity error, a bug) are raised at once.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from trainers.redaction import redact

#: Seconds a study waits for its database before it stops (`--storage-retry-s`).
DEFAULT_STORAGE_RETRY_S = 300.0
FIRST_WAIT_S = 0.5
LONGEST_WAIT_S = 10.0
#: How often the workers are answered while the storage is away.
SERVE_EVERY_S = 0.2

Call = TypeVar("Call", bound=Callable[..., Any])


class StorageLostError(RuntimeError):
    """The database did not answer within the retry limit; the study stops, resumable."""


def connection_lost(error: BaseException) -> bool:
    """Whether `error`, or what caused it, says the database connection is gone."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OperationalError | InterfaceError):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class StorageRetry:
    """The retry policy of one coordinator's storage calls (all threads share the limit)."""

    def __init__(
        self, url: str, limit_s: float, *, warn: Callable[[str], None] = print
    ) -> None:
        self.url = url
        self.limit_s = limit_s
        self.warn = warn
        self._local = threading.local()
        self._outage_started: float | None = None
        self._guard = threading.Lock()
        #: Called between attempts on the main thread (never inside itself).
        self.while_waiting: Callable[[], None] | None = None

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if getattr(self._local, "inside", False):
            return function(*args, **kwargs)  # the outer call retries
        self._local.inside = True
        try:
            return self._retrying(function, args, kwargs)
        finally:
            self._local.inside = False

    def _retrying(self, function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        wait = FIRST_WAIT_S
        retried = False
        while True:
            try:
                result = function(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if retried and _is_tell(function):
                    return _told_already(function, args, kwargs)
                raise
            except Exception as error:
                if not connection_lost(error):
                    raise
                lost_for = self._lost_for(error)
                if lost_for >= self.limit_s:
                    raise StorageLostError(
                        f"the study storage {redact(self.url)} has not answered for "
                        f"{lost_for:.0f}s (--storage-retry-s {self.limit_s:g}): "
                        f"{type(error).__name__}"
                    ) from error
                self._pause(min(wait, self.limit_s - lost_for))
                wait = min(wait * 2, LONGEST_WAIT_S)
                retried = True
                continue
            self._answered()
            return result

    def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, calling `while_waiting` every `SERVE_EVERY_S` on the main thread."""
        hook = self.while_waiting
        if hook is None or threading.current_thread() is not threading.main_thread():
            time.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            hook()
            time.sleep(min(SERVE_EVERY_S, left))

    def _lost_for(self, error: BaseException) -> float:
        with self._guard:
            now = time.monotonic()
            if self._outage_started is None:
                self._outage_started = now
                self.warn(
                    f"warning: the study storage {redact(self.url)} does not answer "
                    f"({type(error).__name__}); retrying for up to {self.limit_s:g}s"
                )
            return now - self._outage_started

    def _answered(self) -> None:
        with self._guard:
            if self._outage_started is not None:
                lost = time.monotonic() - self._outage_started
                self._outage_started = None
                self.warn(f"the study storage answers again after {lost:.0f}s; carrying on")


def _is_tell(function: Callable[..., Any]) -> bool:
    return getattr(function, "__name__", "") == "set_trial_state_values"


def _told_already(function: Callable[..., Any], args: Any, kwargs: Any) -> bool:
    """A retried tell whose first attempt committed: done, if the trial has that state."""
    storage = getattr(function, "__self__", None)
    trial_id, state = args[0], args[1] if len(args) > 1 else kwargs["state"]
    if storage is not None and storage.get_trial(trial_id).state == state:
        return True
    raise optuna.exceptions.UpdateFinishedTrialError(
        f"trial id {trial_id} finished with another state than {TrialState(state).name}"
    )


def retry_storage_calls(
    storage: optuna.storages.RDBStorage, retry: StorageRetry
) -> optuna.storages.RDBStorage:
    """`storage` with each of its methods retried under `retry` (in place; returned too)."""
    for name in dir(storage):
        if name.startswith("__") or name in {"engine", "url", "scoped_session"}:
            continue
        method = getattr(storage, name)
        if not callable(method) or not hasattr(method, "__self__"):
            continue
        setattr(storage, name, _retried(method, retry))
    return storage


def _retried(method: Call, retry: StorageRetry) -> Call:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        return retry.call(method, *args, **kwargs)

    return call  # type: ignore[return-value]
