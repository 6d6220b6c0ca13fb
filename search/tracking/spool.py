"""MLflow writes that survive an outage of the tracking server: kept in a spool, written later.

The coordinator writes every run, metric, tag, artifact and run end through `SpooledWriter`.
While the server answers, a write goes straight to it. When one fails because the server
cannot be reached, that write and every later one are appended, in order and with their
original steps and timestamps, to a spool file in the study's output folder
(`mlflow-spool-<host>-<pid>.jsonl`), and the writer tries to replay the spool every
`retry_interval` seconds; the study meanwhile goes on. A run created during the outage gets a
stand-in id (`spooled:...`) that the replay maps to the id the server assigns.

If the server is still gone when the study ends, the spool stays on disk and
`python -m search.sync --output DIR --tracking-uri URI` replays it later (`sync_command`,
`replay_spool`), into the store that holds the runs it writes to (`missing_from_store`). A
write the server answered and refused (a bad request, not an outage) is an error as before.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from search.storage.urls import redact

SPOOL_PREFIX = "mlflow-spool-"
SPOOLED_RUN = "spooled:"
#: Seconds between replays of the spool while the server is away.
RETRY_INTERVAL = 15.0

Operation = dict[str, Any]


def server_unreachable(error: BaseException) -> bool:
    """Whether `error` says the tracking server could not be reached (down, restarting, cut
    off), as opposed to a request it answered and refused."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(error, MlflowException):
        # The REST client wraps connection failures ("API request to ... failed with
        # exception ...") and answers 5xx as INTERNAL_ERROR / TEMPORARILY_UNAVAILABLE.
        message = str(error)
        return error.error_code in {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR"} or (
            "failed with exception" in message or "Max retries exceeded" in message
        )
    return isinstance(error, ConnectionError | TimeoutError)


def sync_command(output_dir: Path, tracking_uri: str) -> str:
    """The command that replays `output_dir`'s spools, quoted for the shell, its password
    hidden."""
    command = ["python", "-m", "search.sync", "--output", str(output_dir)]
    return shlex.join([*command, "--tracking-uri", redact(tracking_uri)])


def spool_path(output_dir: Path) -> Path:
    return output_dir / f"{SPOOL_PREFIX}{socket.gethostname()}-{os.getpid()}.jsonl"


