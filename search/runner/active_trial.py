"""A trial in flight: its worker process, what the worker said, and how the trial ended.

The coordinator keeps one `ActiveTrial` per running worker. When the worker is gone,
`final_verdict` turns what it reported into the trial's final state, reason and value.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.pruning.collapse import EpochView, PruneDecision
from search.runner.protocol import Epoch, Failed, Finished, WorkerMessage, WorkerRequest
from search.runner.spawning import start_without_main
from search.trial.closing import Ending, Verdict
from search.vocabulary import Reason
from trainers.config.schema import TrainConfig
from trainers.fit.history import TrainingHistory

#: What a spawned worker process runs: `search.runner.worker.run_worker`, or a test's scripted
#: worker.
WorkerEntry = Callable[[Connection, WorkerRequest, int], None]


@dataclass
class ActiveTrial:
    trial: optuna.Trial
    config: TrainConfig
    process: BaseProcess
    connection: Connection
    run_id: str
    folder: Path
    slot: int
    started: float = field(default_factory=time.monotonic)
    #: Every metric of every epoch, as the worker reported them.
    records: list[dict[str, float]] = field(default_factory=list)
    #: Known once the worker has loaded the data; 0 before.
    num_classes: int = 0
    #: Known once the worker has loaded the data; None before (the rules then ignore noise).
    validation_images: int | None = None
    worker_config_yaml: str | None = None
    prune: PruneDecision | None = None
    outcome: Finished | Failed | None = None
    pipe_closed: bool = False
    #: Set when the coordinator itself ends the trial (Ctrl-C, study stopped).
    forced_reason: Reason | None = None
    #: Set when a peer failed the trial as stale while it still ran here.
    taken_over: bool = False
    #: The worker waits for the answer to the epoch being judged.
    awaiting_answer: bool = False
    #: Epochs answered while the study storage was away, still to be reported to Optuna.
    unreported: list[Epoch] = field(default_factory=list)
    #: Other messages read while the storage was away, handled when it is back.
    held: list[WorkerMessage] = field(default_factory=list)

    def received(self) -> Iterator[WorkerMessage]:
        """What the worker has sent so far, in order; marks the pipe closed at its end."""
        while not self.pipe_closed and self.connection.poll():
            try:
                message = self.connection.recv()
            except (EOFError, OSError):
                self.pipe_closed = True
                return
            yield message

    @property
    def history(self) -> TrainingHistory:
        return TrainingHistory.from_records(self.records)

    def ending(self, verdict: Verdict) -> Ending:
        """What closing the trial needs, once its worker has ended with `verdict`."""
        history = self.history
        return Ending(
            self.trial.number,
            self.trial.params,
            self.trial.user_attrs,
            verdict,
            run_id=self.run_id,
            best_epoch=history.best_epoch,
            best_value=history.best_val_accuracy,
            epochs_run=len(history),
        )

    @property
    def epoch_views(self) -> list[EpochView]:
        """The epochs so far, as the collapse rules read them."""
        return [EpochView.from_metrics(int(record["epoch"]), record) for record in self.records]


def spawn_worker(
    context: SpawnContext, request: WorkerRequest, coordinator_pid: int, entry: WorkerEntry
) -> tuple[BaseProcess, Connection]:
    """Start a fresh interpreter for one trial; returns the process and our pipe end."""
    ours, theirs = context.Pipe(duplex=True)
    process = context.Process(
        target=entry,
        args=(theirs, request, coordinator_pid),
        name=f"trial-{request.trial_number}",
        daemon=True,
    )
    start_without_main(process)
    theirs.close()  # the worker holds its end; EOF on ours then means it is gone
    return process, ours


def wait_for_workers(actives: Iterable[ActiveTrial], wakeup_fd: int | None, timeout: float) -> None:
    """Wait up to `timeout` seconds until a worker sends something or exits, or `wakeup_fd`
    (a signal's wake-up) is written."""
    waitables: list[Any] = []
    for active in actives:
        waitables.append(active.process.sentinel)
        if not active.pipe_closed:
            waitables.append(active.connection)
    if wakeup_fd is not None:
        waitables.append(wakeup_fd)
    wait(waitables, timeout=timeout)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit code"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (e.g. the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


def final_verdict(
    active: ActiveTrial, objective: Callable[[TrainingHistory], float | None]
) -> Verdict:
    """The final state of a trial whose worker has ended."""
    outcome = active.outcome
    if active.forced_reason is not None and not isinstance(outcome, Finished):
        # A worker that had already finished keeps its result, even if stopped while exiting.
        return Verdict(TrialState.FAIL, active.forced_reason, "stopped by the coordinator")
    if isinstance(outcome, Failed):
        if outcome.kind == Reason.GPU_OOM:
            # Out of GPU memory at these parameters: told PRUNED, so that the sampler learns
            # the region is infeasible (`TrialCloser.record` says how).
            return Verdict(TrialState.PRUNED, Reason.GPU_OOM, outcome.message)
        return Verdict(TrialState.FAIL, outcome.kind, outcome.message)
    if outcome is None:
        exit_text = describe_exit(active.process.exitcode)
        return Verdict(TrialState.FAIL, Reason.WORKER_DIED, f"worker {exit_text} before finishing")
    prune = active.prune
    if prune is not None:
        value = objective(active.history) if prune.keeps_best else None
        if value is not None:  # fell after a good epoch, which counts (`PruneDecision`)
            return Verdict(TrialState.COMPLETE, prune.reason, prune.evidence, value)
        return Verdict(TrialState.PRUNED, prune.reason, prune.evidence)
    if outcome.stop_reason == "non_finite_loss":
        return Verdict(TrialState.PRUNED, Reason.NAN, outcome.stop_detail or "")
    value = objective(active.history)
    if value is None:
        return Verdict(TrialState.PRUNED, Reason.NAN, "no epoch with finite metrics")
    return Verdict(TrialState.COMPLETE, value=value)
