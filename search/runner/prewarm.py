"""Prewarmed workers: the next trial's process starts and imports TensorFlow while this one trains.

A process per trial stays the rule (isolation); only its fixed start-up cost moves out of the
way. For each distinct slot environment the coordinator keeps at most one standby process:
spawned with that environment (CUDA_VISIBLE_DEVICES must be set before TensorFlow loads, so each
GPU has its own; CPU slots share one), it imports what its worker entry names in
`WARM_UP_MODULES`, then waits on its pipe. The next trial for that environment is handed to it
as a `WorkerRequest` and it becomes that trial's worker; a standby that is never used ends when
its pipe closes: at the end of the study, on Ctrl-C, and when the coordinator is killed (the
kernel closes the pipe; an orphan watch covers a standby still importing).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING

from search.runner.protocol import WorkerRequest
from search.runner.spawning import start_without_main

if TYPE_CHECKING:  # the standby process itself need not import Optuna
    from search.runner.active_trial import WorkerEntry

#: The standbys' own output (TensorFlow's import messages) goes here, not to the terminal.
STANDBY_LOG = "standby.log"


def _standby(
    connection: Connection,
    coordinator_pid: int,
    environment: Mapping[str, str],
    entry: WorkerEntry,
    log_path: str,
    slot: int,
) -> None:
    """Entry point of a standby process: warm up, wait for a trial, then become its worker."""
    started = time.monotonic()
    from search.runner.worker import exit_when_orphaned, redirect_output

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(environment)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    redirect_output(log_path)
    exit_when_orphaned(coordinator_pid)
    module = importlib.import_module(entry.__module__)
    for name in getattr(module, "WARM_UP_MODULES", ()):
        importlib.import_module(name)
    ready = time.monotonic()
    print(f"standby pid {os.getpid()} (slot {slot}) ready after {ready - started:.1f}s", flush=True)
    # A trial already waiting was held up by this start-up: say so, not "ready 0.0s before".
    trial_waited = connection.poll()
    try:
        request = connection.recv()
    except (EOFError, OSError):
        print(f"standby pid {os.getpid()} (slot {slot}) not needed; exiting", flush=True)
        return  # the study ended or the coordinator is gone
    redirect_output(request.log_path)
    when = (
        "after the trial arrived (it waited for the start-up)"
        if trial_waited
        else f"{time.monotonic() - ready:.1f}s before the trial"
    )
    print(
        f"trial {request.trial_number}: prewarmed worker pid {os.getpid()}, ready {when} "
        f"(start-up took {ready - started:.1f}s)",
        flush=True,
    )
    entry(connection, request, coordinator_pid)


@dataclass
class _Standby:
    process: BaseProcess
    connection: Connection


def _environment_key(environment: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(environment.items()))


class Standbys:
    """At most one prewarmed worker process per slot environment."""

    def __init__(
        self,
        context: SpawnContext,
        entry: WorkerEntry,
        coordinator_pid: int,
        output_dir: Path,
        *,
        enabled: bool = True,
    ) -> None:
        self.context = context
        self.entry = entry
        self.coordinator_pid = coordinator_pid
        self.log_path = str(output_dir / STANDBY_LOG)
        self.enabled = enabled
        self.by_environment: dict[tuple[tuple[str, str], ...], _Standby] = {}

    def prepare(self, slot: int, environment: Mapping[str, str]) -> None:
        """Start a standby for `slot`'s environment unless one is waiting."""
        key = _environment_key(environment)
        if not self.enabled or key in self.by_environment:
            return
        ours, theirs = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=_standby,
            args=(
                theirs,
                self.coordinator_pid,
                dict(environment),
                self.entry,
                self.log_path,
                slot,
            ),
            name=f"standby-{slot}",
            daemon=True,
        )
        start_without_main(process)
        theirs.close()
        self.by_environment[key] = _Standby(process, ours)

    def hand_over(self, request: WorkerRequest) -> tuple[BaseProcess, Connection] | None:
        """Give `request` to the standby for its environment: its process and pipe, or None if
        there is none (or it died, e.g. an import failed), and the trial then starts cold."""
        standby = self.by_environment.pop(_environment_key(request.environment), None)
        if standby is None:
            return None
        if standby.process.is_alive():
            try:
                standby.connection.send(request)
                return standby.process, standby.connection
            except OSError:
                pass
        self._end(standby)
        return None

    def close(self) -> None:
        """End every unused standby and wait for it."""
        for standby in self.by_environment.values():
            standby.connection.close()  # EOF: a standby waiting for a trial returns
        for standby in self.by_environment.values():
            standby.process.join(timeout=2)
            self._end(standby)
        self.by_environment.clear()

    @staticmethod
    def _end(standby: _Standby) -> None:
        with contextlib.suppress(OSError):
            standby.connection.close()
        if standby.process.is_alive():
            # Still importing: it would only find the pipe closed afterwards.
            standby.process.terminate()
            standby.process.join(timeout=10)
        if standby.process.is_alive():
            standby.process.kill()
        standby.process.join()