class SpooledWriter:
    """The coordinator's MLflow writes, straight through or via the spool."""

    def __init__(
        self,
        client: Any,
        path: Path,
        *,
        tracking_uri: str,
        warn: Callable[[str], None],
        retry_interval: float | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.tracking_uri = tracking_uri
        self.warn = warn
        self.retry_interval = RETRY_INTERVAL if retry_interval is None else retry_interval
        self.pending: list[Operation] = []
        #: Stand-in run ids of runs created while the server was away -> the server's ids.
        self.run_ids: dict[str, str] = {}
        self.next_retry = 0.0
        self.outages = 0

    # The writes the tracker makes -------------------------------------------------------

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
        """The new run's id, or a stand-in if the server is away."""
        operation = {
            "op": "create_run",
            "experiment_id": experiment_id,
            "run_name": run_name,
            "tags": dict(tags),
            "start_time": _now_ms(),
            "ref": f"{SPOOLED_RUN}{uuid.uuid4().hex}",
        }
        return self._write(operation) or str(operation["ref"])

    def log_batch(
        self,
        run_id: str,
        *,
        metrics: Sequence[tuple[str, float, int, int]] = (),
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Metrics as (key, value, timestamp in ms, step), params and tags of one run."""
        self._write(
            {
                "op": "log_batch",
                "run_id": run_id,
                "metrics": [list(metric) for metric in metrics],
                "params": dict(params or {}),
                "tags": dict(tags or {}),
            }
        )

    def log_artifacts(self, run_id: str, paths: Sequence[Path]) -> None:
        self._write({"op": "log_artifacts", "run_id": run_id, "paths": [str(p) for p in paths]})

    def set_terminated(self, run_id: str, status: str) -> None:
        self._write(
            {"op": "set_terminated", "run_id": run_id, "status": status, "end_time": _now_ms()}
        )

    # Straight through, or spooled ---------------------------------------------------------

    def _write(self, operation: Operation) -> str | None:
        if self.pending:
            self._spool(operation)
            self.retry()
            return None
        try:
            return execute(self.client, operation, self.run_ids)
        except Exception as error:
            if not server_unreachable(error):
                raise
            self.outages += 1
            self.warn(
                f"warning: MLflow at {redact(self.tracking_uri)} does not answer "
                f"({_short(error)}); the study goes on and keeps its MLflow writes in "
                f"{self.path}, retried every {self.retry_interval:.0f}s"
            )
            self._spool(operation)
            self.next_retry = time.monotonic() + self.retry_interval
            return None

    def _spool(self, operation: Operation) -> None:
        self.pending.append(operation)
        with self.path.open("a", encoding="utf-8") as spool:
            spool.write(json.dumps(operation) + "\n")

    def retry(self, *, now: bool = False) -> bool:
        """Replay the spool if it is time (or `now`); True when nothing is left pending."""
        if not self.pending:
            return True
        if not now and time.monotonic() < self.next_retry:
            return False
        self.next_retry = time.monotonic() + self.retry_interval
        written = replay_operations(self.client, self.pending, self.run_ids)
        self.pending = self.pending[written:]
        if self.pending:
            _rewrite(self.path, self.pending, self.run_ids)
            return False
        self.path.unlink(missing_ok=True)
        self.warn(
            f"MLflow at {redact(self.tracking_uri)} answers again: wrote {written} spooled "
            "writes with their original steps and times"
        )
        return True

    def close(self) -> None:
        """At the study's end: a last replay; what is still pending stays in the spool."""
        if self.retry(now=True):
            return
        self.warn(
            f"warning: MLflow at {redact(self.tracking_uri)} did not come back; "
            f"{len(self.pending)} MLflow writes are kept in {self.path}. Nothing is lost: "
            f"replay them with {sync_command(self.path.parent, self.tracking_uri)}"
        )


def execute(client: Any, operation: Operation, run_ids: Mapping[str, str]) -> str | None:
    """Perform one spooled write; returns the id of a run it created."""
    from mlflow.entities import Metric, Param, RunTag

    op = operation["op"]
    if op == "alias":
        return None
    if op == "create_run":
        # The server may have created it before the connection broke (the answer was lost):
        # the same name and start time are that run.
        existing = client.search_runs(
            [operation["experiment_id"]],
            filter_string=f"attributes.run_name = '{operation['run_name']}' and "
            f"attributes.start_time = {operation['start_time']}",
        )
        if existing:
            return str(existing[0].info.run_id)
        run = client.create_run(
            operation["experiment_id"],
            start_time=operation["start_time"],
            tags=operation["tags"],
            run_name=operation["run_name"],
        )
        return str(run.info.run_id)
    run_id = run_ids.get(operation["run_id"], operation["run_id"])
    if op == "log_batch":
        metrics = [
            Metric(key, float(value), int(timestamp), int(step))
            for key, value, timestamp, step in operation["metrics"]
        ]
        params = [Param(key, value) for key, value in operation["params"].items()]
        tags = [RunTag(key, value) for key, value in operation["tags"].items()]
        # MLflow takes at most 100 params and 1000 metrics per batch.
        for start in range(0, max(len(params), 1), 100):
            client.log_batch(
                run_id,
                metrics=metrics if start == 0 else [],
                params=params[start : start + 100],
                tags=tags if start == 0 else [],
                synchronous=True,
            )
    elif op == "log_artifacts":
        for path in operation["paths"]:
            if Path(path).is_file():
                client.log_artifact(run_id, path)
    elif op == "set_terminated":
        client.set_terminated(run_id, status=operation["status"], end_time=operation["end_time"])
    else:
        raise ValueError(f"unknown spooled MLflow write {op!r}")
    return None


def replay_operations(client: Any, operations: Sequence[Operation], run_ids: dict[str, str]) -> int:
    """Write `operations` in order until the server fails again; returns how many were
    written. Runs they create are added to `run_ids`."""
    for alias in operations:
        if alias["op"] == "alias":
            run_ids[alias["ref"]] = alias["run_id"]
    for written, operation in enumerate(operations):
        try:
            created = execute(client, operation, run_ids)
        except Exception as error:
            if not server_unreachable(error):
                raise
            return written
        if created is not None and operation["op"] == "create_run":
            run_ids[operation["ref"]] = created
    return len(operations)


def _rewrite(path: Path, pending: Sequence[Operation], run_ids: Mapping[str, str]) -> None:
    """The spool as it now stands: the stand-in ids already created, then what is left."""
    aliases = [{"op": "alias", "ref": ref, "run_id": run_id} for ref, run_id in run_ids.items()]
    temporary = path.with_suffix(".tmp")
    temporary.write_text(
        "".join(json.dumps(item) + "\n" for item in [*aliases, *pending]), encoding="utf-8"
    )
    temporary.replace(path)


def read_spool(path: Path) -> list[Operation]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def missing_from_store(client: Any, operations: Sequence[Operation]) -> str | None:
    """What the spool's writes refer to that the store lacks ("run ID", "experiment ID"), or
    None: the study's experiment, and its runs created before the outage.

    Replayed into another store (another --tracking-uri than the study's), the first write to
    such a run would fail after the writes before it had gone in.
    """
    from mlflow.exceptions import MlflowException

    aliases = {item["ref"]: item["run_id"] for item in operations if item["op"] == "alias"}
    stand_ins = {item["ref"] for item in operations if item["op"] == "create_run"}
    experiments = [item["experiment_id"] for item in operations if item["op"] == "create_run"]
    runs = [
        aliases.get(item["run_id"], item["run_id"])
        for item in operations
        if "run_id" in item and item["run_id"] not in stand_ins
    ]
    lookups = [("experiment", client.get_experiment, key) for key in dict.fromkeys(experiments)]
    lookups += [("run", client.get_run, key) for key in dict.fromkeys(runs)]
    for kind, lookup, key in lookups:
        try:
            lookup(key)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return f"{kind} {key}"
    return None


def replay_spool(client: Any, path: Path) -> tuple[int, int]:
    """Replay one spool file; (written, left). An emptied spool is removed."""
    operations = read_spool(path)
    run_ids: dict[str, str] = {}
    written = replay_operations(client, operations, run_ids)
    left = operations[written:]
    if left:
        _rewrite(path, left, run_ids)
    else:
        path.unlink()
    return written, len(left)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return redact(text[:160])
